"""Multi-LoRA on a CPU with one matmul per adapter, for vLLM's CPU punica wrapper.

vLLM's CPU LoRA kernels (`vllm/lora/ops/torch_ops/lora_ops.py`) copy, for every token, its
adapter's A or B matrix (`lora_weights[token_indices]`: a `[tokens, r, in]` tensor) and then
multiply token by token (an einsum). With 16 sequences decoding, every adapted projection of
every layer copies 16 matrices before 16 matrix-vector products.

`GroupedPunicaWrapperCPU` keeps vLLM's wrapper, its metadata and its call sites, and replaces
only the six kernels it dispatches to: the batch's tokens are grouped by adapter slot once per
step, and each group is multiplied by its adapter's matrix in one matmul (`x[rows] @ A.T`),
no copy of the weights. Tokens without an adapter (slot -1) get no LoRA term; vLLM's gather reads
slot -1 for them, which is the last adapter slot.

The `gemlora_cpu_lora` vLLM plugin (`gemlora.serve.vllm_plugins`) names this class as the CPU
platform's punica wrapper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

QUALNAME = "gemlora.serve.cpu_lora.GroupedPunicaWrapperCPU"
logger = logging.getLogger("gemlora.cpu_lora")


@dataclass(frozen=True)
class Grouping:
    """A batch's tokens grouped by adapter slot. `order` lists the token rows sorted by slot
    (None: the whole batch has one adapter, or none) and `inverse` puts them back; each group
    is a contiguous run `[start, end)` of that order. Tokens without an adapter (slot -1) sort
    first and belong to no group."""

    order: torch.Tensor | None
    inverse: torch.Tensor | None
    groups: tuple[tuple[int, int, int], ...]  # (slot, start, end)
    covered_from: int  # rows of `order` before this have no adapter


NO_ADAPTER = Grouping(None, None, (), 0)


def group_tokens(token_slots: torch.Tensor) -> Grouping:
    """Group a batch's tokens by adapter slot, once per step."""
    count = token_slots.numel()
    if count == 0:
        return NO_ADAPTER
    first = int(token_slots[0])
    if bool((token_slots == first).all()):
        return NO_ADAPTER if first < 0 else Grouping(None, None, ((first, 0, count),), 0)
    order = torch.argsort(token_slots, stable=True)
    slots, counts = torch.unique_consecutive(token_slots[order], return_counts=True)
    groups, start = [], 0
    for slot, size in zip(slots.tolist(), counts.tolist(), strict=True):
        if slot >= 0:
            groups.append((slot, start, start + size))
        start += size
    covered_from = groups[0][1] if groups else count
    return Grouping(order, torch.argsort(order), tuple(groups), covered_from)


def _grouped_linear(x: torch.Tensor, weights: torch.Tensor, grouping: Grouping) -> torch.Tensor:
    """Each token's row times its adapter's matrix (`weights`: `[slots, out, in]`), in batch
    order: one matmul per adapter on a contiguous run of the sorted rows, no copy of any
    adapter's weights. Rows without an adapter are zero."""
    if grouping.order is None:  # one adapter for the whole batch
        return F.linear(x, weights[grouping.groups[0][0]])
    rows = x.index_select(0, grouping.order)
    parts = [F.linear(rows[start:end], weights[slot]) for slot, start, end in grouping.groups]
    if grouping.covered_from:
        parts.insert(0, rows.new_zeros(grouping.covered_from, weights.shape[1]))
    return torch.cat(parts).index_select(0, grouping.inverse)


def shrink(y, x, stacked_a, grouping: Grouping, scale: float) -> None:
    """`y = scale * x @ A[slot].T` for each token's adapter, overwriting `y` (vLLM's
    `bgmv_shrink`); tokens without an adapter get zeros."""
    slots, rank = stacked_a.shape[0], stacked_a.shape[-2]
    target = y[:, :rank]
    if not grouping.groups:
        target.zero_()
        return
    weights = stacked_a.reshape(slots, rank, -1).to(y.dtype)
    out = _grouped_linear(x.to(y.dtype), weights, grouping)
    target.copy_(out.mul_(scale) if scale != 1.0 else out)


def expand(y, x, stacked_b, grouping: Grouping, offset: int, size: int, add: bool) -> None:
    """`y[:, offset:offset+size] (+)= x @ B[slot].T` for each token's adapter (vLLM's
    `bgmv_expand_slice`)."""
    target = y[:, offset : offset + size]
    if not grouping.groups:
        if not add:
            target.zero_()
        return
    slots, rank = stacked_b.shape[0], stacked_b.shape[-1]
    weights = stacked_b.reshape(slots, -1, rank)[:, :size].to(y.dtype)
    out = _grouped_linear(x.to(y.dtype), weights, grouping)
    target.add_(out) if add else target.copy_(out)


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """vLLM's CPU punica wrapper with kernels that multiply each adapter's tokens at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._grouping = NO_ADAPTER  # until the first batch's metadata
        logger.info("LoRA on CPU: %s, one matmul per adapter in a batch", type(self).__name__)

    def update_metadata(self, *args, **kwargs) -> None:
        super().update_metadata(*args, **kwargs)
        self._grouping = group_tokens(self.token_lora_indices)

    def _shrink(self, y, x, w_t_all, scale) -> None:
        shrink(y, x, w_t_all, self._grouping, scale)

    def _expand_slice(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs) -> None:
        expand(y, x, w_t_all, self._grouping, y_offset, y_slice_size, add_inputs)

    def _expand(self, y, x, w_t_all, add_inputs) -> None:
        size = min(w_t_all.shape[-2], y.shape[-1])  # vLLM pads LoRA and model differently
        self._expand_slice(y, x, w_t_all, 0, size, add_inputs)

    # vLLM's wrapper dispatches prefill and decode separately; both are per-token here.
    _shrink_prefill = _shrink_decode = _shrink
    _expand_prefill = _expand_decode = _expand
    _expand_slice_prefill = _expand_slice_decode = _expand_slice
