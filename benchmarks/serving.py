"""Serving over many adapters: throughput and latency of the base, one adapter and N adapters
mixed, on the shipped serve config and its variants, in one run, alternating.

    python benchmarks/serving.py                  # or: make bench-serving
    python benchmarks/serving.py --rounds 1 --requests 16 --mixed 2,8

Everything runs on this machine: an MLflow registry on loopback, random r=16 adapters on every
projection registered in it (`bench-K@champion`), and vLLM engines on the base of
`configs/serve/demo.yaml`, all routing adapter names through the registry:

- `shipped`: the demo config's engine section as it is (its `max_loras`, `auto` precision,
  gemlora's CPU LoRA kernels);
- `vllm kernels`: the same with vLLM's own CPU LoRA kernels (`GEMLORA_CPU_LORA=vllm`);
- `max_loras>=N`: the same as `shipped` with `max_loras` above the largest N, and hot adapters
  (`bench-hot-*@champion`, loaded and pinned at start-up);
- `before`: the engine as it was before gemlora chose the precision and the LoRA kernels
  (`--dtype bfloat16`, `max_loras: 4`, vLLM's CPU LoRA kernels);

and the gateway in front of `shipped` (`via gateway`).

Three fp32 engines do not fit in this machine's 24 GB, so it runs in phases of two engines.
Throughput, phase 1: workloads (the base; one adapter; N adapters mixed, request i naming
adapter i mod N) on `shipped`, `vllm kernels` and `via gateway`, each round going over every
workload and target in turn, so drift hits all alike. Phase 2 replaces `vllm kernels` with
`max_loras>=N` and alternates it with `shipped` on the base, one adapter and the largest mix.
Phase 3 alternates `before` with `shipped` on the base and one adapter. A round is
`--requests` streamed chat requests from `--clients` closed-loop clients, each answer exactly
`--tokens` tokens (`ignore_eos`; the gateway's contract has no such field, so its answers may
end early and its tokens/s counts what it generated). Reported: output tokens/s, time to first
token p50/p99, and tokens/s as a ratio to the base on the same target.

First requests, one client at a time, each against a warm request just after it: an adapter
registered during the run (resolved, downloaded and loaded by that request), and a hot adapter
never requested before.

JSON on stdout and in benchmarks/results/serving.json, a chart beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from charts import grouped_bars  # noqa: E402
from gateway import free_port, start_gateway  # noqa: E402  (the gateway benchmark's helpers)

from gemlora.engine_token import engine_headers  # noqa: E402

SHIPPED_CONFIG = REPO / "configs/serve/demo.yaml"
PROMPT = "Write a short paragraph about lighthouses and the people who kept them."
LORA_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
HOT = 3  # hot adapters, each measured once on its first request
NEW = 3  # adapters registered during the run
ALIAS_TTL_S = 5.0
BEFORE = "before (bf16)"
REPORTED_SETTINGS = {"max_loras", "max_cpu_loras", "dtype", "hot_adapters"}


# --- adapters, registry, engines ---------------------------------------------------------------


def write_adapters(base: str, names: list[str], rank: int, out: Path) -> dict[str, Path]:
    """A PEFT adapter per name, with seeded random A and B matrices (B non-zero, so adapters
    differ from the base and from each other)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from gemlora.bases import resolve_base
    from gemlora.train.bases import build_model

    build_model("gemma-3-270m")  # the W4A16 base's adapters are trained on the bf16 model
    location = resolve_base("gemma-3-270m").location
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.bfloat16)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS)
    adapted = get_peft_model(model, config)
    paths = {}
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        with torch.no_grad():
            for parameter_name, parameter in adapted.named_parameters():
                if "lora_" in parameter_name:
                    parameter.normal_(std=0.02)
        paths[name] = out / name
        adapted.save_pretrained(paths[name])
    return paths


def register(registry, base: str, adapters: dict[str, Path]) -> None:
    from gemlora.adapters import AdapterMetadata

    for name, path in adapters.items():
        registry.register(path, name, AdapterMetadata(base=base), alias="champion")


