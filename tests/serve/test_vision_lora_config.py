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
    routing = json.loads(engine_env(config, spec, REGISTRY, "token")[ROUTING_ENV])
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


def test_gemma3s_processor_gets_vllms_tokenizer_without_a_copy(vllm_plugins, built_models):
    """vLLM's engine processes ask for the HF processor; transformers is never handed vLLM's
    tokenizer (it would deep-copy it, 12 s per process), yet the processor uses that tokenizer."""
    from transformers.processing_utils import ProcessorMixin
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.transformers_utils.processor import cached_get_processor

    asked: list[set[str]] = []
    load = ProcessorMixin.from_pretrained.__func__

    def recording_load(cls, *args, **kwargs):
        asked.append(set(kwargs))
        return load(cls, *args, **kwargs)

    cached_get_processor.cache_clear()
    model_config = ModelConfig(model=str(built_models["tiny-gemma-3-mm"]))
    info = MULTIMODAL_REGISTRY.create_processor(model_config).info
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProcessorMixin, "from_pretrained", classmethod(recording_load))
        processor = info.get_hf_processor()
        assert info.get_hf_processor() is processor  # loaded once, then cached
    assert asked and all("tokenizer" not in kwargs for kwargs in asked), asked
    assert processor.tokenizer is info.ctx.tokenizer
    image_tokens = processor(text="<start_of_image>", images=[_tiny_image()])["input_ids"]
    assert processor.tokenizer.image_token_id in image_tokens[0]


def _tiny_image():
    from PIL import Image

    return Image.new("RGB", (32, 32), "red")
