"""Multimodal bases are served with LoRA on the vision tower and projector unless the config
turns it off, vLLM finds the tower layers PEFT names, and an engine without vision LoRA refuses
adapters with vision weights."""

from __future__ import annotations

import json

import pytest

from gemlora.adapters import RegistryConfig
from gemlora.bases import resolve_base
from gemlora.serve.engine import EngineConfig, build_command, engine_env
from gemlora.serve.lora_routing import ROUTING_ENV

FLAG = "--enable-tower-connector-lora"
REGISTRY = RegistryConfig(tracking_uri="http://127.0.0.1:5000")


@pytest.mark.parametrize(
    ("base", "vision_lora", "applied"),
    [
        ("tiny-gemma-3-mm", None, True),
        ("tiny-gemma-3-mm", True, True),
        ("tiny-gemma-3-mm", False, False),
        ("gemma-3-270m", None, False),
    ],
)
def test_vision_lora_is_on_for_multimodal_bases_unless_turned_off(base, vision_lora, applied):
    config, spec = EngineConfig(base=base, vision_lora=vision_lora), resolve_base(base)
    assert (FLAG in build_command(config, spec, REGISTRY)) is applied
    routing = json.loads(engine_env(config, spec, REGISTRY)[ROUTING_ENV])
    assert routing["vision_lora"] is applied


@pytest.fixture(scope="module")
def vllm_plugins():
    """What vLLM does in each of its processes: gemlora's plugins through their entry points."""
    from vllm.plugins import load_general_plugins

    load_general_plugins()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # PEFT under transformers 5 (no `vision_model` level) -> the layer vLLM wraps
        (
            "model.vision_tower.encoder.layers.0.self_attn.q_proj",
            "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
        ),
        # checkpoints saved by transformers 4.52+ and 5: unchanged meaning
        (
            "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1",
            "vision_tower.vision_model.encoder.layers.0.mlp.fc1",
        ),
        ("vision_tower.vision_model.post_layernorm", "vision_tower.vision_model.post_layernorm"),
        (
            "model.language_model.layers.3.self_attn.q_proj",
            "language_model.model.layers.3.self_attn.q_proj",
        ),
    ],
)
def test_vllm_finds_the_vision_tower_layers_peft_names(vllm_plugins, name, expected):
    from gemlora.serve.gemma3_tower_lora import Gemma3TowerLoRA

    assert Gemma3TowerLoRA.hf_to_vllm_mapper.get_rename_mapper().map_name(name) == expected


def test_the_plugin_registers_the_model_under_gemma3s_architecture(vllm_plugins):
    from vllm import ModelRegistry

    model = ModelRegistry.models["Gemma3ForConditionalGeneration"]
    assert (model.module_name, model.class_name) == (
        "gemlora.serve.gemma3_tower_lora",
        "Gemma3TowerLoRA",
    )