def engine_configs(shipped, largest_mix: int) -> dict[str, tuple[object, dict[str, str]]]:
    """label -> (EngineConfig, extra environment)."""
    roomy = largest_mix + HOT + 1
    wide = {"max_loras": roomy, "max_cpu_loras": max(roomy, shipped.max_cpu_loras)}
    hot = {"hot_adapters": ["bench-hot-*@champion"]}
    return {
        "shipped": (shipped.model_copy(update={"port": free_port()}), {}),
        f"max_loras>={largest_mix}": (
            shipped.model_copy(update={"port": free_port(), **wide, **hot}),
            {},
        ),
        "vllm kernels": (
            shipped.model_copy(update={"port": free_port()}),
            {"GEMLORA_CPU_LORA": "vllm"},
        ),
        BEFORE: (
            shipped.model_copy(update={"port": free_port(), "dtype": "bfloat16", "max_loras": 4}),
            {"GEMLORA_CPU_LORA": "vllm"},
        ),
    }


def start_engines(configs: dict, registry_config, log_dir: Path) -> dict:
    from gemlora.serve.engine import start_engine

    engines = {}
    for label, (config, env) in configs.items():
        print(f"starting the {label!r} engine (logs in {log_dir}) ...", file=sys.stderr)
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            log = log_dir / f"engine-{len(engines)}.log"
            engines[label] = start_engine(config, log, registry=registry_config)
        finally:
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.update({key: value})
    return engines


# --- requests ----------------------------------------------------------------------------------


