"""Multimodal bases are served with LoRA on the vision tower and projector (on a GPU, or when
the config asks), and an engine without it refuses adapters with vision weights."""

from __future__ import annotations

import json

import pytest

from gemlora.adapters import RegistryConfig
from gemlora.bases import resolve_base
from gemlora.serve.engine import EngineConfig, build_command, engine_env, on_cpu
from gemlora.serve.lora_routing import ROUTING_ENV

FLAG = "--enable-tower-connector-lora"
REGISTRY = RegistryConfig(tracking_uri="http://127.0.0.1:5000")


@pytest.mark.parametrize(
    ("base", "vision_lora", "applied"),
    [
        ("tiny-gemma-3-mm", None, not on_cpu()),  # vLLM's CPU engine does not apply it
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
