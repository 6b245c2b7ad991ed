"""Gemma 3's Hugging Face processor in vLLM, loaded once per process instead of copied.

vLLM 0.32 asks for Gemma 3's processor with `tokenizer=<its loaded tokenizer>`. transformers
5.19's `ProcessorMixin.from_pretrained` then loads a second tokenizer from disk anyway and
deep-copies the one it was given on the way (its kwargs are deep-copied three times); a copy of
Gemma's 262k-token tokenizer costs 2.6 s here. Measured on this 2-core CPU: 16.3 s for the
processor with a tokenizer passed, 4.5 s without. Each of vLLM's three processes (API server,
engine core, worker) does it at start-up: about 50 s of CPU per engine start, and after a crash
the supervisor waits for all of it.

`SharedTokenizerProcessingInfo` asks for the processor without the tokenizer (a cache hit after
the first load, as vLLM caches processors by their kwargs) and hands it vLLM's tokenizer, which
is what passing it was for. It is registered for gemlora's Gemma 3 model class
(`gemlora.serve.gemma3_tower_lora`) through vLLM's multimodal registry.
"""

from __future__ import annotations

from vllm.model_executor.models.gemma3_mm import Gemma3ProcessingInfo
from vllm.transformers_utils.processor import cached_processor_from_config

try:  # the context method this relies on (vLLM 0.32); older vLLMs keep their processing info
    from vllm.multimodal.processing.context import InputProcessingContext

    APPLIES = hasattr(InputProcessingContext, "get_merged_mm_kwargs")
except ImportError:
    APPLIES = False


class SharedTokenizerProcessingInfo(Gemma3ProcessingInfo):
    """Gemma 3's processing info whose HF processor carries vLLM's tokenizer without having
    been built from a copy of it."""

    def get_hf_processor(self, **kwargs: object):
        from transformers import Gemma3Processor

        merged = self.ctx.get_merged_mm_kwargs(kwargs)
        merged.pop("tokenizer", None)
        processor = cached_processor_from_config(
            self.ctx.model_config, processor_cls=Gemma3Processor, **merged
        )
        processor.tokenizer = self.ctx.tokenizer  # the same tokenizer for every call here
        return processor
