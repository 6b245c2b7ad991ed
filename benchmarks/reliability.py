"""Reliability under load and faults, through `gemlora serve` (supervised engine, local MLflow,
gateway) on loopback. Every loop is bounded in count and time.

    python benchmarks/reliability.py                 # or: make bench-reliability
    python benchmarks/reliability.py --soak-s 20 --clients 16 --fuzz 1000

Phases, one after the other, on one `gemlora serve`:

1. soak: `--clients` streaming clients over four adapters and the base for `--soak-s`: errors,
   hung streams (no byte for 120 s, or no end within 600 s), latency, and the memory (RSS) of
   the gateway and the engine at the start and the end;
2. engine SIGKILL mid-soak: every request it affects must end cleanly (503 with Retry-After, or
   a stream that ends with an error event and `data: [DONE]`); reported: time until requests
   succeed again against the engine's measured start-up time, and failures after that (0);
3. MLflow SIGKILL mid-soak: the adapters already resolved keep serving (0 errors) while the
   supervisor starts MLflow again;
4. disconnect storm: rounds of clients that hang up mid-stream or mid-request at full load,
   then a load-generating process SIGKILLed at full load; the engine must run and hold nothing
   within 5 s of the last one leaving;
5. fuzz: `--fuzz` generated request bodies (tests/gateway/chat_fuzz.py): 0 answers >= 500,
   and a valid request still answered after them;
6. hung engine mid-soak: the engine's API server SIGSTOPped (alive, not answering: a wedged
   process, a stuck GPU), never continued; reported: when the waiting requests ended and new
   ones got a 503 (the supervisor's probes, with the serve config's defaults), and when
   requests succeeded again (a new engine);
7. early pause: a fine-tuning job (the jobs API of the same `gemlora serve`) paused the moment
   it is `running`, while its worker still starts; reported: how long until it is `paused`
   (before its first step), and until it trains again once resumed.

`--phases soak,hung,...` runs some of them (names: soak, engine_kill, mlflow_kill, storm, fuzz,
hung, pause).

JSON on stdout and in benchmarks/results/reliability.json, a chart beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(REPO / "tests/gateway"))
from chat_fuzz import chat_requests, valid_request  # noqa: E402  (the fuzz test's generator)
from gateway import free_port, machine  # noqa: E402
from serving import register, write_adapters  # noqa: E402

from gemlora.engine_token import engine_headers  # noqa: E402

ADAPTERS = [f"soak-{i}" for i in range(4)]
# A stream counts as hung when no byte arrives for HUNG_S, or it has no end after STREAM_CAP_S.
# On a 2-core CPU a stream queued behind 60 others waits about a minute for its first token.
HUNG_S = 120.0
STREAM_CAP_S = 600.0
FREED_WITHIN_S = 5.0


# --- the server under test ---------------------------------------------------------------------


class Served:
    """`gemlora serve` on a generated config, in a scratch GEMLORA_HOME (the built bases linked)."""

    def __init__(self, base: str, scratch: Path) -> None:
        from gemlora.paths import models_dir

        self.base = base
        self.home = home = scratch / "home"
        home.mkdir()
        (home / "models").symlink_to(models_dir())
        self.ports = {name: free_port() for name in ("mlflow", "engine", "gateway")}
        self.url = f"http://127.0.0.1:{self.ports['gateway']}"
        self.engine_url = f"http://127.0.0.1:{self.ports['engine']}"
        self.mlflow_url = f"http://127.0.0.1:{self.ports['mlflow']}"
        config = {
            "engine": {"base": base, "port": self.ports["engine"], "max_num_seqs": 16},
            "registry": {"tracking_uri": self.mlflow_url, "alias_ttl_s": 5},
            "gateway": {"port": self.ports["gateway"], "auth": False},
            "jobs": {"dir": str(scratch / "jobs"), "poll_interval_s": 0.2},
        }
        path = scratch / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = scratch / "serve.log"
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gemlora.cli", "serve", str(path), "--no-auth"],
            env=dict(os.environ, GEMLORA_HOME=str(home)),
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_healthy(900)
        self.startup_s = time.monotonic() - started

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gemlora serve exited; log: {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"gemlora serve not healthy after {timeout_s:.0f} s")

    def group_of(self, marker: str, port: int) -> int:
        """The process group of the child whose command line has `marker` and `port`."""
        import psutil

        for process in psutil.process_iter(["cmdline"]):
            command = " ".join(process.info["cmdline"] or [])
            if marker in command and str(port) in command:
                return os.getpgid(process.pid)
        raise LookupError(f"no process with {marker!r} on port {port}")

    def kill_engine(self) -> None:
        engine = self.group_of("vllm.entrypoints.openai.api_server", self.ports["engine"])
        os.killpg(engine, signal.SIGKILL)

    def stop_engine(self) -> None:
        """SIGSTOP the engine's API server (it leads its process group): hung, not dead."""
        server = self.group_of("vllm.entrypoints.openai.api_server", self.ports["engine"])
        os.kill(server, signal.SIGSTOP)

    def kill_mlflow(self) -> None:
        os.killpg(self.group_of("mlflow server", self.ports["mlflow"]), signal.SIGKILL)

    def memory_mib(self) -> dict[str, float]:
        """RSS of the gateway (the `gemlora serve` process) and of the engine's process group."""
        import psutil

        engine_group = self.group_of("vllm.entrypoints.openai.api_server", self.ports["engine"])
        engine = sum(
            p.memory_info().rss for p in psutil.process_iter() if _in_group(p, engine_group)
        )
        gateway = psutil.Process(self.process.pid).memory_info().rss
        return {"gateway": round(gateway / 2**20, 1), "engine": round(engine / 2**20, 1)}

    def in_flight(self) -> float:
        headers = engine_headers(self.engine_url, self.home)
        text = httpx.get(f"{self.engine_url}/metrics", headers=headers, timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _in_group(process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group
    except (ProcessLookupError, PermissionError):
        return False


# --- clients -----------------------------------------------------------------------------------


async def stream_once(client: httpx.AsyncClient, url: str, model: str, tokens: int) -> dict:
    """One streamed request: `ok`, `clean_error` (a 503 or an error event then [DONE]),
    `failed` (anything else) or `hung`; how long it took and when its first event came."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about lighthouses."}],
        "max_tokens": tokens,
        "stream": True,
    }
    started = time.monotonic()
    outcome, retry_after, first = "failed", 0.0, [None]
    try:
        async with asyncio.timeout(STREAM_CAP_S):
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                if response.status_code == 503:
                    await response.aread()
                    retry_after = float(response.headers.get("retry-after", 1))
                    outcome = "clean_error" if "error" in response.json() else "failed"
                elif response.status_code == 200:
                    outcome = await _read_events(response, first)
    except (TimeoutError, httpx.ReadTimeout):
        outcome = "hung"
    except httpx.HTTPError:
        outcome = "failed"
    ended = time.monotonic()
    ttft = None if first[0] is None else first[0] - started
    return {"outcome": outcome, "s": ended - started, "ttft_s": ttft, "retry_after": retry_after}


async def _read_events(response: httpx.Response, first: list) -> str:
    errored = False
    async for line in response.aiter_lines():
        if first[0] is None and line.startswith("data: "):
            first[0] = time.monotonic()
        if line == "data: [DONE]":
            return "clean_error" if errored else "ok"
        if line.startswith("data: ") and '"error"' in line:
            errored = True
    return "failed"  # the stream ended without [DONE]


async def soak(
    url: str,
    models: list[str],
    clients: int,
    seconds: float,
    tokens: int,
    fault=None,
    fault_at_s: float = 10,
) -> dict:
    """`clients` closed-loop streaming clients over `models` for `seconds`; `fault()` runs once
    at `fault_at_s`. A client told to retry waits Retry-After (at most 5 s), as clients should."""
    records: list[dict] = []
    deadline = time.monotonic() + seconds
    fault_time: list[float] = []

    async def client_loop(index: int, client: httpx.AsyncClient) -> None:
        model = models[index % len(models)]
        while time.monotonic() < deadline:
            record = await stream_once(client, url, model, tokens)
            records.append(record | {"end": time.monotonic(), "model": model})
            if record["outcome"] == "clean_error":
                await asyncio.sleep(min(record["retry_after"] or 1.0, 5.0))

    async def injector() -> None:
        await asyncio.sleep(fault_at_s)
        fault_time.append(time.monotonic())
        await asyncio.to_thread(fault)

    limits = httpx.Limits(max_connections=clients + 8)
    timeout = httpx.Timeout(30, read=HUNG_S)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        tasks = [client_loop(i, client) for i in range(clients)]
        if fault is not None:
            tasks.append(injector())
        await asyncio.gather(*tasks)
    return summarise_soak(records, fault_time[0] if fault_time else None)


def summarise_soak(records: list[dict], fault_time: float | None) -> dict:
    outcomes = Counter(r["outcome"] for r in records)
    ok = [r for r in records if r["outcome"] == "ok"]
    summary = {
        "requests": len(records),
        "outcomes": dict(outcomes),
        "latency_s": _percentiles([r["s"] for r in ok]),
        "first_event_s": _percentiles([r["ttft_s"] for r in ok if r["ttft_s"] is not None]),
    }
    if fault_time is not None:
        after = [r for r in records if r["end"] > fault_time]
        recovered = min((r["end"] for r in after if r["outcome"] == "ok"), default=None)
        summary["recovered_after_s"] = (
            None if recovered is None else round(recovered - fault_time, 1)
        )
        if recovered is not None:
            late = [r for r in after if r["end"] > recovered and r["outcome"] != "ok"]
            summary["failures_after_recovery"] = len(late)
        refused = min((r["end"] for r in after if r["outcome"] == "clean_error"), default=None)
        summary["first_clean_error_after_s"] = (
            None if refused is None else round(refused - fault_time, 1)
        )
    return summary


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)

    def at(quantile: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(quantile * len(ordered)))], 2)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 2)}


async def hang_up_at_load(url: str, engine_in_flight, models: list[str], clients: int) -> None:
    """`clients` requests at once (odd ones streamed) that hang up together once the engine
    holds as many as it runs at once (or after 20 s): streams mid-answer, the rest mid-request."""
    body = valid_request(models[0]) | {"max_tokens": 400, "stop": []}

    chat = f"{url}/v1/chat/completions"

    async def read_stream(client: httpx.AsyncClient, model: str) -> None:
        async with client.stream("POST", chat, json=body | {"model": model, "stream": True}) as r:
            async for _ in r.aiter_lines():
                pass

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        requests = []
        for i in range(clients):
            model = models[i % len(models)]
            send = read_stream(c, model) if i % 2 else c.post(chat, json=body | {"model": model})
            requests.append(asyncio.create_task(send))
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(engine_in_flight) < 16 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for request in requests:
            request.cancel()
        await asyncio.gather(*requests, return_exceptions=True)


def killed_load_generator(url: str, models: list[str], clients: int) -> None:
    """The incident of issue 17: a load-generating process SIGKILLed mid-run (its sockets are
    closed by the kernel, not by the client)."""
    asyncio.run(hang_up_at_load(url, lambda: 0.0, models, clients))  # never hangs up itself


def disconnect_storm(served: Served, models: list[str], clients: int, rounds: int) -> dict:
    """`rounds` rounds of `clients` requests that hang up together at full load, then one round
    from a separate process that is SIGKILLed at full load; after each, how long the engine
    takes to run and hold nothing."""
    import multiprocessing

    def seconds_until_freed() -> float:
        left = time.monotonic()
        while served.in_flight() > 0 and time.monotonic() - left < 180:
            time.sleep(0.1)
        return round(time.monotonic() - left, 2)

    freed_s = []
    for _ in range(rounds):
        asyncio.run(hang_up_at_load(served.url, served.in_flight, models, clients))
        freed_s.append(seconds_until_freed())
    generator = multiprocessing.get_context("spawn").Process(
        target=killed_load_generator, args=(served.url, models, clients)
    )
    generator.start()
    deadline = time.monotonic() + 60
    while served.in_flight() < 16 and time.monotonic() < deadline:
        time.sleep(0.1)
    generator.kill()
    generator.join()
    killed_freed_s = seconds_until_freed()
    return {
        "rounds": rounds,
        "clients": clients,
        "freed_after_s": freed_s,
        "killed_client_process_freed_after_s": killed_freed_s,
        "all_freed_within_5_s": all(s <= FREED_WITHIN_S for s in [*freed_s, killed_freed_s]),
    }


def fuzz(url: str, count: int, base: str) -> dict:
    """`count` generated bodies, one at a time; then a valid request."""
    from hypothesis import HealthCheck, given, settings

    statuses: Counter[int] = Counter()
    server_errors: list[dict] = []
    with httpx.Client(timeout=60) as client:

        @settings(
            max_examples=count,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(chat_requests(base))
        def send(body: dict) -> None:
            response = client.post(f"{url}/v1/chat/completions", json=body)
            statuses[response.status_code] += 1
            if response.status_code >= 500 and len(server_errors) < 10:
                server_errors.append({"body": body, "answer": response.text[:300]})

        send()
        final = client.post(f"{url}/v1/chat/completions", json=valid_request(base))
    return {
        "requests": sum(statuses.values()),
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "server_errors": server_errors,
        "valid_request_after": final.status_code,
    }


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--base",
        default="gemma-3-270m-w4a16",
        choices=["gemma-3-270m-w4a16", "gemma-3-270m"],
        help="the served base (the demo's by default)",
    )
    parser.add_argument("--clients", type=int, default=64, help="concurrent streaming clients")
    parser.add_argument("--soak-s", type=float, default=60, help="seconds of each soak")
    parser.add_argument("--tokens", type=int, default=16, help="max_tokens of soak requests")
    parser.add_argument("--storm-rounds", type=int, default=3, help="disconnect storm rounds")
    parser.add_argument("--fuzz", type=int, default=10_000, help="generated requests")
    parser.add_argument(
        "--phases",
        type=lambda text: text.split(","),
        default=list(PHASES),
        help=f"comma-separated, of: {','.join(PHASES)}",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/reliability.json")
    options = parser.parse_args()
    report = run(options)
    text = json.dumps(report, indent=2)
    print(text)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text + "\n")
    chart(report, options.out.with_suffix(".png"))
    print(f"wrote {options.out} and {options.out.with_suffix('.png')}", file=sys.stderr)


def run(options) -> dict:
    from gemlora.adapters import AdapterRegistry, RegistryConfig
    from gemlora.train.bases import build_model

    build_model(options.base)
    with tempfile.TemporaryDirectory(prefix="gemlora-bench-reliability-") as scratch_dir:
        scratch = Path(scratch_dir)
        adapters = write_adapters(options.base, ADAPTERS, 8, scratch / "adapters")
        served = Served(options.base, scratch)
        try:
            registry_config = RegistryConfig(tracking_uri=served.mlflow_url, cache_dir=scratch)
            register(AdapterRegistry(registry_config), options.base, adapters)
            base_name = httpx.get(f"{served.url}/v1/models").json()["data"][0]["id"]
            report = phases(served, options, [base_name, *ADAPTERS])
        except BaseException:
            print(f"the run failed; serve log: {served.log_path}", file=sys.stderr)
            (options.out.parent / "reliability-serve.log").write_bytes(served.log_path.read_bytes())
            raise
        finally:
            served.stop()
    return {"base": options.base, "machine": machine(), "options": _options(options)} | report


PHASES = ("soak", "engine_kill", "mlflow_kill", "storm", "fuzz", "hung", "pause")


def phases(served: Served, options, models: list[str]) -> dict:
    """The phases in order (those in `options.phases`); `models`: the base's served name, then
    the adapters."""
    report = {}

    def soak_with(fault=None, seconds: float = options.soak_s) -> dict:
        load = soak(served.url, models, options.clients, seconds, options.tokens, fault)
        return asyncio.run(load)

    def phase(name: str, measure) -> None:
        if name in options.phases:
            report[name] = measure()
            shown = {k: v for k, v in report[name].items() if k != "server_errors"}
            print(name, json.dumps(shown), file=sys.stderr)

    def steady() -> dict:
        memory_before = served.memory_mib()
        result = soak_with()
        return result | {"memory_mib": {"start": memory_before, "end": served.memory_mib()}}

    def after_restart(fault, detection_s: float = 0) -> dict:
        # Long enough to see the engine start again and serve a while after.
        result = soak_with(fault, 10 + detection_s + served.startup_s + options.soak_s)
        served.wait_healthy(900)
        return result | {"engine_startup_s": round(served.startup_s, 1)}

    phase("soak", steady)
    phase("engine_kill", lambda: after_restart(served.kill_engine))
    phase("mlflow_kill", lambda: soak_with(served.kill_mlflow))
    phase("storm", lambda: disconnect_storm(served, models, options.clients, options.storm_rounds))
    phase("fuzz", lambda: fuzz(served.url, options.fuzz, models[0]))
    # the default probes find a hung engine in 13-16 s (serve/supervisor.py)
    phase("hung", lambda: after_restart(served.stop_engine, detection_s=16))
    phase("pause", lambda: early_pause(served.url, models[0]))
    return report


def early_pause(url: str, base: str) -> dict:
    """A job on the served base, paused as soon as it is `running` (its worker still imports,
    reads data, loads the model), then resumed and cancelled after its first step."""
    from openai import OpenAI

    from gemlora.data.sample_sets import write_samples

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    with tempfile.TemporaryDirectory(prefix="gemlora-bench-pause-") as samples:
        write_samples(Path(samples))
        data = (Path(samples) / "style-chat" / "train.jsonl").read_bytes()
    upload = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    settings = {
        "lora": {"r": 4, "alpha": 8},
        "training": {"max_steps": 50, "save_steps": 1000},
        "eval": {"generation_examples": 0},
    }
    job = client.fine_tuning.jobs.create(
        model=base, training_file=upload.id, extra_body={"gemlora": settings}
    )
    wait_for_job(client, job.id, lambda j: j.status == "running")
    asked = time.monotonic()
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for_job(client, job.id, lambda j: j.status == "paused")
    paused_s = time.monotonic() - asked
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    before_first_step = any("before training its first step" in m for m in events)
    resumed = time.monotonic()
    client.fine_tuning.jobs.resume(job.id)
    wait_for_job(client, job.id, lambda j: j.status == "running" and _trained_a_step(client, j.id))
    trained_s = time.monotonic() - resumed
    client.fine_tuning.jobs.cancel(job.id)
    return {
        "paused_after_s": round(paused_s, 1),
        "paused_before_its_first_step": before_first_step,
        "same_mlflow_run_on_resume": paused.integrations[0].mlflow["run_id"]
        == client.fine_tuning.jobs.retrieve(job.id).integrations[0].mlflow["run_id"],
        "resumed_to_first_step_s": round(trained_s, 1),
    }


def _trained_a_step(client, job_id: str) -> bool:
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    return any(event.message.startswith("Step ") for event in events)


def wait_for_job(client, job_id: str, done, timeout_s: float = 600):
    """Poll the job until `done(job)`; fails on a final status or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if done(job):
            return job
        if job.status in ("succeeded", "failed", "cancelled"):
            raise RuntimeError(f"job {job_id} ended {job.status}: {job.error}")
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} not there after {timeout_s:.0f} s")


def _options(options) -> dict:
    return {k: v for k, v in vars(options).items() if k != "out"}


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "soak": "soak",
        "engine_kill": "engine SIGKILL",
        "mlflow_kill": "MLflow SIGKILL",
        "hung": "engine SIGSTOP",
    }
    phases_ = {key: label for key, label in labels.items() if key in report}
    outcomes = ("ok", "clean_error", "failed", "hung")
    figure, axis = plt.subplots(figsize=(8, 4))
    bottoms = [0] * len(phases_)
    for outcome in outcomes:
        values = [report[key]["outcomes"].get(outcome, 0) for key in phases_]
        axis.bar(list(phases_.values()), values, bottom=bottoms, label=outcome)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    axis.set_ylabel("requests")
    axis.set_title(f"{report['options']['clients']} streaming clients, {report['base']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
