"""The training config: every example config validates, overrides apply, and each kind of
mistake is an error that names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gemlora.cli import app
from gemlora.paths import CONFIGS_DIR
from gemlora.train import ConfigError, TrainConfig, load_config, parse_config
from gemlora.train.config import FP16_REFUSED

EXAMPLE_CONFIGS = sorted((CONFIGS_DIR / "train").glob("*.yaml"))
MINIMAL = {"data": {"train_file": "train.jsonl"}, "output": {"name": "my-adapter"}}


def write(tmp_path: Path, document: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def errors_of(document: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    return caught.value.problems


def test_the_example_configs_are_the_expected_ones():
    names = {path.name for path in EXAMPLE_CONFIGS}
    assert names == {
        "tiny-mm-smoke.yaml",
        "style-270m.yaml",
        "style-270m-w4a16.yaml",
        "style-270m-dpo.yaml",
        "say-the-word-270m-rl.yaml",
        "gemma-3-4b-vision-qlora.yaml",
        "gemma-3-27b-int4-qlora.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_every_example_config_validates(path: Path):
    config = load_config(path)
    assert isinstance(config, TrainConfig)
    # Relative data paths point into the repository's data/samples.
    assert config.data.train_file.is_relative_to(CONFIGS_DIR.parent / "data" / "samples")


def test_gpu_configs_are_qlora_in_bf16():
    for name in ("gemma-3-4b-vision-qlora.yaml", "gemma-3-27b-int4-qlora.yaml"):
        config = load_config(CONFIGS_DIR / "train" / name)
        assert config.base.quantization == "bnb-nf4"
        assert config.base.compute_dtype == "bf16"
        assert config.training.gradient_checkpointing


def test_defaults_fill_everything_but_data_and_name():
    config = parse_config(MINIMAL)
    assert config.base.model == "gemma-3-270m"
    assert config.base.compute_dtype == "auto"
    assert config.lora.r == 16
    assert "vision" not in " ".join(config.lora.target_modules)
    assert config.output.alias == "candidate"
    assert config.output.register_adapter


def test_every_field_is_documented():
    def fields(model):
        for name, info in model.model_fields.items():
            yield f"{model.__name__}.{name}", info
            annotation = info.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                yield from fields(annotation)

    undocumented = [name for name, info in fields(TrainConfig) if not info.description]
    assert undocumented == []


def test_unknown_field_is_named():
    assert errors_of(MINIMAL | {"lora": {"rank": 8}}) == ["lora.rank: unknown field"]


def test_unknown_section_is_named():
    assert errors_of(MINIMAL | {"trainer": {}}) == ["trainer: unknown field"]


def test_wrong_type_is_named():
    (problem,) = errors_of(MINIMAL | {"training": {"lr": "fast"}})
    assert problem.startswith("training.lr: ")
    assert "number" in problem


def test_out_of_range_is_named():
    (problem,) = errors_of(MINIMAL | {"lora": {"r": 0}})
    assert problem.startswith("lora.r: ")


def test_missing_required_fields_are_named():
    assert errors_of({}) == [
        "data: required field is missing",
        "output: required field is missing",
    ]


def test_fp16_is_refused_with_the_reason():
    (problem,) = errors_of(MINIMAL | {"base": {"compute_dtype": "fp16"}})
    assert problem == f"base.compute_dtype: {FP16_REFUSED}"
    assert "bf16" in problem and "overflow" in problem


def test_dequantized_needs_a_quantized_base():
    base = {"model": "gemma-3-270m", "quantization": "dequantized"}
    (problem,) = errors_of(MINIMAL | {"base": base})
    assert problem.startswith("base: ")
    assert "compressed-tensors" in problem


def test_a_quantized_base_is_trained_dequantized():
    (problem,) = errors_of(MINIMAL | {"base": {"model": "gemma-3-270m-w4a16"}})
    assert "set base.quantization to 'dequantized'" in problem
    config = parse_config(
        MINIMAL | {"base": {"model": "gemma-3-270m-w4a16", "quantization": "dequantized"}}
    )
    assert config.base.quantization == "dequantized"


def test_dora_cannot_be_registered():
    (problem,) = errors_of(MINIMAL | {"lora": {"use_dora": True}})
    assert "vLLM cannot serve DoRA" in problem
    document = {**MINIMAL, "lora": {"use_dora": True}}
    document["output"] = {"name": "x", "register_adapter": False}
    assert parse_config(document).lora.use_dora


def test_bad_adapter_name_and_alias_are_named():
    problems = errors_of({**MINIMAL, "output": {"name": "no spaces", "alias": "v2"}})
    assert [p.split(":")[0] for p in problems] == ["output.name", "output.alias"]


def test_the_file_store_is_refused():
    document = {**MINIMAL, "output": {"name": "x", "tracking_uri": "file:///tmp/mlruns"}}
    (problem,) = errors_of(document)
    assert problem.startswith("output.tracking_uri: ")
    assert "file store" in problem


def test_promote_if_names_a_known_metric():
    document = {**MINIMAL, "output": {"name": "x", "promote_if": {"metric": "accuracy"}}}
    (problem,) = errors_of(document)
    assert problem.startswith("output.promote_if.metric: ")


def test_overrides_set_nested_fields_with_yaml_types(tmp_path):
    path = write(tmp_path, MINIMAL)
    config = load_config(
        path,
        [
            "training.lr=1e-4",
            "training.max_steps=7",
            "lora.target_modules=[q_proj, v_proj]",
            "output.promote_if.metric=eval_loss",
            "output.alias=",
        ],
    )
    assert config.training.lr == 1e-4
    assert config.training.max_steps == 7
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.output.promote_if.metric == "eval_loss"
    assert config.output.alias is None


def test_override_errors_name_the_field(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"training\.lrr: unknown field"):
        load_config(path, ["training.lrr=1"])
    with pytest.raises(ConfigError, match=r"training\.lr is a value, not a section"):
        load_config(path, ["training.lr=1", "training.lr.x=2"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["training.lr"])


def test_paths_are_relative_to_the_config_file_and_overrides_to_the_cwd(tmp_path, monkeypatch):
    nested = tmp_path / "configs"
    nested.mkdir()
    path = write(nested, {**MINIMAL, "data": {"train_file": "../data/train.jsonl"}})
    monkeypatch.chdir(tmp_path)
    config = load_config(path, ["data.eval_file=held-out.jsonl"])
    assert config.data.train_file == tmp_path / "data" / "train.jsonl"
    assert config.data.eval_file == tmp_path / "held-out.jsonl"


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path):
    path = write(tmp_path, {**MINIMAL, "base": {"compute_dtype": "fp16"}, "lora": {"rank": 8}})
    result = CliRunner().invoke(app, ["train", str(path), "--set", "training.lr=oops"])
    assert result.exit_code == 2
    assert "base.compute_dtype: fp16 is refused for Gemma 3" in result.output
    assert "lora.rank: unknown field" in result.output
    assert "training.lr: " in result.output


def test_every_method_of_the_config_is_a_registered_training_method():
    """`method:` values and the `gemlora.train_methods` entry points agree, and each one loads
    as the TrainingMethod of that name."""
    from typing import get_args

    from gemlora.train.config import Method
    from gemlora.train.methods import TrainingMethod, method_names, training_method

    assert set(get_args(Method)) == set(method_names())
    for name in method_names():
        method = training_method(name)
        assert isinstance(method, TrainingMethod) and method.name == name
    with pytest.raises(LookupError, match="no training method 'ppo'"):
        training_method("ppo")
