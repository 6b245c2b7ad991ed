"""Compatibility checks on real PEFT adapters: every way an adapter can fail, with its reason."""

from __future__ import annotations

import math

import pytest
from adapters_helpers import copy_adapter, edit_config, edit_tensors, truncate

from gemlora.adapters import TrainingBase, check_compatibility
from gemlora.bases import load_catalogue, resolve_base

Q_PROJ_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.fixture(scope="module")
def bases(built_models):
    return {name: resolve_base(name) for name in built_models}


def test_a_lora_fits_the_base_it_was_trained_on(adapters, bases):
    result = check_compatibility(adapters.a, bases["gemma-3-270m"], max_lora_rank=16)
    assert result.ok, result.reasons
    assert result.notes == ()


def test_a_quantized_variant_of_the_base_fits_with_a_note(adapters, bases):
    result = check_compatibility(adapters.a, bases["gemma-3-270m-w4a16"], max_lora_rank=16)
    assert result.ok, result.reasons
    assert result.notes == (
        "trained on gemma-3-270m (none), served on gemma-3-270m-w4a16 (compressed-tensors-w4a16)",
    )


def test_multimodal_text_and_vision_layers_are_found(adapters, bases):
    # PEFT names them model.language_model.* and model.vision_tower.encoder.*; the checkpoint
    # stores language_model.model.* and vision_tower.vision_model.encoder.*.
    result = check_compatibility(adapters.tiny_vision, bases["tiny-gemma-3-mm"], max_lora_rank=16)
    assert result.ok, result.reasons


def test_vision_weights_are_refused_where_the_engine_applies_no_vision_lora(adapters, bases):
    tiny = bases["tiny-gemma-3-mm"]
    refused = check_compatibility(adapters.tiny_vision, tiny, max_lora_rank=16, vision_lora=False)
    (reason,) = refused.reasons
    assert "vision-tower or projector layers with LoRA weights" in reason, reason
    assert "model.vision_tower." in reason and "engine.vision_lora: true" in reason, reason
    assert check_compatibility(adapters.tiny_text, tiny, max_lora_rank=16, vision_lora=False).ok


def test_a_non_lora_adapter_is_refused(adapters, bases):
    result = check_compatibility(adapters.ia3, bases["gemma-3-270m"], max_lora_rank=16)
    assert result.reasons == ("peft_type is 'IA3': only LoRA adapters (LORA) are served",)


def test_a_rank_above_the_engine_maximum_is_refused(adapters, bases):
    result = check_compatibility(adapters.rank32, bases["gemma-3-270m"], max_lora_rank=16)
    assert result.reasons == ("rank 32 exceeds the engine's max LoRA rank 16",)
    assert check_compatibility(adapters.rank32, bases["gemma-3-270m"], max_lora_rank=32).ok


def test_a_missing_or_broken_adapter_config_is_refused(adapters, bases, tmp_path):
    missing = copy_adapter(adapters.a, tmp_path / "missing")
    (missing / "adapter_config.json").unlink()
    result = check_compatibility(missing, bases["gemma-3-270m"])
    assert result.reasons == (f"no adapter_config.json in {missing}",)

    broken = copy_adapter(adapters.a, tmp_path / "broken")
    (broken / "adapter_config.json").write_text("{not json")
    (reason,) = check_compatibility(broken, bases["gemma-3-270m"]).reasons
    assert reason.startswith("adapter_config.json is not valid JSON: ")


