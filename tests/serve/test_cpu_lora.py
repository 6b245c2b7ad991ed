"""gemlora's CPU multi-LoRA kernels (one matmul per adapter) compute what vLLM's per-token
kernels compute, for every token that has an adapter, and give tokens without one no LoRA term.
The engine-level check (greedy tokens of mixed concurrent requests) is in test_serve_routing."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops.torch_ops import bgmv_expand_slice, bgmv_shrink
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from gemlora.serve.cpu_lora import GroupedPunicaWrapperCPU, group_tokens

SLOTS, RANK, IN, OUT = 4, 8, 48, 40


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
def test_grouped_kernels_equal_vllms(token_slots, prefill):
    torch.manual_seed(0)
    slots = torch.tensor(token_slots)
    x = torch.randn(len(slots), IN)
    lora_a = (stacked(RANK, IN), stacked(RANK, IN))
    lora_b = (stacked(OUT, RANK), stacked(OUT, RANK))
    ours = lora_linear(wrapper(GroupedPunicaWrapperCPU, slots, prefill), x, lora_a, lora_b)
    theirs = lora_linear(wrapper(PunicaWrapperCPU, slots, prefill), x, lora_a, lora_b)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefill", [False, True])
def test_tokens_without_an_adapter_get_no_lora_term(prefill):
    torch.manual_seed(0)
    slots = torch.tensor([-1, 1, -1, 0, 1])
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


def test_one_adapter_for_the_whole_batch_is_one_group_without_a_gather():
    one = group_tokens(torch.tensor([2, 2, 2]))
    assert one.order is None and one.groups == ((2, 0, 3),)
    assert group_tokens(torch.tensor([-1, -1])).groups == ()


def test_mixed_batches_are_sorted_into_contiguous_runs_per_adapter():
    grouping = group_tokens(torch.tensor([1, -1, 0, 1, -1]))
    # sorted: the two tokens without an adapter, then slot 0's token, then slot 1's two
    assert grouping.order.tolist() == [1, 4, 2, 0, 3]
    assert grouping.groups == ((0, 2, 3), (1, 3, 5))
    assert grouping.covered_from == 2
    assert grouping.order[grouping.inverse].tolist() == [0, 1, 2, 3, 4]


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