def chat_body(model: str, tokens: int, stream: bool, fixed_length: bool = True) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "top_p": 1.0,
        "stream": stream,
    }
    if fixed_length:
        body["ignore_eos"] = True  # vLLM's extra parameter: every answer is `tokens` long
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def stream_one(client: httpx.AsyncClient, target: dict, model: str, tokens: int) -> dict:
    started = time.perf_counter()
    first, generated = None, 0
    body = chat_body(model, tokens, stream=True, fixed_length=target["fixed_length"])
    url = target["url"]
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{model} at {url}: {response.status_code} {await response.aread()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            if first is None and choices and choices[0]["delta"].get("content"):
                first = time.perf_counter() - started
            if event.get("usage"):
                generated = event["usage"]["completion_tokens"]
    return {"ttft": first, "tokens": generated}


async def run_round(target, models: list[str], clients: int, requests: int, tokens: int) -> dict:
    """`requests` requests from `clients` closed-loop clients, the i-th naming models[i % N]."""
    results: list[dict] = []
    queue = list(range(requests))
    async with httpx.AsyncClient(timeout=600, headers=target["headers"]) as client:

        async def worker() -> None:
            while queue:
                index = queue.pop(0)
                model = models[index % len(models)]
                results.append(await stream_one(client, target, model, tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"results": results, "seconds": elapsed}


async def one_request_s(url: str, model: str, tokens: int) -> float:
    async with httpx.AsyncClient(timeout=600, headers=engine_headers(url)) as client:
        started = time.perf_counter()
        response = await client.post(
            f"{url}/v1/chat/completions", json=chat_body(model, tokens, stream=False)
        )
        response.raise_for_status()
        return time.perf_counter() - started


# --- measurements ------------------------------------------------------------------------------


async def throughput(targets: dict, workloads: dict, options) -> dict:
    """Every workload on every target, rounds alternating over both: drift and the load of
    other processes hit every figure alike, so ratios across targets and workloads compare."""
    runs = {
        workload: {label: {"results": [], "seconds": 0.0} for label in targets}
        for workload in workloads
    }
    for target in targets.values():  # warm every adapter of every workload on every target
        for models in workloads.values():
            await run_round(target, models, options.clients, len(models), 2)
    for _ in range(options.rounds):
        for workload, models in workloads.items():
            for label, target in targets.items():
                run = await run_round(
                    target, models, options.clients, options.requests, options.tokens
                )
                runs[workload][label]["results"] += run["results"]
                runs[workload][label]["seconds"] += run["seconds"]
    report = {
        workload: {
            label: summarise(run, options.tokens, targets[label]["fixed_length"])
            for label, run in by_label.items()
        }
        for workload, by_label in runs.items()
    }
    for workload, figures in report.items():
        for label, row in figures.items():
            base_rate = report["base"][label]["tokens_per_s"]
            row["ratio_to_base"] = round(row["tokens_per_s"] / base_rate, 3)
        print(workload, json.dumps(figures), file=sys.stderr)
    return report


def summarise(run: dict, tokens: int, fixed_length: bool) -> dict:
    generated = [result["tokens"] for result in run["results"]]
    if fixed_length and any(count != tokens for count in generated):
        raise RuntimeError(f"answers of {set(generated)} tokens, expected {tokens} (ignore_eos)")
    ttft = [result["ttft"] for result in run["results"]]
    return {
        "tokens_per_s": round(sum(generated) / run["seconds"], 2),
        "ttft_p50_s": round(percentile(ttft, 50), 3),
        "ttft_p99_s": round(percentile(ttft, 99), 3),
        "requests": len(generated),
    }


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def first_requests(engine, registry, base: str, new_adapters: dict, options) -> dict:
    """First request against the warm one right after it: adapters registered now, and hot
    adapters never requested before."""
    tokens = 8
    cold = []
    for name, path in new_adapters.items():
        await asyncio.to_thread(register, registry, base, {name: path})
        first = await one_request_s(engine.url, f"{name}@champion", tokens)
        warm = await one_request_s(engine.url, f"{name}@champion", tokens)
        cold.append({"first_s": first, "warm_s": warm})
    hot = []
    for index in range(HOT):
        model = f"bench-hot-{index}@champion"
        first = await one_request_s(engine.url, model, tokens)
        warm = await one_request_s(engine.url, model, tokens)
        hot.append({"first_s": first, "warm_s": warm})
    return {"tokens": tokens, "newly_registered": describe(cold), "hot": describe(hot)}


def describe(samples: list[dict]) -> dict:
    extra = [s["first_s"] - s["warm_s"] for s in samples]
    ratio = [s["first_s"] / s["warm_s"] for s in samples]
    return {
        "extra_s_median": round(statistics.median(extra), 3),
        "first_over_warm_median": round(statistics.median(ratio), 3),
        "samples": [{k: round(v, 3) for k, v in s.items()} for s in samples],
    }


def chart(report: dict, path: Path) -> None:
    workloads = list(report)
    labels = list(report[workloads[0]])
    series = {
        label: [report[workload][label]["tokens_per_s"] for workload in workloads]
        for label in labels
    }
    title = "vLLM on this CPU: base, one adapter, N adapters mixed"
    grouped_bars(path, workloads, series, "output tokens/s", title)


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per workload")
    parser.add_argument("--requests", type=int, default=32, help="requests per round")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument("--mixed", default="2,4,8,16", help="adapter counts of mixed workloads")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the adapters")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/serving.json")
    options = parser.parse_args()
    mixed = [int(count) for count in options.mixed.split(",")]
    report = asyncio.run(run(options, mixed))
    text = json.dumps(report, indent=2)
    print(text)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text + "\n")
    chart(report["throughput"], options.out.with_suffix(".png"))
    print(f"wrote {options.out} and {options.out.with_suffix('.png')}", file=sys.stderr)