def test_corrupted_or_pickled_weights_are_refused(adapters, bases, tmp_path):
    corrupted = copy_adapter(adapters.a, tmp_path / "corrupted")
    truncate(corrupted / "adapter_model.safetensors")
    (reason,) = check_compatibility(corrupted, bases["gemma-3-270m"]).reasons
    assert reason.startswith("adapter_model.safetensors is not readable safetensors: ")
    assert "incomplete metadata" in reason

    pickled = copy_adapter(adapters.a, tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    assert check_compatibility(pickled, bases["gemma-3-270m"]).reasons == (
        "no adapter_model.safetensors (only a pickled adapter_model.bin, which is refused)",
    )


def test_an_adapter_of_another_family_is_refused(adapters, bases):
    result = check_compatibility(adapters.tiny_text, bases["gemma-3-270m"], max_lora_rank=16)
    assert result.reasons[0] == (
        "trained on tiny-gemma-3-mm (family tiny-gemma-3-mm), but base gemma-3-270m is family "
        "gemma-3-270m"
    )


def test_tensor_shapes_that_do_not_match_the_base_are_named(adapters, bases, tmp_path):
    # A LoRA made on the tiny model that claims to be for gemma-3-270m: same layer names,
    # different sizes (hidden 64 vs 640).
    claimed = edit_config(
        copy_adapter(adapters.tiny_text, tmp_path / "claimed"),
        base_model_name_or_path="gemma-3-270m",
    )
    (reason,) = check_compatibility(claimed, bases["gemma-3-270m"], max_lora_rank=16).reasons
    assert reason.startswith(
        "14 adapted layers whose shapes do not match gemma-3-270m: "
        "model.language_model.layers.0.mlp.down_proj has lora_A [4, 128], lora_B [64, 4]; "
        "expected [4, 2048], [640, 4]; "
    )
    assert reason.endswith("(and 11 more)")


def test_target_modules_the_base_does_not_have_are_named(adapters, bases, tmp_path):
    configured = edit_config(
        copy_adapter(adapters.a, tmp_path / "configured"),
        target_modules=[*json_targets(adapters.a), "fc1"],
    )
    assert check_compatibility(configured, bases["gemma-3-270m"]).reasons == (
        "target module 'fc1' matches no layer of gemma-3-270m",
    )

    def rename_q_proj(tensors):
        for key in [k for k in tensors if ".layers.0.self_attn.q_proj." in k]:
            tensors[key.replace("q_proj", "qkv_proj")] = tensors.pop(key)

    renamed = edit_tensors(copy_adapter(adapters.a, tmp_path / "renamed"), rename_q_proj)
    assert check_compatibility(renamed, bases["gemma-3-270m"]).reasons == (
        "1 adapted layers that gemma-3-270m does not have: model.layers.0.self_attn.qkv_proj",
    )


def test_lora_features_vllm_cannot_serve_are_refused(adapters, bases, tmp_path):
    featured = edit_config(
        copy_adapter(adapters.a, tmp_path / "featured"),
        use_dora=True,
        bias="lora_only",
        modules_to_save=["lm_head"],
        init_lora_weights="pissa",
    )
    assert check_compatibility(featured, bases["gemma-3-270m"]).reasons == (
        "uses DoRA (use_dora), which vLLM does not support",
        "trains biases (bias='lora_only'), which vLLM does not support",
        "saves whole modules ['lm_head'] (modules_to_save), which vLLM does not load for "
        "generative models",
        "init_lora_weights='pissa' changes the base weights when loaded; convert it to a plain "
        "LoRA first",
    )


def test_nan_weights_are_refused(adapters, bases, tmp_path):
    def poison(tensors):
        tensors[Q_PROJ_A][0, 0] = math.nan

    poisoned = edit_tensors(copy_adapter(adapters.a, tmp_path / "poisoned"), poison)
    assert check_compatibility(poisoned, bases["gemma-3-270m"]).reasons == (
        f"1 tensors with NaN or infinite values: {Q_PROJ_A}",
    )


def test_an_unknown_training_base_is_refused(adapters, bases, tmp_path):
    elsewhere = edit_config(
        copy_adapter(adapters.a, tmp_path / "elsewhere"), base_model_name_or_path="/nowhere/m"
    )
    assert check_compatibility(elsewhere, bases["gemma-3-270m"]).reasons == (
        "cannot tell which base the adapter was trained on (base_model_name_or_path="
        "'/nowhere/m'); register or import it with an explicit base",
    )
    trained_on = TrainingBase("gemma-3-270m", "gemma-3-270m")
    assert check_compatibility(elsewhere, bases["gemma-3-270m"], trained_on=trained_on).ok


def test_a_hub_base_that_is_not_local_skips_the_tensor_checks(adapters, tmp_path):
    # Trained on the bf16 27B from the Hub, served on its INT4 quantization.
    from_hub = edit_config(
        copy_adapter(adapters.a, tmp_path / "hub"), base_model_name_or_path="google/gemma-3-27b-it"
    )
    served = load_catalogue()["gemma-3-27b-it-int4"]
    result = check_compatibility(from_hub, served, max_lora_rank=16)
    assert result.ok, result.reasons
    assert result.notes == (
        "trained on gemma-3-27b-it (none), served on gemma-3-27b-it-int4 "
        "(compressed-tensors-w4a16)",
        "base gemma-3-27b-it-int4 is not available locally: target modules and tensor shapes "
        "were not checked",
    )


def json_targets(adapter_dir) -> list[str]:
    import json

    return json.loads((adapter_dir / "adapter_config.json").read_text())["target_modules"]
