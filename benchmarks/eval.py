"""What an eval costs: N items on M models answered at once (`gemlora eval`'s way: requests in
flight together, which the engine batches) against one call after another, alternating in one
run on one engine.

    python benchmarks/eval.py                      # or: make bench-eval
    python benchmarks/eval.py --items 8 --rounds 1

The demo's W4A16 270M on vLLM, with three random LoRA adapters (rank 8) registered in a scratch
MLflow: M = 4 models (the base and the adapters), N = `--items` held-out style questions,
`--tokens` greedy tokens each, graded by a string check. Both ways run the same `run_eval`
(the concurrent one with `concurrency: 16`, the sequential one with 1). JSON on stdout and in
benchmarks/results/eval.json, a chart beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from charts import grouped_bars  # noqa: E402
from gateway import free_port, machine  # noqa: E402
from serving import register, write_adapters  # noqa: E402

ADAPTERS = [f"eval-bench-{i}" for i in range(3)]
SIGNED = {
    "type": "string_check",
    "name": "signed",
    "input": "{{sample.output_text}}",
    "reference": "Captain Gem",
    "operation": "like",
}


def spec_for(engine_url: str, models: list[str], options, concurrency: int):
    from gemlora.evals.spec import EvalSpec

    return EvalSpec.model_validate(
        {
            "name": f"bench (concurrency {concurrency})",
            "endpoint": {"url": f"{engine_url}/v1", "api_key_env": None},
            "models": models,
            "sampling": {"max_tokens": options.tokens, "temperature": 0},
            "graders": [SIGNED],
            "concurrency": concurrency,
        }
    )


def style_items(count: int) -> list[dict]:
    from gemlora.data.sample_sets import write_samples

    with tempfile.TemporaryDirectory() as samples:
        write_samples(Path(samples))
        lines = (Path(samples) / "style-chat/train.jsonl").read_text().splitlines()
    items = []
    for line in lines[:count]:
        question = json.loads(line)["messages"][0]["content"]
        items.append({"messages": [{"role": "user", "content": question}]})
    return items


def measure(engine, models: list[str], items: list[dict], options) -> dict:
    from gemlora.evals.run import run_eval

    seconds: dict[str, list[float]] = {"concurrent": [], "sequential": []}
    run_eval(spec_for(engine.url, models, options, 16), items[:2])  # every adapter loaded once
    for _ in range(options.rounds):
        for way, concurrency in (("concurrent", 16), ("sequential", 1)):
            started = time.monotonic()
            result = run_eval(spec_for(engine.url, models, options, concurrency), items)
            seconds[way].append(time.monotonic() - started)
            failed = sum(a.text is None for m in result.models for a in m.answers)
            if failed:
                raise RuntimeError(f"{failed} requests failed ({way})")
            print(way, f"{seconds[way][-1]:.1f} s", file=sys.stderr)
    concurrent, sequential = (statistics.median(seconds[w]) for w in seconds)
    return {
        "answers": len(items) * len(models),
        "seconds": seconds,
        "median_s": {"concurrent": round(concurrent, 1), "sequential": round(sequential, 1)},
        "speedup": round(sequential / concurrent, 2),
    }


def run(options) -> dict:
    from gemlora.adapters import AdapterRegistry, RegistryConfig
    from gemlora.adapters.mlflow_server import start_mlflow_server
    from gemlora.serve.config import load_serve_config
    from gemlora.serve.engine import start_engine
    from gemlora.train.bases import build_model

    shipped = load_serve_config(REPO / "configs/serve/demo.yaml").engine
    base = shipped.base
    build_model(base)
    items = style_items(options.items)
    with tempfile.TemporaryDirectory(prefix="gemlora-bench-eval-") as scratch_dir:
        scratch = Path(scratch_dir)
        adapters = write_adapters(base, ADAPTERS, 8, scratch / "adapters")
        server = start_mlflow_server(scratch / "mlflow", port=free_port())
        engine = None
        try:
            registry_config = RegistryConfig(tracking_uri=server.url, cache_dir=scratch / "cache")
            register(AdapterRegistry(registry_config), base, adapters)
            config = shipped.model_copy(update={"port": free_port()})
            print("starting the engine ...", file=sys.stderr)
            engine = start_engine(config, scratch / "engine.log", registry=registry_config)
            models = [engine.served_name, *(f"{name}@champion" for name in ADAPTERS)]
            report = measure(engine, models, items, options)
        finally:
            if engine is not None:
                engine.stop()
            server.stop()
    return (
        {"base": base, "models": len(models), "items": len(items), "machine": machine()}
        | {"options": {k: v for k, v in vars(options).items() if k != "out"}}
        | report
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--items", type=int, default=16, help="held-out questions (N)")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each answer")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per way")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/eval.json")
    options = parser.parse_args()
    report = run(options)
    text = json.dumps(report, indent=2)
    print(text)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text + "\n")
    grouped_bars(
        options.out.with_suffix(".png"),
        [f"{report['items']} items x {report['models']} models"],
        {way: [value] for way, value in report["median_s"].items()},
        "seconds (median)",
        f"gemlora eval on {report['base']}: concurrent vs one call after another "
        f"({report['speedup']}x)",
    )
    print(f"wrote {options.out} and {options.out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
