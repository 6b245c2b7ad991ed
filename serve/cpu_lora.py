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

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

QUALNAME = "gemlora.serve.cpu_lora.GroupedPunicaWrapperCPU"
logger = logging.getLogger("gemlora.cpu_lora")

# (adapter slot, its tokens): a slice when the whole batch uses one adapter
Group = tuple[int, slice | torch.Tensor]


def group_tokens(token_slots: torch.Tensor) -> list[Group]:
    """The adapter slots used in a batch (slot -1, no adapter, left out) with their tokens."""
    if token_slots.numel() == 0:
        return []
    first = int(token_slots[0])
    if bool((token_slots == first).all()):
        return [] if first < 0 else [(first, slice(None))]
    return [
        (slot, (token_slots == slot).nonzero().squeeze(-1))
        for slot in torch.unique(token_slots).tolist()
        if slot >= 0
    ]


def covers_every_token(groups: list[Group], token_slots: torch.Tensor) -> bool:
    """Whether every token has an adapter (nothing to zero for the others)."""
    if len(groups) == 1 and isinstance(groups[0][1], slice):
        return True
    return not bool((token_slots < 0).any())


def shrink(y, x, stacked_a, groups: list[Group], every_token: bool, scale: float) -> None:
    """`y = scale * x @ A[slot].T` for each token's adapter, overwriting `y` (vLLM's
    `bgmv_shrink`); tokens without an adapter get zeros."""
    x = x.to(y.dtype)
    rank = stacked_a.shape[-2]
    if not every_token:
        y[:, :rank].zero_()
    for slot, rows in groups:
        lora_a = stacked_a[slot].reshape(rank, -1).to(y.dtype)
        y[rows, :rank] = torch.mm(x[rows], lora_a.t()).mul_(scale)


def expand(y, x, stacked_b, groups: list[Group], every_token: bool, offset: int, size: int, add):
    """`y[:, offset:offset+size] (+)= x @ B[slot].T` for each token's adapter (vLLM's
    `bgmv_expand_slice`)."""
    columns = slice(offset, offset + size)
    rank = stacked_b.shape[-1]
    x = x.to(y.dtype)
    if not add and not every_token:
        y[:, columns].zero_()
    for slot, rows in groups:
        lora_b = stacked_b[slot].reshape(-1, rank)[:size].to(y.dtype)
        product = torch.mm(x[rows], lora_b.t())
        if add:
            y[rows, columns] += product
        else:
            y[rows, columns] = product


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """vLLM's CPU punica wrapper with kernels that multiply each adapter's tokens at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._groups: list[Group] = []  # no adapter until the first batch's metadata
        self._every_token = False
        logger.info("LoRA on CPU: %s, one matmul per adapter in a batch", type(self).__name__)

    def update_metadata(self, *args, **kwargs) -> None:
        super().update_metadata(*args, **kwargs)
        slots = self.token_lora_indices
        self._groups = group_tokens(slots)
        self._every_token = covers_every_token(self._groups, slots)

    def _shrink(self, y, x, w_t_all, scale) -> None:
        shrink(y, x, w_t_all, self._groups, self._every_token, scale)

    def _expand_slice(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs) -> None:
        expand(y, x, w_t_all, self._groups, self._every_token, y_offset, y_slice_size, add_inputs)

    def _expand(self, y, x, w_t_all, add_inputs) -> None:
        size = min(w_t_all.shape[-2], y.shape[-1])  # vLLM pads LoRA and model differently
        self._expand_slice(y, x, w_t_all, 0, size, add_inputs)

    # vLLM's wrapper dispatches prefill and decode separately; both are per-token here.
    _shrink_prefill = _shrink_decode = _shrink
    _expand_prefill = _expand_decode = _expand
    _expand_slice_prefill = _expand_slice_decode = _expand_slice
