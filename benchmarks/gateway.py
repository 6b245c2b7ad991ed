"""How much latency the gateway adds: the same requests sent to vLLM directly and through the
gateway, in the same run, at 1, 8 and 32 concurrent clients.

    python benchmarks/gateway.py                   # or: make bench-gateway
    python benchmarks/gateway.py --requests 100 --out gateway.json

Starts vLLM on the tiny multimodal Gemma 3 (the fastest engine here) and the gateway as its own
process (uvicorn, API keys on, access log on: as deployed). For each concurrency it runs
closed-loop clients against each target, alternating direct and gateway rounds so drift hits
both alike, and measures:

- non-streaming latency: request sent -> whole answer read (4 tokens: the gateway's cost is
  per request, and short answers keep vLLM's own variation from hiding it);
- time to first token: request sent -> first streamed event with generated text.

It prints one JSON object: p50/p99 of each, the gateway's overhead at p50 and p99 (gateway
minus direct, ms) and the throughput ratio (gateway requests/s over direct requests/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BASE = "tiny-gemma-3-mm"
CONCURRENCY = (1, 8, 32)
ROUNDS = 8  # direct and gateway alternate, ROUNDS times each, so that drift hits both alike
MAX_TOKENS = 4
FIRST_TOKEN = b'"delta":{"content":'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_body(stream: bool, max_tokens: int) -> dict:
    return {
        "model": BASE,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "top_p": 1.0,  # given, so the gateway adds no default: both paths do the same work
        "stream": stream,
    }


# --- the two kinds of request ----------------------------------------------------------------


async def complete(client: httpx.AsyncClient, url: str, body: bytes) -> float:
    started = time.perf_counter()
    response = await client.post(url, content=body)
    response.raise_for_status()
    return time.perf_counter() - started


async def first_token(client: httpx.AsyncClient, url: str, body: bytes) -> float:
    started = time.perf_counter()
    ttft = None
    async with client.stream("POST", url, content=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            if ttft is None and FIRST_TOKEN in chunk:
                ttft = time.perf_counter() - started
    if ttft is None:
        raise RuntimeError("the stream had no generated text")
    return ttft


async def run_round(url: str, key: str, stream: bool, clients: int, requests: int) -> dict:
    """`requests` requests from `clients` closed-loop clients; latencies and requests/s."""
    body = json.dumps(chat_body(stream, max_tokens=MAX_TOKENS)).encode()
    measure = first_token if stream else complete
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    samples: list[float] = []
    remaining = requests
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                samples.append(await measure(client, url, body))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"samples": samples, "rps": len(samples) / elapsed}


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000


def summarise(direct: dict, gateway: dict) -> dict:
    result = {}
    for name, runs in (("direct", direct), ("gateway", gateway)):
        result[name] = {
            "p50_ms": round(percentile(runs["samples"], 50), 2),
            "p99_ms": round(percentile(runs["samples"], 99), 2),
            "requests_per_s": round(runs["rps"], 2),
            "n": len(runs["samples"]),
        }
    result["overhead_p50_ms"] = round(result["gateway"]["p50_ms"] - result["direct"]["p50_ms"], 2)
    result["overhead_p99_ms"] = round(result["gateway"]["p99_ms"] - result["direct"]["p99_ms"], 2)
    result["throughput_ratio"] = round(gateway["rps"] / direct["rps"], 3)
    return result


async def measure_all(direct_url: str, gateway_url: str, key: str, requests: int) -> dict:
    path = "/v1/chat/completions"
    results = {}
    for clients in CONCURRENCY:
        for stream, label in ((False, "latency"), (True, "ttft")):
            per_round = max(requests // ROUNDS, clients * 2)
            # Warm both paths (connections, caches) before measuring.
            for url in (direct_url, gateway_url):
                await run_round(url + path, key, stream, clients, clients * 2)
            runs = {"direct": {"samples": [], "time": 0.0}, "gateway": {"samples": [], "time": 0.0}}
            for _ in range(ROUNDS):
                for name, url in (("direct", direct_url), ("gateway", gateway_url)):
                    run = await run_round(url + path, key, stream, clients, per_round)
                    runs[name]["samples"] += run["samples"]
                    runs[name]["time"] += len(run["samples"]) / run["rps"]
            for run in runs.values():
                run["rps"] = len(run["samples"]) / run["time"]
            results[f"{label}_c{clients}"] = summarise(runs["direct"], runs["gateway"])
            print(
                f"{label} c={clients}: {json.dumps(results[f'{label}_c{clients}'])}",
                file=sys.stderr,
            )
    return results


# --- the processes ---------------------------------------------------------------------------


def serve_gateway(engine_url: str, port: int, base: str = BASE) -> None:
    """The child process: the gateway as `gemlora serve` runs it (keys from $GEMLORA_API_KEYS,
    access log on)."""
    from gemlora.serve.gateway import GatewayConfig, GatewaySettings, run_gateway

    run_gateway(GatewaySettings(GatewayConfig(port=port), engine_url=engine_url, base=base))


def start_gateway(
    engine_url: str, key: str, log_dir: Path, base: str = BASE
) -> tuple[subprocess.Popen, str]:
    """The gateway in its own process in front of `engine_url`, accepting `key`; its URL."""
    from gemlora.serve.auth import hash_key

    port = free_port()
    keys = {"keys": [{"id": "bench", "sha256": hash_key(key), "requests_per_minute": None}]}
    env = dict(os.environ, GEMLORA_API_KEYS=json.dumps(keys))
    log = (log_dir / "gateway.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-gateway", engine_url, str(port), base],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # imports take long on 2 busy cores
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"the gateway did not start; log: {log_dir / 'gateway.log'}")


def machine() -> dict:
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=200, help="Requests per target and setting."
    )
    parser.add_argument("--out", type=Path, help="Also write the JSON here.")
    parser.add_argument("--engine-url", help="Use a running engine serving tiny-gemma-3-mm.")
    parser.add_argument(
        "--serve-gateway", nargs=3, metavar=("ENGINE_URL", "PORT", "BASE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(args.serve_gateway[0], int(args.serve_gateway[1]), args.serve_gateway[2])
        return

    from gemlora.serve.auth import new_key
    from gemlora.serve.engine import EngineConfig, start_engine
    from gemlora.train.bases import build_model

    log_dir = Path(tempfile.mkdtemp(prefix="gemlora-bench-"))
    engine = None
    if args.engine_url is None:
        build_model(BASE)
        print(f"starting vLLM on {BASE} (1-3 minutes; logs in {log_dir}) ...", file=sys.stderr)
        config = EngineConfig(base=BASE, port=free_port(), max_num_seqs=32)
        engine = start_engine(config, log_dir / "engine.log")
    engine_url = args.engine_url or engine.url
    key = new_key()
    gateway, gateway_url = start_gateway(engine_url, key, log_dir)
    try:
        results = asyncio.run(measure_all(engine_url, gateway_url, key, args.requests))
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        if engine is not None:
            engine.stop()
    report = {
        "benchmark": "gateway overhead",
        "engine": BASE,
        "requests_per_setting": args.requests,
        "machine": machine(),
        "target_overhead_p50_ms": 2.0,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
