"""The `jobs:` section of a serve config: off unless present, the demo's config turns it on,
and bad values are refused naming the field. Also the training config a job request becomes."""

from __future__ import annotations

import pytest

from gemlora.config import ConfigError
from gemlora.paths import CONFIGS_DIR, gemlora_home
from serve.config import load_serve_config
from serve.jobs import JobsConfig
from serve.jobs.schema import CreateJobRequest, parse_training, training_document


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

    config = parse_training(
        training_document(
            request,
            quantized_base=True,
            name="style-1",
            train_file=tmp_path / "train.jsonl",
            eval_file=None,
            run_dir=tmp_path / "run",
            tracking_uri="http://127.0.0.1:5000",
            job_id="ftjob-1",
        )
    )

    assert (config.base.model, config.base.quantization) == ("gemma-3-270m-w4a16", "dequantized")
    assert (config.training.epochs, config.training.lr, config.training.seed) == (3, 5e-4, 3)
    assert config.lora.r == 8 and config.data.eval_file is None
    assert (config.output.name, config.output.dir) == ("style-1", tmp_path / "run")
    assert config.output.tags == {"gemlora.job_id": "ftjob-1"}
