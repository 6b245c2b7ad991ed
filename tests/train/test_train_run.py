"""Training runs on the tiny multimodal Gemma 3 against the session's real MLflow server: the
whole pipeline with images, QLoRA (NF4), a bad dataset, and the dequantized W4A16 base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from train_helpers import changed, events, lora_tensors, tiny_document, write_jsonl_lines

from gemlora.adapters import AdapterRegistry, RegistryConfig
from gemlora.data import DatasetError, dataset_digest, read_dataset
from gemlora.train import run_training


@pytest.fixture(scope="module")
def tiny_run(request, built_models, mlflow_server, shapes, tmp_path_factory):
    """One tiny multimodal run with images, registered and promoted (module-scoped: several
    tests read what it produced)."""
    from gemlora.train import parse_config

    document = tiny_document(
        shapes,
        name="tiny-shapes",
        tracking_uri=mlflow_server.url,
        run_dir=tmp_path_factory.mktemp("tiny-run"),
    )
    document["output"]["tags"] = {"team": "vision"}
    document["output"]["promote_if"] = {"metric": "contains", "to": "champion"}
    config = parse_config(document)
    return config, run_training(config)


def test_run_registers_a_version_linked_to_the_run(tiny_run, mlflow_server, tmp_path):
    config, result = tiny_run
    assert result.global_step == 4
    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url, cache_dir=tmp_path))
    details = registry.show("tiny-shapes")
    (version,) = details.versions
    assert version.version == result.version == 1
    assert version.run_id == result.run_id
    # The alias; promote_if fails closed: no engine verified the version (none at
    # output.verify.engine_url), so the default rule (`passed`) leaves champion unset.
    assert details.aliases == {"candidate": 1}
    assert result.verification is None and result.promoted is False
    metadata = version.metadata
    assert metadata.base == "tiny-gemma-3-mm"
    assert metadata.base_quantization == "none"
    assert metadata.rank == 4 and metadata.alpha == 8
    assert "vision_tower" in metadata.target_modules  # in the negative lookahead only
    assert metadata.dataset_digest == dataset_digest(read_dataset(config.data.train_file).examples)
    assert metadata.chat_template_hash
    assert metadata.extra["training_quantization"] == "none"
    # Eval scores become model-version tags.
    scores = {"eval_loss", "exact", "contains", "base_exact", "base_contains"}
    assert set(metadata.eval_scores) == scores
    assert version.tags["gemlora.eval.contains"] == repr(result.eval_scores["contains"])


def test_registered_adapter_is_the_plain_peft_directory(tiny_run, mlflow_server, tmp_path):
    _, result = tiny_run
    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url, cache_dir=tmp_path))
    resolved = registry.resolve("tiny-shapes@candidate", base="tiny-gemma-3-mm")
    files = {path.name for path in resolved.path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not {name for name in files if name.startswith("tokenizer")}  # no tokenizer copy
    # What was registered is what the run trained: LoRA on the language model only.
    registered = lora_tensors(resolved.path)
    assert changed(registered, lora_tensors(result.adapter_dir)) == 0
    assert registered and all("language_model" in key for key in registered)
    config = json.loads((resolved.path / "adapter_config.json").read_text())
    assert config["r"] == 4


def test_run_logs_params_metrics_and_tags(tiny_run, mlflow_server):
    config, result = tiny_run
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    # The whole resolved config, flattened, plus what it resolved to.
    assert params["base.model"] == "tiny-gemma-3-mm"
    assert params["training.lr"] == "0.001"
    assert params["lora.r"] == "4"
    assert params["data.train_file"] == str(config.data.train_file)
    assert params["resolved.compute_dtype"] in ("fp32", "bf16")
    assert params["resolved.train_examples"] == "16"
    tags = run.data.tags
    assert tags["gemlora.base"] == "tiny-gemma-3-mm"
    assert tags["gemlora.base_revision"] == "none"
    assert tags["gemlora.quantization"] == "none"
    assert tags["gemlora.version"]
    assert len(tags["gemlora.git_commit"].removesuffix("-dirty")) == 40
    assert tags["gemlora.registered"] == "tiny-shapes/1"
    assert tags["team"] == "vision"

    losses = client.get_metric_history(result.run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4]
    metrics = run.data.metrics
    for name in (
        "learning_rate",
        "mean_token_accuracy",
        "tokens_per_second",
        "eval_loss",
        "eval_mean_token_accuracy",
        "eval_base_exact",
        "eval_base_contains",
        "eval_adapter_exact",
        "eval_adapter_contains",
    ):
        assert name in metrics, name
    assert metrics["eval_adapter_contains"] == result.eval_scores["contains"]
    assert any(name.startswith("system/cpu_utilization") for name in metrics)


def test_run_logs_datasets_and_artifacts(tiny_run, mlflow_server):
    config, result = tiny_run
    client = MlflowClient(mlflow_server.url)
    inputs = client.get_run(result.run_id).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert set(by_context) == {"training", "evaluation"}
    train = by_context["training"]
    assert train.name == "shapes-vqa/train-16"
    digest = dataset_digest(read_dataset(config.data.train_file).examples)
    assert train.digest == digest[:32]
    assert str(config.data.train_file) in train.source
    assert by_context["evaluation"].name == "shapes-vqa/eval-4"

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "data-report.json", "eval", "adapters"} <= artifacts
    report = json.loads((result.run_dir / "data-report.json").read_text())
    assert report["train_examples"] == 16 and report["eval_examples"] == 4
    assert report["files"]["train"]["images_per_example"] == {"1": 16}
    generations = client.download_artifacts(result.run_id, "eval/generations.json")
    table = json.loads(Path(generations).read_text())
    assert table["columns"] == ["prompt", "reference", "base", "adapter"]
    assert len(table["data"]) == 2


def test_progress_events_tell_the_whole_run(tiny_run):
    _, result = tiny_run
    log = events(result.run_dir)
    kinds = [event.event for event in log]
    assert kinds[0] == "start" and kinds[-1] == "finished"
    for kind in ("train_begin", "checkpoint", "train_end", "eval", "generation_eval", "registered"):
        assert kind in kinds, kind
    steps = [event.step for event in log if event.event == "log" and "loss" in event.metrics]
    assert steps == [1, 2, 3, 4]
    assert log[-1].version == 1 and log[-1].run_id == result.run_id
    promotion = next(event for event in log if event.event == "promotion")
    assert "unverified" in kinds and promotion.moved is False  # fails closed
    state = json.loads((result.run_dir / "run.json").read_text())
    assert state["run_id"] == result.run_id and state["status"] == "finished"


def test_nf4_qlora_keeps_learning_after_a_mid_training_eval(tiny_config):
    """The NF4 CPU pitfall: after a no-grad forward (an eval), LoRA must still get gradients.
    Evals run at steps 2 and 4; every LoRA tensor changes between the checkpoints after them."""
    config = tiny_config(
        base={"quantization": "bnb-nf4"},
        training={"max_steps": 6, "eval_steps": 2, "save_steps": 2, "save_total_limit": 3},
        eval={"generation_examples": 0},
        output={"register_adapter": False},
    )
    result = run_training(config)
    evals = [e.step for e in events(result.run_dir) if e.event == "eval"]
    assert evals[:2] == [2, 4]
    checkpoints = result.run_dir / "checkpoints"
    after_first_eval = lora_tensors(checkpoints / "checkpoint-4")
    after_second_eval = lora_tensors(checkpoints / "checkpoint-6")
    assert changed(lora_tensors(checkpoints / "checkpoint-2"), after_first_eval) == len(
        after_first_eval
    )
    assert changed(after_first_eval, after_second_eval) == len(after_first_eval)
    assert result.version is None


def test_nf4_base_has_the_cpu_repack_turned_off(built_models):
    import bitsandbytes as bnb

    from gemlora.bases import resolve_base
    from gemlora.train.config import BaseSection
    from gemlora.train.model import load_base

    settings = BaseSection(model="tiny-gemma-3-mm", quantization="bnb-nf4")
    loaded = load_base(settings, resolve_base("tiny-gemma-3-mm"))
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers
    assert not any(layer.support_avx512bf16_for_cpu for layer in layers)


def test_dequantized_w4a16_base_loads_as_plain_linears(built_models):
    import torch
    from peft import get_peft_model

    from gemlora.bases import resolve_base
    from gemlora.train.config import BaseSection, LoraSection
    from gemlora.train.model import load_base, lora_config

    settings = BaseSection(model="gemma-3-270m-w4a16", quantization="dequantized")
    loaded = load_base(settings, resolve_base("gemma-3-270m-w4a16"))
    q_proj = loaded.model.model.layers[0].self_attn.q_proj
    assert type(q_proj) is torch.nn.Linear and q_proj.weight.shape == (1024, 640)
    peft_model = get_peft_model(loaded.model, lora_config(LoraSection(r=4), multimodal=False))
    assert peft_model.get_nb_trainable_parameters()[0] > 0


def test_bad_dataset_line_is_named(tiny_config, shapes, tmp_path, mlflow_server):
    train_file, _ = shapes
    lines = train_file.read_text().splitlines()
    broken = train_file.with_name("broken.jsonl")
    write_jsonl_lines(broken, [lines[0], lines[1], '{"messages": [{"role": "user"', lines[3]])
    config = tiny_config(data={"train_file": str(broken)})
    with pytest.raises(DatasetError) as caught:
        run_training(config)
    assert f"{broken}:3" in str(caught.value)
    failed = events(config.output.dir)[-1]
    assert failed.event == "failed" and f"{broken}:3" in failed.error
    # Nothing reached MLflow: the data is checked before the run starts.
    assert json.loads((config.output.dir / "run.json").read_text()).get("run_id") is None


def test_int8_base_gets_lora_gradients(built_models, shapes):
    import bitsandbytes as bnb
    from peft import get_peft_model

    from gemlora.bases import resolve_base
    from gemlora.train import Gemma3ChatCollator
    from gemlora.train.config import BaseSection, LoraSection
    from gemlora.train.dataset import to_hf_dataset
    from gemlora.train.model import load_base, lora_config

    settings = BaseSection(model="tiny-gemma-3-mm", quantization="bnb-int8")
    loaded = load_base(settings, resolve_base("tiny-gemma-3-mm"))
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in loaded.model.modules())
    model = get_peft_model(loaded.model, lora_config(LoraSection(r=4), multimodal=True))
    rows = list(to_hf_dataset(read_dataset(shapes[0], limit=2).examples, multimodal=True))
    model.train()
    model(**Gemma3ChatCollator(loaded.processor)(rows)).loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("vision", [False, True])
def test_vision_tower_is_adapted_only_when_asked(built_models, vision):
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from gemlora.train.config import LoraSection
    from gemlora.train.model import lora_config

    model = AutoModelForImageTextToText.from_pretrained(built_models["tiny-gemma-3-mm"])
    settings = LoraSection(r=4, train_vision_tower=vision)
    adapted = {
        name.rsplit(".lora_A", 1)[0]
        for name, _ in get_peft_model(model, lora_config(settings, True)).named_parameters()
        if ".lora_A" in name
    }
    language = {name for name in adapted if "language_model" in name}
    assert len(language) == 2 * 7  # two layers, every attention and MLP projection
    vision_tower = adapted - language
    assert all("vision_tower" in name for name in vision_tower)
    assert len(vision_tower) == (6 if vision else 0)  # one SigLIP layer: q, k, v, out, fc1, fc2
