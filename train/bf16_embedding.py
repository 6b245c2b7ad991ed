"""An fp32 run on a bf16 checkpoint keeps the frozen embedding in the checkpoint's bf16.

On a CPU without native bf16 a run computes in fp32 (`gemlora.precision`), and transformers
upcasts the whole bf16 checkpoint on load. Gemma 3's embedding, tied with its LM head, has
262,144 rows: 671 MB of the 270M's 1.07 GB in fp32. LoRA never trains it, and bf16 values upcast
exactly, so it can stay in bf16 and be upcast where it is read, with the same results:

- the rows a batch looks up (`Bf16Embedding`);
- the head one vocabulary tile at a time: in training by the loss head's kernel
  (`gemlora.train.loss_head`), in generation by `Bf16Head`.

An unquantized checkpoint is loaded in bf16, read into memory rather than mapped (`disable_mmap`:
a mapped file's pages stay counted in the process's memory while any tensor maps it), and the
rest upcast module by module: the transient fp32 copy of the whole checkpoint that transformers
makes on load never exists. A dequantized W4A16 checkpoint loads as before (compressed-tensors
dequantizes in the model's dtype), and its embedding is cast back to bf16, exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Words of the head upcast at once when generating: 2,048 x 640 fp32 weights fit a CPU's cache.
HEAD_TILE = 2048


class Bf16Embedding(nn.Embedding):
    """An embedding stored in bf16 whose lookups come out in `compute_dtype`, multiplied by the
    model's embedding scale (Gemma multiplies by sqrt(hidden size)) in that dtype."""

    def __init__(self, original: nn.Embedding, compute_dtype: torch.dtype, scale: float) -> None:
        super().__init__(
            original.num_embeddings, original.embedding_dim, original.padding_idx, device="meta"
        )
        self.weight = original.weight  # the same Parameter: the head stays tied to it
        self.compute_dtype = compute_dtype
        self.scale = scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(input_ids, self.weight, self.padding_idx)
        rows = rows.to(self.compute_dtype)
        if self.scale == 1:
            return rows
        return rows * torch.tensor(self.scale, dtype=self.compute_dtype)


class Bf16Head(nn.Linear):
    """A bias-free LM head stored in bf16 (tied to `Bf16Embedding`), computed in the hidden
    states' dtype a tile of words at a time, so no full-precision copy of it is ever made."""

    def __init__(self, original: nn.Linear) -> None:
        super().__init__(original.in_features, original.out_features, bias=False, device="meta")
        self.weight = original.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        words = self.weight.shape[0]
        logits = hidden.new_empty(*hidden.shape[:-1], words)
        for start in range(0, words, HEAD_TILE):
            tile = self.weight[start : start + HEAD_TILE].to(hidden.dtype)
            logits[..., start : start + HEAD_TILE] = hidden @ tile.t()
        return logits


def can_keep_bf16_embedding(model_config: Any, compute_dtype: torch.dtype) -> bool:
    """An fp32 run of a bf16 checkpoint whose LM head is the embedding itself, without bias."""
    text_config = model_config.get_text_config()
    return (
        compute_dtype == torch.float32
        and model_config.dtype == torch.bfloat16
        and getattr(text_config, "tie_word_embeddings", False)
    )


def keep_bf16_embedding(model, compute_dtype: torch.dtype) -> None:
    """Every floating-point parameter and buffer in `compute_dtype` (upcast one module at a
    time, for a model loaded in bf16) except the tied embedding, kept in bf16 (cast down, exactly,
    for a model already upcast); the embedding and the head then compute in `compute_dtype`."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is not embedding.weight or head.bias is not None:
        raise ValueError("keep_bf16_embedding needs a bias-free LM head tied to the embedding")
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if parameter.is_floating_point() and parameter is not embedding.weight:
                parameter.data = parameter.data.to(compute_dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.to(compute_dtype))
    embedding.weight.data = embedding.weight.data.to(torch.bfloat16)
    # Gemma keeps its scale as a Python float too: the buffer was rounded to bf16 on load.
    scale = getattr(embedding, "scalar_embed_scale", 1.0)
    model.set_input_embeddings(Bf16Embedding(embedding, compute_dtype, scale))
    model.set_output_embeddings(Bf16Head(head))
    model.config.dtype = compute_dtype
