"""gemlora's CPU multi-LoRA kernels (tokens grouped by adapter: padded blocks and one batched
matmul, or sorted runs and one matmul per adapter) compute what vLLM's per-token kernels compute,
for every token that has an adapter, and give tokens without one no LoRA term.
The engine-level check (greedy tokens of mixed concurrent requests) is in test_serve_routing."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops.torch_ops import bgmv_expand_slice, bgmv_shrink
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from gemlora.serve import cpu_lora
from gemlora.serve.cpu_lora import GroupedPunicaWrapperCPU, group_tokens

SLOTS, RANK, IN, OUT = 4, 8, 48, 40


@pytest.fixture(params=["padded", "runs"])
def layout(request, monkeypatch):
    """Both groupings of a mixed batch: padded blocks (what a decode step gets) and sorted runs
    (what long uneven prefills get), chosen here by the padding limit."""
    if request.param == "runs":
        monkeypatch.setattr(cpu_lora, "PADDING_FACTOR", 0)
        monkeypatch.setattr(cpu_lora, "PADDED_ROWS_ANYWAY", 0)
    return request.param


def stacked(*shape) -> torch.Tensor:
    return torch.randn(SLOTS, 1, *shape)


def wrapper(kind, token_slots: torch.Tensor, prefill: bool):
    """A punica wrapper whose batch metadata is `token_slots` (as `update_metadata` leaves it)."""
    punica = kind(max_num_batched_tokens=64, max_batches=8, device="cpu")
    punica._token_lora_indices[: len(token_slots)] = token_slots
    punica.indices_len[0] = len(token_slots)
    punica.is_prefill = prefill
    if prefill:
        punica._update_prefill_metadata(punica.token_lora_indices)
    if kind is GroupedPunicaWrapperCPU:
        punica._grouping = group_tokens(punica.token_lora_indices)
    return punica


def layer_output(tokens: int) -> torch.Tensor:
    """What the base layer computed, before the LoRA terms are added."""
    return torch.randn(tokens, 2 * OUT, generator=torch.Generator().manual_seed(1))


def lora_linear(punica, x, lora_a, lora_b) -> torch.Tensor:
    """Two slices, as a fused projection (gate and up) has."""
    y = layer_output(x.shape[0])
    punica.add_lora_linear(y, x, lora_a, lora_b, 0.5, (OUT, OUT))
    return y


@pytest.mark.parametrize("prefill", [False, True])
@pytest.mark.parametrize(
    "token_slots", [[2] * 7, [0, 0, 3, 1, 1, 1, 3], [3, 2, 1, 0, 2, 3, 0]], ids=str
)
def test_grouped_kernels_equal_vllms(token_slots, prefill, layout):
    torch.manual_seed(0)
    slots = torch.tensor(token_slots)
    x = torch.randn(len(slots), IN)
    lora_a = (stacked(RANK, IN), stacked(RANK, IN))
    lora_b = (stacked(OUT, RANK), stacked(OUT, RANK))
    ours = lora_linear(wrapper(GroupedPunicaWrapperCPU, slots, prefill), x, lora_a, lora_b)
    theirs = lora_linear(wrapper(PunicaWrapperCPU, slots, prefill), x, lora_a, lora_b)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefill", [False, True])
@pytest.mark.parametrize("token_slots", [[-1, 1, -1, 0, 1], [-1, 1, 0, 3]], ids=str)
def test_tokens_without_an_adapter_get_no_lora_term(prefill, layout, token_slots):
    torch.manual_seed(0)
    slots = torch.tensor(token_slots)
    x = torch.randn(len(slots), IN)
    lora_a, lora_b = (stacked(RANK, IN),) * 2, (stacked(OUT, RANK),) * 2
    before = layer_output(len(slots))
    after = lora_linear(wrapper(GroupedPunicaWrapperCPU, slots, prefill), x, lora_a, lora_b)
    base_rows = slots < 0
    assert torch.equal(after[base_rows], before[base_rows])
    # the adapted rows equal vLLM's kernels applied to them alone
    adapted = ~base_rows
    shrunk = torch.zeros(int(adapted.sum()), RANK)
    bgmv_shrink(x[adapted], lora_a[0], shrunk, slots[adapted], 0.5)
    expected = before[adapted].clone()
    bgmv_expand_slice(shrunk, lora_b[0], expected, slots[adapted], 0, OUT, True)
    torch.testing.assert_close(after[adapted][:, :OUT], expected[:, :OUT], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("token_slots", [[0, 0, 3, 1, 1, 1, 3], [-1, 2, 0, -1, 2]], ids=str)
def test_single_kernels_equal_vllms(token_slots, layout):
    """`add_shrink` and `add_expand` on their own (vLLM's logits and embedding LoRA call them)."""
    torch.manual_seed(0)
    slots = torch.tensor(token_slots)
    x = torch.randn(len(slots), IN)
    lora_a, lora_b = (stacked(RANK, IN),), (stacked(OUT, RANK),)
    results = []
    for kind in (GroupedPunicaWrapperCPU, PunicaWrapperCPU):
        punica = wrapper(kind, slots, prefill=False)
        shrunk = torch.full((1, len(slots), RANK), 7.0)  # overwritten, not added to
        punica.add_shrink(shrunk, x, lora_a, 0.5)
        y = layer_output(len(slots))
        punica.add_expand(y, shrunk, lora_b, (OUT,), offset_start=OUT)
        results.append((shrunk, y))
    adapted = slots >= 0  # vLLM gives unadapted tokens the last slot's terms; gemlora none
    (ours_shrunk, ours_y), (theirs_shrunk, theirs_y) = results
    torch.testing.assert_close(ours_shrunk[0][adapted], theirs_shrunk[0][adapted])
    torch.testing.assert_close(ours_y[adapted], theirs_y[adapted], rtol=1e-5, atol=1e-5)
    assert not ours_shrunk[0][~adapted].any()
    assert torch.equal(ours_y[~adapted], layer_output(len(slots))[~adapted])


def test_one_adapter_for_the_whole_batch_is_one_matmul_without_a_gather():
    one = group_tokens(torch.tensor([2, 2, 2]))
    assert one.rows is None and one.runs == ((2, 0, 3),)
    assert group_tokens(torch.tensor([-1, -1])).runs == ()


def test_a_decode_step_is_one_padded_block_per_slot():
    """Slots 1 and 3 (and 2 between them, empty); the tokens without an adapter read a filler
    row, which the gather zeroes."""
    grouping = group_tokens(torch.tensor([3, -1, 1, 3, 1]))
    assert grouping.width == 2
    assert grouping.runs == ((1, 0, 2), (2, 2, 2), (3, 4, 6))
    assert grouping.rows[[0, 1, 4, 5]].tolist() == [2, 4, 0, 3]
    assert grouping.positions.tolist() == [4, 2, 0, 5, 1]
    assert grouping.filler[:, 0].tolist() == [1, 1, 0, 0, 1, 1]
    # full blocks and a token without an adapter: one more row per block, for its zero row
    assert group_tokens(torch.tensor([0, 1, -1])).width == 2


def test_long_uneven_runs_are_sorted_not_padded():
    """A 300-token prefill on slot 0 beside one decoding token on slot 5: padding every slot to
    300 rows would compute 6x the rows, so the tokens are sorted into one run per slot."""
    slots = torch.tensor([0] * 300 + [5, -1])
    grouping = group_tokens(slots)
    assert grouping.width == 0
    assert grouping.runs == ((0, 0, 300), (5, 300, 301))
    assert grouping.zero_rows == 1 and grouping.positions[-1] == 0


def test_the_plugin_makes_it_the_cpu_platforms_punica_wrapper(monkeypatch):
    """What vLLM asks when it builds a LoRA model runner: the plugin (entry point
    `gemlora_cpu_lora`) answers with gemlora's wrapper; `GEMLORA_CPU_LORA=vllm` keeps vLLM's."""
    from importlib import metadata

    from vllm.platforms import current_platform

    from gemlora.serve.cpu_lora import QUALNAME

    (entry,) = metadata.entry_points(group="vllm.general_plugins", name="gemlora_cpu_lora")
    platform_class = type(current_platform)
    monkeypatch.setattr(platform_class, "get_punica_wrapper", platform_class.get_punica_wrapper)
    monkeypatch.setenv("GEMLORA_CPU_LORA", "vllm")
    entry.load()()
    assert current_platform.get_punica_wrapper().endswith("PunicaWrapperCPU")
    assert current_platform.get_punica_wrapper() != QUALNAME
    monkeypatch.delenv("GEMLORA_CPU_LORA")
    entry.load()()
    assert current_platform.get_punica_wrapper() == QUALNAME


# --- bf16 (the engines' dtype where the CPU has AVX512-BF16 or AMX) ---------------------------

# bf16 keeps 8 bits of mantissa: one rounding is a relative error of 2^-9, and the kernels round
# the input, the weights, the rank-r intermediate (float32 in vLLM's kernels, bf16 in gemlora's
# fused path) and the output. Measured here: the largest error is 0.8% of the largest LoRA term
# (27-37 in these tests); a wrong slot is off by the size of the term itself, and B weights 5%
# off already fail.
BF16_TOLERANCE = 0.02


def reference_lora(y, x, lora_a, lora_b, slots, scale: float, sizes) -> torch.Tensor:
    """`y[t, slice i] + scale * x[t] @ A_i[slot].T @ B_i[slot].T` for every token with a slot, in
    float32 plain matmuls on the (bf16-rounded) values upcast: what exact arithmetic gives."""
    out = y.float().clone()
    for token, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        offset = 0
        for stacked_a, stacked_b, size in zip(lora_a, lora_b, sizes, strict=True):
            a, b = stacked_a[slot, 0].float(), stacked_b[slot, 0].float()
            out[token, offset : offset + size] += scale * (x[token].float() @ a.T) @ b[:size].T
            offset += size
    return out


def assert_close_to_reference(ours: torch.Tensor, reference: torch.Tensor, before) -> None:
    """Within BF16_TOLERANCE of the largest LoRA term; rows without an adapter exactly as
    they were."""
    term = (reference - before.float()).abs().max()
    assert term > 1.0  # the LoRA terms are there to be checked
    error = (ours.float() - reference).abs().max()
    assert error <= BF16_TOLERANCE * term, f"max error {error:.4f} over a term of {term:.2f}"


@pytest.mark.parametrize("prefill", [False, True])
@pytest.mark.parametrize(
    "token_slots", [[2] * 7, [0, 0, 3, 1, 1, 1, 3], [-1, 1, -1, 0, 1, 3]], ids=str
)
def test_grouped_kernels_in_bf16_equal_an_fp32_reference(token_slots, prefill, layout):
    """Activations, weights and output in bf16, as an engine with `--dtype bfloat16` runs
    them (the filler mask stays float32: multiplied into bf16 rows in place)."""
    torch.manual_seed(0)
    bf16 = torch.bfloat16
    slots = torch.tensor(token_slots)
    x = torch.randn(len(slots), IN, dtype=bf16)
    lora_a = (stacked(RANK, IN).to(bf16), stacked(RANK, IN).to(bf16))
    lora_b = (stacked(OUT, RANK).to(bf16), stacked(OUT, RANK).to(bf16))
    before = layer_output(len(slots)).to(bf16)
    y = before.clone()
    wrapper(GroupedPunicaWrapperCPU, slots, prefill).add_lora_linear(
        y, x, lora_a, lora_b, 0.5, (OUT, OUT)
    )
    assert y.dtype == bf16
    reference = reference_lora(before, x, lora_a, lora_b, slots, 0.5, (OUT, OUT))
    assert_close_to_reference(y, reference, before)
    assert torch.equal(y[slots < 0], before[slots < 0])


@pytest.mark.parametrize("token_slots", [[0, 0, 3, 1, 1, 1, 3], [-1, 2, 0, -1, 2]], ids=str)
def test_single_kernels_in_bf16_equal_an_fp32_reference(token_slots, layout):
    """`add_shrink` into vLLM's float32 buffer from bf16 activations and weights, then
    `add_expand` from that buffer into a bf16 output (vLLM's logits LoRA calls them so)."""
    torch.manual_seed(0)
    bf16 = torch.bfloat16
    slots = torch.tensor(token_slots)
    x = torch.randn(len(slots), IN, dtype=bf16)
    lora_a, lora_b = (stacked(RANK, IN).to(bf16),), (stacked(OUT, RANK).to(bf16),)
    punica = wrapper(GroupedPunicaWrapperCPU, slots, prefill=False)
    shrunk = torch.full((1, len(slots), RANK), 7.0)
    punica.add_shrink(shrunk, x, lora_a, 0.5)
    before = torch.zeros(len(slots), 2 * OUT, dtype=bf16)
    y = before.clone()
    punica.add_expand(y, shrunk, lora_b, (OUT,), offset_start=OUT)
    adapted = slots >= 0
    expected_shrunk = torch.zeros(len(slots), RANK)
    for token, slot in enumerate(slots.tolist()):
        if slot >= 0:
            expected_shrunk[token] = 0.5 * x[token].float() @ lora_a[0][slot, 0].float().T
    torch.testing.assert_close(shrunk[0], expected_shrunk, rtol=1e-5, atol=1e-4)  # fp32 math
    expected = before.float().clone()
    for token, slot in enumerate(slots.tolist()):
        if slot >= 0:
            expected[token, OUT:] += shrunk[0, token] @ lora_b[0][slot, 0].float().T
    assert_close_to_reference(y, expected, before)
    assert not y[:, :OUT].any() and not y[~adapted].any()


def test_the_first_kernel_call_with_adapters_logs_once(caplog):
    """The line an engine's log shows once LoRA requests ran through these kernels (read by
    tests/serve/test_strict_cpu_lora_in_engine.py); a batch without adapters logs nothing."""
    from gemlora.serve.cpu_lora import FIRST_USE

    torch.manual_seed(0)
    lora_a, lora_b = (stacked(RANK, IN),) * 2, (stacked(OUT, RANK),) * 2
    caplog.set_level("INFO", logger="gemlora.cpu_lora")

    def first_use_lines(token_slots) -> list[str]:
        caplog.clear()
        slots = torch.tensor(token_slots)
        punica = wrapper(GroupedPunicaWrapperCPU, slots, prefill=False)
        for _ in range(3):  # three steps
            lora_linear(punica, torch.randn(len(slots), IN), lora_a, lora_b)
        return [r.getMessage() for r in caplog.records if FIRST_USE in r.getMessage()]

    assert first_use_lines([-1, -1]) == []
    assert first_use_lines([0, 2, -1, 2]) == [f"{FIRST_USE} (padded blocks)"]
    assert first_use_lines([1, 1]) == [f"{FIRST_USE} (one adapter)"]
