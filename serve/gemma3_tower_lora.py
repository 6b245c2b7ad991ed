"""Gemma 3 in vLLM with vision-tower LoRA that finds its layers (and a processor loaded once).

transformers 5 builds Gemma 3's SigLIP tower without its `vision_model` level
(`model.vision_tower.encoder.layers.0...`) and translates only full checkpoints to the old
names when it saves them. PEFT saves adapters under the live module names, so a tower LoRA
trained here is named `model.vision_tower.encoder...`, while vLLM 0.32's Gemma 3 maps
`model.vision_tower.` to `vision_tower.` and wraps `vision_tower.vision_model.encoder...`: the
tower's LoRA weights matched no layer and were dropped without a word (measured: a vision-only
adapter gave exactly the base's log-probs on an image prompt).

`Gemma3TowerLoRA` is vLLM's model with one more rename, registered in vLLM's model registry
under the same architecture name by the `gemlora_gemma3_tower_lora` plugin. Base checkpoints
are unaffected: they name the tower `vision_tower.vision_model.` or
`model.vision_tower.vision_model.`, which the rename leaves alone.

The class also registers `SharedTokenizerProcessingInfo` (`gemlora.serve.gemma3_processor`) as
its multimodal processing info, which makes engine start-up ~50 s of CPU cheaper.
"""

from __future__ import annotations

import os
import re

from vllm.model_executor.models.gemma3_mm import (
    Gemma3DummyInputsBuilder,
    Gemma3ForConditionalGeneration,
    Gemma3MultiModalProcessor,
)
from vllm.model_executor.models.utils import WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY

from gemlora.serve import gemma3_processor

# `model.vision_tower.encoder...` (transformers 5, PEFT) -> `vision_tower.vision_model.encoder...`
FLAT_TOWER_NAME = re.compile(r"^model\.vision_tower\.(?!vision_model\.)")
FLAT_TOWER = WeightsMapper(orig_to_new_regex={FLAT_TOWER_NAME: "vision_tower.vision_model."})


class Gemma3TowerLoRA(Gemma3ForConditionalGeneration):
    """vLLM's Gemma 3 that also reads transformers 5's flat vision-tower names."""

    # Regexes run before vLLM's prefix renames, so the flat name never reaches them.
    hf_to_vllm_mapper = FLAT_TOWER | Gemma3ForConditionalGeneration.hf_to_vllm_mapper


# `GEMLORA_GEMMA3_PROCESSOR=vllm` keeps vLLM's processing info (the start-up benchmark's baseline).
if gemma3_processor.APPLIES and os.environ.get("GEMLORA_GEMMA3_PROCESSOR") != "vllm":
    MULTIMODAL_REGISTRY.register_processor(
        Gemma3MultiModalProcessor,
        info=gemma3_processor.SharedTokenizerProcessingInfo,
        dummy_inputs=Gemma3DummyInputsBuilder,
    )(Gemma3TowerLoRA)
