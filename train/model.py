"""Loading the base model for training, quantized as configured, and the LoRA config for it.

- `none`: the checkpoint in the compute dtype.
- `bnb-nf4`: QLoRA; 4-bit NF4 weights (double quantization), compute in the compute dtype.
- `bnb-int8`: 8-bit weights.
- `dequantized`: a compressed-tensors checkpoint (the W4A16 base vLLM serves) unpacked to the
  compute dtype. PEFT cannot wrap the packed layers, and an adapter trained on the very weights
  that are served gives the same outputs in vLLM as in training.

With `none` and `dequantized` on a CPU in fp32, the frozen tied embedding of a bf16 checkpoint
stays in bf16 (`gemlora.train.bf16_embedding`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemlora.bases import BaseSpec
from gemlora.precision import resolve_precision, torch_dtype
from gemlora.train.config import BaseSection, ConfigError, LoraSection

# The language model's layers (`model.layers.N...` in Gemma3ForCausalLM,
# `model.language_model.layers.N...` in Gemma3ForConditionalGeneration), never the vision tower.
_LANGUAGE_LAYER = r"^(?!.*vision_tower).*\.layers\.\d+\..*"
_VISION_LAYER = r".*vision_tower.*\.layers\.\d+\..*"


@dataclass
class LoadedBase:
    model: Any  # a transformers PreTrainedModel
    processor: Any  # a processor (multimodal) or tokenizer (text-only), with the chat template
    spec: BaseSpec
    multimodal: bool


def resolve_dtype(compute_dtype: str) -> str:
    """`auto` -> `bf16` where bf16 runs natively, else `fp32` (`gemlora.precision`); others as
    they are."""
    return resolve_precision(compute_dtype)


def load_base(settings: BaseSection, spec: BaseSpec) -> LoadedBase:
    """Load the base model and its processor for training."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    from gemlora.data import load_token_counter
    from gemlora.train.bf16_embedding import can_keep_bf16_embedding, keep_bf16_embedding

    revision = settings.revision or spec.revision
    if revision == spec.revision:
        # The processor that validated the data: one copy in memory (Gemma 3's 262k-word
        # tokenizer alone takes ~300 MB).
        processor = load_token_counter(settings.model).processor
    else:
        processor = AutoProcessor.from_pretrained(spec.location, revision=revision)
    multimodal = hasattr(processor, "image_processor")
    model_class = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    compute_dtype = torch_dtype(settings.compute_dtype)
    quantization = quantization_config(settings, spec)
    config = AutoConfig.from_pretrained(spec.location, revision=revision)
    # A CPU fp32 run of a bf16 checkpoint: the frozen 262k-word embedding stays in bf16. An
    # unquantized checkpoint also loads in bf16 (read, not mapped) and is upcast afterwards.
    bf16_embedding = (
        settings.quantization in ("none", "dequantized")
        and _device_map() is None
        and not sharded_training()
        and can_keep_bf16_embedding(config, compute_dtype)
    )
    load_in_bf16 = bf16_embedding and quantization is None
    model = model_class.from_pretrained(
        spec.location,
        revision=revision,
        dtype=torch.bfloat16 if load_in_bf16 else compute_dtype,
        disable_mmap=load_in_bf16,
        quantization_config=quantization,
        device_map=_device_map(),
    )
    if bf16_embedding:
        keep_bf16_embedding(model, compute_dtype)
    if settings.quantization == "bnb-nf4":
        keep_nf4_trainable_on_cpu(model)
    return LoadedBase(model, processor, spec, multimodal)


def sharded_training() -> bool:
    """Launched by `accelerate launch` with an FSDP or DeepSpeed config
    (configs/accelerate/): the launcher shards the model over the processes."""
    return any(os.environ.get(f"ACCELERATE_USE_{kind}") == "true" for kind in ("FSDP", "DEEPSPEED"))


def _device_map() -> dict[str, int] | None:
    """A whole copy on this process's GPU (LOCAL_RANK, set by the launchers; data parallel),
    or None: CPU, or a sharded run, where the launcher places the weights."""
    import torch

    if not torch.cuda.is_available() or sharded_training():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}


def quantization_config(settings: BaseSection, spec: BaseSpec):
    """The transformers quantization config for `settings.quantization`, or None."""
    from transformers import BitsAndBytesConfig, CompressedTensorsConfig

    packed = _is_compressed_tensors(spec)
    if packed != (settings.quantization == "dequantized"):
        problem = (
            f"{spec.name} is a compressed-tensors checkpoint: set it to 'dequantized'"
            if packed
            else f"'dequantized' needs a compressed-tensors checkpoint and {spec.name} is not one"
        )
        raise ConfigError([f"base.quantization: {problem}"])
    if packed:
        return CompressedTensorsConfig(dequantize=True)
    if settings.quantization == "bnb-nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(settings.compute_dtype),
            # FSDP shards only floating-point storage: QLoRA under FSDP stores the 4-bit
            # weights in the compute dtype.
            **(
                {"bnb_4bit_quant_storage": torch_dtype(settings.compute_dtype)}
                if sharded_training()
                else {}
            ),
        )
    if settings.quantization == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def keep_nf4_trainable_on_cpu(model) -> int:
    """bitsandbytes on an AVX512-BF16 CPU repacks NF4 weights into an inference-only layout the
    first time a layer runs without grad (an eval step, generation); from then on LoRA gets no
    gradient and training silently stops learning. Turning that path off on every `Linear4bit`
    before the first forward keeps training correct. Returns the number of layers changed."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def lora_config(settings: LoraSection, multimodal: bool):
    """PEFT `LoraConfig` for the language model's projections (and the vision tower's, if
    asked). Text-only bases get plain module names; multimodal ones a regex that keeps the
    vision tower out, since SigLIP also has `q_proj`, `k_proj` and `v_proj`."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules(settings, multimodal),
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def target_modules(settings: LoraSection, multimodal: bool) -> list[str] | str:
    if not multimodal:
        return sorted(settings.target_modules)
    pattern = _LANGUAGE_LAYER + _alternatives(settings.target_modules)
    if settings.train_vision_tower:
        pattern = f"{pattern}|{_VISION_LAYER}{_alternatives(settings.vision_target_modules)}"
    return pattern


def _alternatives(names: list[str]) -> str:
    return r"\.(" + "|".join(sorted(names)) + r")$"


def _is_compressed_tensors(spec: BaseSpec) -> bool:
    if spec.quantization != "none":
        return True
    config = Path(spec.location, "config.json")
    if not config.is_file():
        return False  # a hub model: the catalogue says what it is
    method = json.loads(config.read_text()).get("quantization_config", {}).get("quant_method")
    return method == "compressed-tensors"