async def run(options, mixed: list[int]) -> dict:
    """Two phases, two engines alive at a time (three fp32 engines of 7-8 GB each do not fit
    this 24 GB machine): 1. shipped vs vLLM's kernels vs the gateway over every workload; 2.
    shipped vs `max_loras>=N` on the largest mix, and the first requests."""
    from gemlora.adapters import AdapterRegistry, RegistryConfig
    from gemlora.adapters.mlflow_server import start_mlflow_server
    from gemlora.serve.auth import new_key
    from gemlora.serve.config import load_serve_config
    from gemlora.train.bases import build_model

    shipped = load_serve_config(SHIPPED_CONFIG).engine
    base = shipped.base
    build_model(base)
    configs = engine_configs(shipped, max(mixed))
    wide = f"max_loras>={max(mixed)}"
    workloads = {"base": [base], "1 adapter": ["bench-0@champion"]}
    for count in mixed:
        workloads[f"{count} mixed"] = [f"bench-{i}@champion" for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="gemlora-bench-serving-") as scratch_dir:
        scratch = Path(scratch_dir)
        names = [f"bench-{i}" for i in range(max(mixed))]
        names += [f"bench-hot-{i}" for i in range(HOT)] + [f"bench-new-{i}" for i in range(NEW)]
        paths = write_adapters(base, names, options.rank, scratch / "adapters")
        new = {n: p for n, p in paths.items() if n.startswith("bench-new")}
        server = start_mlflow_server(scratch / "mlflow", port=free_port())
        registry_config = RegistryConfig(
            tracking_uri=server.url, cache_dir=scratch / "cache", alias_ttl_s=ALIAS_TTL_S
        )
        registry = AdapterRegistry(registry_config.model_copy(update={"cache_dir": scratch / "c"}))
        register(registry, base, {n: p for n, p in paths.items() if n not in new})
        engines: dict = {}
        gateway = None
        try:
            phase_one = {label: configs[label] for label in ("shipped", "vllm kernels")}
            engines |= start_engines(phase_one, registry_config, scratch)
            key = new_key()
            gateway, gateway_url = start_gateway(engines["shipped"].url, key, scratch, base)
            targets = {label: engine_target(engine) for label, engine in engines.items()}
            # The gateway's contract (the hosted reference's) has no `ignore_eos`: its answers
            # may end early, and its tokens/s counts the tokens it did generate.
            targets["via gateway"] = {
                "url": gateway_url,
                "headers": {"Authorization": f"Bearer {key}"},
                "fixed_length": False,
            }
            results = await throughput(targets, workloads, options)

            engines.pop("vllm kernels").stop()
            engines |= start_engines({wide: configs[wide]}, registry_config, scratch)
            firsts = await first_requests(engines[wide], registry, base, new, options)
            print("first requests", json.dumps(firsts), file=sys.stderr)
            targets = {label: engine_target(engine) for label, engine in engines.items()}
            phase_two = ("base", "1 adapter", f"{max(mixed)} mixed")
            largest = {name: workloads[name] for name in phase_two}
            slots = await throughput(targets, largest, options)

            engines.pop(wide).stop()
            engines |= start_engines({BEFORE: configs[BEFORE]}, registry_config, scratch)
            targets = {label: engine_target(engine) for label, engine in engines.items()}
            before = {name: workloads[name] for name in ("base", "1 adapter")}
            against_before = await throughput(targets, before, options)
        except BaseException:
            keep_logs(scratch, options.out.parent / "serving-logs")
            raise
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(timeout=30)
            for engine in engines.values():
                engine.stop()
            server.stop()
    return {
        "base": base,
        "shipped_config": str(SHIPPED_CONFIG.relative_to(REPO)),
        "engines": {
            label: config.model_dump(include=REPORTED_SETTINGS) | {"env": env}
            for label, (config, env) in configs.items()
        },
        "options": {k: v for k, v in vars(options).items() if k != "out"},
        "throughput": results,
        "max_loras": slots,
        "before": against_before,
        "shipped_over_before": {
            workload: round(row["shipped"]["tokens_per_s"] / row[BEFORE]["tokens_per_s"], 2)
            for workload, row in against_before.items()
        },
        "first_requests": firsts,
    }


def keep_logs(scratch: Path, to: Path) -> None:
    """The engines' and the gateway's logs, kept when a run fails (the scratch dir is not)."""
    to.mkdir(parents=True, exist_ok=True)
    for log in scratch.glob("*.log"):
        shutil.copy(log, to / log.name)
    print(f"the run failed; engine logs kept in {to}", file=sys.stderr)


def engine_target(engine) -> dict:
    return {"url": engine.url, "headers": engine.headers, "fixed_length": True}


if __name__ == "__main__":
    main()
