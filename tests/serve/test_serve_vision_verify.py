"""Multimodal adapters are served whole and verified with images, on real vLLM engines serving the
tiny multimodal Gemma 3: an adapter trained by `gemlora train` with `lora.train_vision_tower`
is verified at registration (held-out images from its eval data) on an engine with vision LoRA;
the check catches its vision weights being dropped; an engine without vision LoRA refuses it and
the version records a failed verification, which `promote_if` will not promote.

The check judges by log-probabilities even where every greedy token agrees; that case is shown
on the real 270M (tests/adapters/test_adapters_fidelity_engine.py), not here: the tiny model's
next-token distributions are all within ~1.3 nats of uniform over 262k tokens (64-dim tied
embeddings), so any dropped part that moves log-probabilities past the tolerance also flips
greedy tokens. Measured: this module's trained tower LoRA moves them 0.07 nats (within the
tolerance, greedy tokens equal); scaled up 8x it flips a greedy token before the gap reaches
0.1."""

from __future__ import annotations

import uuid

import pytest

from gemlora.adapters.verification_record import (
    DEFAULT_TOLERANCE,
    allows_promotion,
    state_of,
    verification_of,
)

pytestmark = pytest.mark.engine

BASE = "tiny-gemma-3-mm"


@pytest.fixture(scope="module")
def vision_engine(engines):
    return engines.get(BASE)  # engine.vision_lora defaults to on for a multimodal base


@pytest.fixture(scope="module")
def trained(vision_engine, registry, samples, tmp_path_factory):
    """`gemlora train` on the shapes images with LoRA on the vision tower too, registered and
    verified on the tiny engine; returns (name, result)."""
    from gemlora.train import run_training
    from gemlora.train.config import TrainConfig

    shapes, run_dir = samples / "shapes-vqa", tmp_path_factory.mktemp("vision-run")
    name = f"vision-{uuid.uuid4().hex[:6]}"
    config = TrainConfig.model_validate(
        {
            "base": {"model": BASE},
            # A large learning rate: the tower's LoRA must move image answers well beyond the
            # verification's tolerance, or the dropped-weights test below would prove nothing.
            "lora": {"r": 8, "alpha": 16, "train_vision_tower": True},
            "data": {
                "train_file": str(shapes / "train.jsonl"),
                "eval_file": str(shapes / "eval.jsonl"),
            },
            "training": {"max_steps": 6, "batch_size": 4, "lr": 1e-2},
            "eval": {"generation_examples": 0},
            "output": {
                "name": name,
                "tracking_uri": registry.config.tracking_uri,
                "dir": str(run_dir),
                "verify": {"engine_url": vision_engine.url},
            },
        }
    )
    return name, run_training(config)


def test_the_registered_version_is_verified_with_held_out_images(trained, registry):
    name, result = trained
    assert result.verification is not None and result.verification.passed, result.verification
    recorded = verification_of(registry.show(name).versions[0].tags)
    assert recorded == result.verification
    assert recorded.engine_base == BASE and recorded.image_prompts == 2
    assert recorded.compared_by == "logprobs" and recorded.state == "passed"
    assert recorded.max_logprob_gap <= recorded.tolerance


def test_verification_catches_vision_weights_dropped(vision_engine, registry, tmp_path):
    """An adapter whose vision weights matter, served whole, agrees with PEFT; against PEFT
    without its vision weights (what an engine that drops them serves, as vLLM 0.32 did before
    gemlora's `gemlora_gemma3_tower_lora` plugin) the image prompts fail. (Six steps of training
    barely move the tiny model's image answers, so this adapter's tower LoRA is drawn at random,
    large: `init_lora_weights=False`, alpha 64.)"""
    from gemlora.adapters import AdapterMetadata
    from gemlora.adapters.fidelity_check import (
        builtin_image_prompts,
        check_prompt,
        load_processor,
        load_reference_model,
    )
    from gemlora.bases import resolve_base

    spec = resolve_base(BASE)
    strong = _random_vision_adapter(spec, tmp_path / "strong")
    name = f"vision-random-{uuid.uuid4().hex[:6]}"
    ref = f"{name}/{registry.register(strong, name, AdapterMetadata(base=BASE), alias=None)}"
    processor = load_processor(spec)
    whole = load_reference_model(spec, strong)
    without_vision = load_reference_model(spec, None)  # the adapter has nothing else
    for prompt in builtin_image_prompts():
        served_whole = check_prompt(vision_engine.url, ref, whole, processor, prompt, 8)
        assert served_whole.passed(DEFAULT_TOLERANCE), served_whole
        dropped = check_prompt(vision_engine.url, ref, without_vision, processor, prompt, 8)
        assert dropped.max_logprob_gap > 3 * DEFAULT_TOLERANCE, dropped
        assert not dropped.passed(DEFAULT_TOLERANCE)


def test_an_engine_without_vision_lora_refuses_it_and_promotion_refuses_the_failure(
    trained, engines, registry
):
    from gemlora.adapters.fidelity_check import verify_adapter

    name, result = trained
    first = registry.show(name).versions[0]
    second = registry.register(result.adapter_dir, name, first.metadata, alias=None)
    blind_engine = engines.get(BASE, vision_lora=False)
    try:
        report = verify_adapter(registry, f"{name}/{second}", blind_engine.url, BASE, tokens=4)
    finally:
        engines.stop(BASE, vision_lora=False)

    assert not report.passed and "incompatible_adapter" in report.refused, report.refused
    assert "vision" in report.refused
    tags = registry.lookup(f"{name}/{second}").tags
    assert state_of(tags) == "failed" and not allows_promotion(tags, "not_failed")
    assert not allows_promotion(tags, "passed")
    promoted = registry.promote_if_better(
        name, second, "eval_loss", higher_is_better=False, to="champion"
    )
    assert promoted is False and "champion" not in registry.show(name).aliases
    # The verified first version is promoted by the same rule (the default: `passed`).
    assert registry.promote_if_better(
        name, result.version, "eval_loss", higher_is_better=False, to="champion"
    )
    shown = _cli(registry, "show", name).output
    assert "failed (the engine" in shown and "passed (" in shown, shown


def test_verify_cli_says_how_it_compared(trained, vision_engine, registry):
    name, result = trained
    output = _cli(
        registry, "verify", f"{name}/{result.version}", "--engine-url", vision_engine.url,
        "--base", BASE, "--tokens", "4", "--no-record",
    )  # fmt: skip
    assert output.exit_code == 0, output.output
    assert "built-in: red square" in output.output and "passed" in output.output
    assert "compared by" in output.output


def _cli(registry, *args: str):
    from typer.testing import CliRunner

    from gemlora.cli import app

    command = ["adapters", "--tracking-uri", registry.config.tracking_uri, *args]
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, command)


def _random_vision_adapter(spec, out_dir):
    """LoRA on the vision tower only, with random A and B."""
    import torch
    from peft import LoraConfig, get_peft_model

    from gemlora.adapters.fidelity_check import load_reference_model

    torch.manual_seed(7)
    targets = r".*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
    config = LoraConfig(r=4, lora_alpha=64, target_modules=targets, init_lora_weights=False)
    get_peft_model(load_reference_model(spec, None), config).save_pretrained(out_dir)
    return out_dir
