"""Engine start-up: how long a multimodal Gemma 3 engine takes to answer its first request, with
gemlora's processor loading against vLLM's, in one run, alternating.

    python benchmarks/startup.py              # or: make bench-startup
    python benchmarks/startup.py --rounds 3

Each round starts the engine twice on the tiny multimodal Gemma 3 (the real 262k-token Gemma
tokenizer, which is what start-up spends its time on): once as shipped (gemlora's
`SharedTokenizerProcessingInfo`, see `gemlora.serve.gemma3_processor`) and once with
`GEMLORA_GEMMA3_PROCESSOR=vllm` (vLLM's own processing info, which hands transformers its
tokenizer to copy), the order swapped every round. Measured: seconds from the process start to
a healthy `/health` plus one answered chat request (what the supervisor waits for after a
crash). JSON on stdout and in benchmarks/results/startup.json, a chart beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from charts import grouped_bars  # noqa: E402
from gateway import free_port, machine  # noqa: E402

BASE = "tiny-gemma-3-mm"
VARIANTS = {"gemlora (shipped)": {}, "vllm processor": {"GEMLORA_GEMMA3_PROCESSOR": "vllm"}}


def start_seconds(env: dict[str, str], log: Path) -> float:
    """One engine start, timed to its first answer; the engine is stopped afterwards."""
    from gemlora.serve.engine import EngineConfig, start_engine

    config = EngineConfig(base=BASE, port=free_port())
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    started = time.monotonic()
    try:
        engine = start_engine(config, log)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})
    try:
        body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        answer = httpx.post(
            f"{engine.url}/v1/chat/completions", json=body, headers=engine.headers, timeout=120
        )
        answer.raise_for_status()
        return time.monotonic() - started
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/startup.json")
    options = parser.parse_args()

    samples: dict[str, list[float]] = {label: [] for label in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="gemlora-startup-") as scratch:
        for round_index in range(options.rounds):
            order = list(VARIANTS) if round_index % 2 == 0 else list(reversed(VARIANTS))
            for label in order:
                log = Path(scratch) / f"engine-{round_index}-{len(samples[label])}.log"
                print(f"round {round_index + 1}: starting ({label}) ...", file=sys.stderr)
                samples[label].append(round(start_seconds(VARIANTS[label], log), 1))
    shipped, baseline = (statistics.median(samples[label]) for label in VARIANTS)
    report = {
        "base": BASE,
        "rounds": options.rounds,
        "seconds_to_first_answer": samples,
        "median_s": {label: round(statistics.median(samples[label]), 1) for label in VARIANTS},
        "shipped_vs_vllm_processor": round(shipped / baseline, 3),
        "machine": machine(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text + "\n")
    series = {label: [report["median_s"][label]] for label in VARIANTS}
    title = f"{BASE}: engine start to first answer (median of {options.rounds})"
    grouped_bars(options.out.with_suffix(".png"), ["engine start"], series, "seconds", title)
    print(f"wrote {options.out} and {options.out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
