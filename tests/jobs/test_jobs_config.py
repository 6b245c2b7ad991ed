"""The `jobs:` section of a serve config: off unless present, the demo's config turns it on,
and bad values are refused naming the field. Also the training config a job request becomes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from gemlora.config import ConfigError
from gemlora.paths import CONFIGS_DIR, gemlora_home
from gemlora.serve.config import load_serve_config
from gemlora.serve.jobs import JobsConfig
from gemlora.serve.jobs.schema import (
    CreateJobRequest,
    JobVerification,
    TrainSettingsError,
    effective_hyperparameters,
    job_training_config,
)
from gemlora.train.config import TrainConfig


def test_the_demo_config_serves_the_jobs_api_and_others_do_not():
    demo = load_serve_config(CONFIGS_DIR / "serve" / "demo.yaml")
    local = load_serve_config(CONFIGS_DIR / "serve" / "local-270m-w4a16.yaml")

    assert demo.jobs == JobsConfig(max_concurrent=1)
    assert demo.jobs.store_dir() == gemlora_home() / "jobs"
    assert (demo.gateway.auth, demo.gateway.host) == (False, "127.0.0.1")
    assert local.jobs is None


def test_bad_jobs_settings_are_refused_naming_the_field():
    demo = CONFIGS_DIR / "serve" / "demo.yaml"
    with pytest.raises(ConfigError, match=r"jobs\.max_concurrent: "):
        load_serve_config(demo, ["jobs.max_concurrent=0"])
    with pytest.raises(ConfigError, match=r"jobs\.workers: unknown field"):
        load_serve_config(demo, ["jobs.workers=2"])


VERIFY_ON = JobVerification(
    engine_url="http://127.0.0.1:8100", engine_base="gemma-3-270m-w4a16", dtype="auto"
)


def _job_config(request: CreateJobRequest, tmp_path, init_adapter: str | None = None):
    return job_training_config(
        request,
        base_model=request.model,
        init_adapter=init_adapter,
        quantized_base=True,
        name="style-1",
        train_file=tmp_path / "train.jsonl",
        eval_file=None,
        run_dir=tmp_path / "run",
        tracking_uri="http://127.0.0.1:5000",
        job_id="ftjob-1",
        verify_on=VERIFY_ON,
    )


def test_a_request_becomes_the_training_config_gemlora_train_runs(tmp_path):
    request = CreateJobRequest.model_validate(
        {
            "model": "gemma-3-270m-w4a16",
            "training_file": "file-a",
            "hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 0.5},
            "seed": 3,
            "gemlora": {"lora": {"r": 8}, "training": {"lr": 1e-3}},
        }
    )

    config = _job_config(request, tmp_path)

    assert isinstance(config, TrainConfig)
    base, training, output = config.base, config.training, config.output
    assert (base.model, base.quantization) == ("gemma-3-270m-w4a16", "dequantized")
    assert (training.epochs, training.lr, training.seed) == (3, 5e-4, 3)
    assert config.lora.r == 8 and config.data.eval_file is None
    assert (output.name, output.dir) == ("style-1", tmp_path / "run")
    assert output.tags == {"gemlora.job_id": "ftjob-1"}
    verify = output.verify  # the gateway's engine verifies
    assert (verify.engine_url, verify.engine_base) == (VERIFY_ON.engine_url, VERIFY_ON.engine_base)
    assert effective_hyperparameters(config, request) == {
        "n_epochs": 3, "batch_size": training.batch_size, "learning_rate_multiplier": 0.5,
    }  # fmt: skip


def test_a_job_cannot_point_verification_at_another_engine(tmp_path):
    request = CreateJobRequest.model_validate(
        {
            "model": "gemma-3-270m-w4a16",
            "training_file": "file-a",
            "gemlora": {"output": {"verify": {"engine_url": "http://127.0.0.1:9"}}},
        }
    )
    with pytest.raises(TrainSettingsError, match="set by the gateway") as raised:
        _job_config(request, tmp_path)
    assert raised.value.param == "gemlora.output.verify.engine_url"


def test_a_bad_field_of_a_job_is_named_as_the_requests_field(tmp_path):
    request = CreateJobRequest.model_validate(
        {
            "model": "gemma-3-270m-w4a16",
            "training_file": "file-a",
            "gemlora": {"lora": {"r": "wide"}, "training": {"warmup": 1}},
        }
    )

    with pytest.raises(TrainSettingsError, match=r"and 1 more problems") as rejected:
        _job_config(request, tmp_path)

    assert rejected.value.param == "gemlora.lora.r"


def test_a_dpo_request_as_the_openai_sdk_sends_it_becomes_a_dpo_training_config(tmp_path):
    request = CreateJobRequest.model_validate(
        {
            "model": "gemma-3-270m-w4a16",
            "training_file": "file-a",
            "method": {
                "type": "dpo",
                "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2, "batch_size": "auto"}},
            },
        }
    )
    config = _job_config(request, tmp_path, init_adapter="style/3")

    assert config.method == "dpo"
    assert (config.dpo.beta, config.training.epochs) == (0.25, 2)
    assert config.base.init_adapter == "style/3"
    assert effective_hyperparameters(config, request)["beta"] == 0.25


def test_the_sdks_supervised_method_form_sets_the_hyperparameters(tmp_path):
    request = CreateJobRequest.model_validate(
        {
            "model": "gemma-3-270m-w4a16",
            "training_file": "file-a",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4}}},
        }
    )
    config = _job_config(request, tmp_path)
    assert config.method == "supervised" and config.training.epochs == 4


@pytest.mark.parametrize(
    ("method", "field", "message"),
    [
        ({"type": "dpo", "supervised": {}}, "method", "method.supervised: given"),
        ({"type": "ppo"}, "method.type", "'supervised', 'dpo' or 'reinforcement'"),
        ({"type": "reinforcement"}, "method.reinforcement", "required with method.type"),
        (
            {"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check"}}},
            "method.reinforcement.grader",
            "invalid grader",
        ),
        ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}, "method.dpo", "above 0"),
    ],
)
def test_a_wrong_method_names_its_field(method, field, message):
    with pytest.raises(ValidationError) as raised:
        CreateJobRequest.model_validate(
            {"model": "gemma-3-270m", "training_file": "file-a", "method": method}
        )
    (error,) = raised.value.errors()
    assert ".".join(map(str, error["loc"])).startswith(field)
    assert message in error["msg"]


def test_the_jobs_api_validates_configs_without_loading_torch_or_trl():
    """The gateway checks a job's TrainConfig in its own process; that must stay light."""
    heavy = ("torch", "transformers", "trl", "peft", "vllm")
    probe = (
        "import sys, gemlora.serve.jobs, gemlora.serve.jobs.schema; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_the_demos_job_is_a_valid_request_with_an_eval_gate(tmp_path):
    """`make demo`'s job, as the openai client sends it: it trains, then gates on the style."""
    import importlib.util

    from gemlora.paths import REPO_ROOT

    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "scripts/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    job = {k: v for k, v in demo.JOB.items() if k != "extra_body"} | demo.JOB["extra_body"]
    request = CreateJobRequest.model_validate(job | {"training_file": "file-a"})
    config = _job_config(request, tmp_path)
    assert config.output.promote_if.gate.grader == "signed"
    assert [g["name"] for g in config.eval.graders] == ["greeting", "signed", "close"]
    assert config.eval.generation_examples == 0  # the gate's eval replaces the contains-match


def test_a_reinforcement_request_maps_openais_hyperparameters(tmp_path):
    from gemlora.serve.jobs.schema import effective_hyperparameters

    judged = {
        "type": "score_model",
        "name": "judge",
        "model": "gemma-3-270m",
        "input": [{"role": "user", "content": "Rate {{sample.output_text}} from 0 to 1"}],
    }
    hyperparameters = {
        "n_epochs": 2,
        "batch_size": 3,
        "learning_rate_multiplier": 2,
        "compute_multiplier": 2,
        "eval_interval": 5,
        "eval_samples": 3,
    }
    request = CreateJobRequest.model_validate(
        {
            "model": "gemma-3-270m-w4a16",
            "training_file": "file-a",
            "method": {
                "type": "reinforcement",
                "reinforcement": {"grader": judged, "hyperparameters": hyperparameters},
            },
        }
    )
    config = _job_config(request, tmp_path)
    assert config.method == "reinforcement"
    assert config.reinforcement.grader == judged and config.eval.graders == [judged]
    assert config.reinforcement.generations == 8  # 4 x compute_multiplier
    assert config.reinforcement.eval_generations == 3 and config.training.eval_steps == 5
    assert (config.training.epochs, config.training.batch_size) == (2, 3)
    assert config.training.lr == pytest.approx(2 * 2e-4)
    # the judge answers on the gateway's own engine
    assert config.reinforcement.judge.url == f"{VERIFY_ON.engine_url}/v1"
    effective = effective_hyperparameters(config, request)
    assert effective["compute_multiplier"] == 2 and effective["eval_interval"] == 5

    twice = request.model_copy(update={"gemlora": {"reinforcement": {"generations": 6}}}, deep=True)
    with pytest.raises(TrainSettingsError) as raised:
        _job_config(twice, tmp_path)
    assert raised.value.param == "method.reinforcement.hyperparameters.compute_multiplier"
