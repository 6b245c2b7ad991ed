"""Multi-LoRA on a CPU without copying adapters' weights, for vLLM's CPU punica wrapper.

vLLM's CPU LoRA kernels (`vllm/lora/ops/torch_ops/lora_ops.py`) copy, for every token, its
adapter's A or B matrix (`lora_weights[token_indices]`: a `[tokens, r, in]` tensor) and then
multiply token by token (an einsum). With 16 sequences decoding, every adapted projection of
every layer copies 16 matrices before 16 matrix-vector products.

`GroupedPunicaWrapperCPU` keeps vLLM's wrapper, its metadata and its call sites. Once per step
it decides how the batch's tokens meet their adapters' matrices (a `Grouping`):

- one adapter for the whole batch: one matmul on the batch as it is;
- a few tokens per adapter (decoding): the tokens are gathered into one padded block per adapter
  slot and each projection is one batched matmul over the slots (`torch.bmm` with the stacked
  weights as they are), so a step's cost does not grow with the number of adapters in it;
- long uneven runs (prefill): the tokens are sorted by slot and each run is multiplied by its
  adapter's matrix, so no padding is computed.

A fused projection (q, k, v or gate, up) gathers its input once, shrinks and expands each slice
in the grouped layout and adds the result to the output rows with one `index_add_`; vLLM's
intermediate buffer is not needed. Tokens without an adapter (slot -1) get no LoRA term (vLLM's
gather reads slot -1 for them, which is the last adapter slot).

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
# Logged once per engine process, by the first kernel call on a batch with adapted tokens: the
# proof in the engine's log that LoRA requests ran through these kernels (tests read it).
FIRST_USE = "LoRA on CPU: gemlora's grouped kernels ran on a batch with adapters"

# Padded blocks are used while they hold at most this many rows per adapted token (or fewer than
# PADDED_ROWS_ANYWAY rows): past that, the padding costs more than one matmul call per adapter.
PADDING_FACTOR = 4
PADDED_ROWS_ANYWAY = 128


@dataclass(frozen=True)
class Grouping:
    """How one batch's tokens meet their adapters' matrices.

    `rows` are the token rows gathered, in grouped order (None: every row, as it is, one
    adapter). `runs` lists `(slot, start, end)` of that order, one per adapter. With `width` set,
    the rows form `len(runs)` padded blocks of `width` rows for the consecutive slots from
    `runs[0]`, and `filler` is a `[rows, 1]` mask that zeroes the rows filling the blocks.
    `positions` names, for each token of the batch, its row of the grouped result; tokens
    without an adapter name a zero row (a filler row, or one of `zero_rows` put first).
    """

    rows: torch.Tensor | None
    runs: tuple[tuple[int, int, int], ...]
    positions: torch.Tensor | None = None
    width: int = 0
    filler: torch.Tensor | None = None
    zero_rows: int = 0

    @property
    def adapted(self) -> bool:
        return bool(self.runs)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The batch's rows in grouped order (filler rows zero)."""
        if self.rows is None:
            return x
        rows = x.index_select(0, self.rows)
        return rows.mul_(self.filler) if self.filler is not None else rows

    def linear(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Grouped rows times their adapters' matrices (`weights`: `[slots, out, in]`)."""
        if self.rows is None:
            return F.linear(rows, weights[self.runs[0][0]])
        if self.width:
            first, blocks = self.runs[0][0], len(self.runs)
            stacked = rows.view(blocks, self.width, rows.shape[-1])
            out = torch.bmm(stacked, weights[first : first + blocks].transpose(1, 2))
            return out.view(-1, weights.shape[1])
        parts = [F.linear(rows[start:end], weights[slot]) for slot, start, end in self.runs]
        return torch.cat(parts)

    def add_to(self, target: torch.Tensor, out: torch.Tensor) -> None:
        """Add grouped results to their tokens' rows of `target`."""
        if self.rows is None:
            target.add_(out)
            return
        if self.zero_rows:
            out = torch.cat([out.new_zeros(self.zero_rows, out.shape[1]), out])
        target.add_(out.index_select(0, self.positions))


NO_ADAPTER = Grouping(None, ())


def group_tokens(token_slots: torch.Tensor) -> Grouping:
    """Decide, once per step, how the batch's tokens are grouped by adapter slot."""
    count = token_slots.numel()
    if count == 0:
        return NO_ADAPTER
    first = int(token_slots[0])
    if bool((token_slots == first).all()):
        return NO_ADAPTER if first < 0 else Grouping(None, ((first, 0, count),))
    order = torch.argsort(token_slots, stable=True)
    slots, sizes = torch.unique_consecutive(token_slots[order], return_counts=True)
    by_slot = {s: n for s, n in zip(slots.tolist(), sizes.tolist(), strict=True) if s >= 0}
    if not by_slot:
        return NO_ADAPTER
    unadapted = count - sum(by_slot.values())  # slot -1 sorts first
    lowest, highest = min(by_slot), max(by_slot)
    blocks, width = highest - lowest + 1, max(by_slot.values())
    if unadapted and sum(by_slot.values()) == blocks * width:
        width += 1  # no filler row in any block: one for the tokens without an adapter to read
    padded_rows = blocks * width
    if padded_rows > max(PADDING_FACTOR * (count - unadapted), PADDED_ROWS_ANYWAY):
        return sorted_runs(order, by_slot, unadapted)
    return padded_blocks(order, by_slot, unadapted, lowest, highest, width)


def sorted_runs(order: torch.Tensor, by_slot: dict[int, int], unadapted: int) -> Grouping:
    """The adapted tokens sorted by slot, one run per slot; the tokens without an adapter read
    the zero rows put before the runs."""
    runs, start = [], 0
    for slot, size in by_slot.items():
        runs.append((slot, start, start + size))
        start += size
    positions = torch.argsort(order)  # sorted order, the unadapted first: zero rows
    return Grouping(order[unadapted:], tuple(runs), positions, zero_rows=unadapted)


def padded_blocks(
    order: torch.Tensor,
    by_slot: dict[int, int],
    unadapted: int,
    lowest: int,
    highest: int,
    width: int,
) -> Grouping:
    """One block of `width` rows per slot from `lowest` to `highest`: a slot's tokens, then
    filler rows (reading row 0, zeroed by the mask), which the unadapted tokens point at."""
    blocks = highest - lowest + 1
    rows = torch.zeros(blocks * width, dtype=torch.long)
    real = torch.zeros(blocks * width, 1)
    positions = torch.empty(order.numel(), dtype=torch.long)
    runs, taken = [], unadapted
    for slot in range(lowest, highest + 1):
        block = (slot - lowest) * width
        size = by_slot.get(slot, 0)
        tokens = order[taken : taken + size]
        rows[block : block + size] = tokens
        positions[tokens] = torch.arange(block, block + size)
        real[block : block + size] = 1.0
        runs.append((slot, block, block + size))
        taken += size
    if unadapted:
        filler_row = int((real[:, 0] == 0).nonzero()[0])
        positions[order[:unadapted]] = filler_row
    filler = None if bool(real.all()) else real
    return Grouping(rows, tuple(runs), positions, width, filler)


def a_matrices(stacked_a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """vLLM's `[slots, 1, r, in]` A weights as `[slots, r, in]`."""
    slots, rank = stacked_a.shape[0], stacked_a.shape[-2]
    return stacked_a.reshape(slots, rank, -1).to(dtype)


def b_matrices(stacked_b: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """vLLM's `[slots, 1, out, r]` B weights as `[slots, size, r]` (its first `size` outputs)."""
    slots, rank = stacked_b.shape[0], stacked_b.shape[-1]
    return stacked_b.reshape(slots, -1, rank)[:, :size].to(dtype)


def shrink(y, x, stacked_a, grouping: Grouping, scale: float) -> None:
    """`y = scale * x @ A[slot].T` for each token's adapter, overwriting `y` (vLLM's
    `bgmv_shrink`); tokens without an adapter get zeros."""
    target = y[:, : stacked_a.shape[-2]]
    target.zero_()
    if grouping.adapted:
        out = grouping.linear(grouping.gather(x.to(y.dtype)), a_matrices(stacked_a, y.dtype))
        grouping.add_to(target, out.mul_(scale) if scale != 1.0 else out)


def expand(y, x, stacked_b, grouping: Grouping, offset: int, size: int, add: bool) -> None:
    """`y[:, offset:offset+size] (+)= x @ B[slot].T` for each token's adapter (vLLM's
    `bgmv_expand_slice`)."""
    target = y[:, offset : offset + size]
    if not add:
        target.zero_()
    if grouping.adapted:
        out = grouping.linear(grouping.gather(x.to(y.dtype)), b_matrices(stacked_b, size, y.dtype))
        grouping.add_to(target, out)


def add_lora(y, x, lora_a, lora_b, grouping: Grouping, scale: float, sizes) -> None:
    """`y[:, slice i] += scale * x @ A_i[slot].T @ B_i[slot].T` for each slice of a fused
    projection: the input is gathered once and the intermediate stays in grouped order."""
    if not grouping.adapted:
        return
    rows = grouping.gather(x.to(y.dtype))
    offset = 0
    for stacked_a, stacked_b, size in zip(lora_a, lora_b, sizes, strict=True):
        shrunk = grouping.linear(rows, a_matrices(stacked_a, y.dtype))
        if scale != 1.0:
            shrunk.mul_(scale)
        out = grouping.linear(shrunk, b_matrices(stacked_b, size, y.dtype))
        grouping.add_to(y[:, offset : offset + size], out)
        offset += size


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """vLLM's CPU punica wrapper with kernels that multiply each adapter's tokens at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._grouping = NO_ADAPTER  # until the first batch's metadata
        self._used = False  # FIRST_USE logged
        logger.info("LoRA on CPU: %s, tokens grouped by adapter", type(self).__name__)

    def update_metadata(self, *args, **kwargs) -> None:
        super().update_metadata(*args, **kwargs)
        self._grouping = group_tokens(self.token_lora_indices)

    def _kernel_grouping(self) -> Grouping:
        """This step's grouping, for a kernel about to use it (logs FIRST_USE once)."""
        grouping = self._grouping
        if grouping.adapted and not self._used:
            self._used = True
            layout = (
                "one adapter"
                if grouping.rows is None
                else ("padded blocks" if grouping.width else "sorted runs")
            )
            logger.info("%s (%s)", FIRST_USE, layout)
        return grouping

    def add_lora_linear(
        self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs
    ) -> None:
        flat_y, flat_x = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        grouping = self._kernel_grouping()
        add_lora(flat_y, flat_x, lora_a_stacked, lora_b_stacked, grouping, scale, output_slices)

    def _shrink(self, y, x, w_t_all, scale) -> None:
        shrink(y, x, w_t_all, self._kernel_grouping(), scale)

    def _expand_slice(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs) -> None:
        expand(y, x, w_t_all, self._kernel_grouping(), y_offset, y_slice_size, add_inputs)

    def _expand(self, y, x, w_t_all, add_inputs) -> None:
        size = min(w_t_all.shape[-2], y.shape[-1])  # vLLM pads LoRA and model differently
        self._expand_slice(y, x, w_t_all, 0, size, add_inputs)

    # vLLM's wrapper dispatches prefill and decode separately; both are per-token here.
    _shrink_prefill = _shrink_decode = _shrink
    _expand_prefill = _expand_decode = _expand
    _expand_slice_prefill = _expand_slice_decode = _expand_slice
