"""The CPU multi-LoRA kernels alone: vLLM's against gemlora's two layouts, in one run, alternating.

    python benchmarks/cpu_lora.py                 # or: make bench-cpu-lora
    python benchmarks/cpu_lora.py --rounds 3 --reps 5

One step's LoRA work on Gemma 3 270M's shapes (18 layers; q/k/v, o, gate/up and down projections
with vLLM's fused slices; r=16 on every projection; 8 adapter slots, fp32), called the way vLLM's
LoRA layers call it (`add_lora_linear` on the punica wrapper), for batches of:

- one adapter on 16 decoding tokens; 8 adapters mixed on 16 decoding tokens (2 each); 4 adapters
  and the base mixed; a prefill of 8 prompts of 40 tokens on 8 adapters;

and three implementations: vLLM's CPU punica wrapper (a copy of the adapter's matrix per token),
gemlora's wrapper with the sorted-runs layout forced (one matmul per adapter), and gemlora's
wrapper as shipped (padded blocks and one batched matmul for decode steps). Each round times every
batch on every implementation in turn; reported: the median milliseconds per step, and each as a
ratio to the shipped wrapper. One torch thread, as vLLM's CPU worker computes on one core here.
JSON on stdout and in benchmarks/results/cpu_lora.json, a chart beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from gemlora.serve import cpu_lora

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from charts import grouped_bars  # noqa: E402

LAYERS, SLOTS, RANK = 18, 8, 16
# (input size, fused output slices) of Gemma 3 270M's adapted projections
PROJECTIONS = [(640, (1024, 256, 256)), (1024, (640,)), (640, (2048, 2048)), (2048, (640,))]
BATCHES = {
    "1 adapter, 16 decoding": [3] * 16,
    "8 adapters mixed, 16 decoding": [i % 8 for i in range(16)],
    "4 adapters + base, 16 decoding": [-1, 0, 1, 2, 3] * 3 + [0],
    "8 prompts x 40 tokens prefill": [i // 40 for i in range(320)],
}
IMPLEMENTATIONS = ("vllm", "gemlora: sorted runs", "gemlora (shipped)")


@contextmanager
def layout(implementation: str):
    """gemlora's wrapper with the sorted-runs layout forced (a padding limit of zero)."""
    saved = cpu_lora.PADDING_FACTOR, cpu_lora.PADDED_ROWS_ANYWAY
    if implementation == "gemlora: sorted runs":
        cpu_lora.PADDING_FACTOR = cpu_lora.PADDED_ROWS_ANYWAY = 0
    try:
        yield
    finally:
        cpu_lora.PADDING_FACTOR, cpu_lora.PADDED_ROWS_ANYWAY = saved


def punica_wrapper(implementation: str, token_slots: list[int]):
    """A wrapper whose batch metadata is `token_slots`, as vLLM's `update_metadata` leaves it."""
    kind = PunicaWrapperCPU if implementation == "vllm" else cpu_lora.GroupedPunicaWrapperCPU
    punica = kind(max_num_batched_tokens=512, max_batches=32, device="cpu")
    slots = torch.tensor(token_slots)
    punica._token_lora_indices[: len(slots)] = slots
    punica.indices_len[0] = len(slots)
    punica.is_prefill = False
    if kind is not PunicaWrapperCPU:
        with layout(implementation):
            punica._grouping = cpu_lora.group_tokens(punica.token_lora_indices)
    return punica


def step_ms(implementation: str, token_slots: list[int], weights, reps: int) -> float:
    """Median milliseconds of one step's `add_lora_linear` calls over every layer."""
    punica = punica_wrapper(implementation, token_slots)
    tokens = len(token_slots)
    inputs = {size: torch.randn(tokens, size) for size, _ in PROJECTIONS}
    outputs = [torch.randn(tokens, sum(slices)) for _, slices in PROJECTIONS]

    layer = list(zip(PROJECTIONS, weights, outputs, strict=True))

    def one_step() -> None:
        for _ in range(LAYERS):
            for (size, slices), (lora_a, lora_b), y in layer:
                punica.add_lora_linear(y, inputs[size], lora_a, lora_b, 1.0, slices)

    one_step()  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        one_step()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def stacked_weights():
    """vLLM's stacked LoRA weights per projection: A `[slots, 1, r, in]`, B `[slots, 1, out, r]`
    per slice (one layer's, reused for every layer: the timing does not depend on the values)."""
    return [
        (
            tuple(torch.randn(SLOTS, 1, RANK, size) for _ in slices),
            tuple(torch.randn(SLOTS, 1, out, RANK) for out in slices),
        )
        for size, slices in PROJECTIONS
    ]


def chart(report: dict, path: Path) -> None:
    series = {name: [report[batch][name]["ms"] for batch in BATCHES] for name in IMPLEMENTATIONS}
    ylabel = "ms per step (LoRA kernels only, log scale)"
    title = "CPU multi-LoRA kernels, Gemma 3 270M shapes, r=16, 8 slots"
    grouped_bars(path, list(BATCHES), series, ylabel, title, log_scale=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per batch and round")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/cpu_lora.json")
    options = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    weights = stacked_weights()
    samples = {batch: {name: [] for name in IMPLEMENTATIONS} for batch in BATCHES}
    for _ in range(options.rounds):
        for batch, token_slots in BATCHES.items():
            for implementation in IMPLEMENTATIONS:
                ms = step_ms(implementation, token_slots, weights, options.reps)
                samples[batch][implementation].append(ms)
    report = {}
    for batch, by_implementation in samples.items():
        shipped = statistics.median(by_implementation["gemlora (shipped)"])
        report[batch] = {
            name: {
                "ms": round(statistics.median(times), 2),
                "over_shipped": round(statistics.median(times) / shipped, 2),
            }
            for name, times in by_implementation.items()
        }
    options_used = vars(options) | {"out": str(options.out)}
    text = json.dumps({"options": options_used, "steps": report}, indent=2)
    print(text)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text + "\n")
    chart(report, options.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
