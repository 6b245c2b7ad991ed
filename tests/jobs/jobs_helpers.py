"""Helpers for the fine-tuning jobs tests: gateways with the jobs API on a store, sample data
as uploads, fast training settings for the tiny multimodal base, and waiting on jobs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from openai import OpenAI

# The gateway tests' helpers (a gateway served in-process, ports, the loopback image server).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_helpers import BASE, GatewayServer, free_port

from gemlora.serve.gateway import GatewayConfig, GatewaySettings
from gemlora.serve.jobs import JobsConfig

__all__ = ["BASE", "GatewayServer", "free_port"]

# Fast training on tiny-gemma-3-mm: a few steps, checkpoints every 2, a short generation eval.
TINY_TRAINING = {
    "lora": {"r": 4, "alpha": 8},
    "training": {"max_steps": 4, "save_steps": 2, "lr": 1e-3},
    "eval": {"generation_examples": 2, "max_new_tokens": 4},
    "output": {"system_metrics_interval_s": 1},
}


def tiny_settings(**training) -> dict:
    """TINY_TRAINING with `training` fields replaced, for the request's `gemlora` field."""
    settings = json.loads(json.dumps(TINY_TRAINING))
    settings["training"].update(training)
    return settings


def jobs_gateway(
    store: Path,
    engine_url: str,
    registry,
    keys,
    config: GatewayConfig | None = None,
    dns_resolver=None,
    **jobs,
) -> GatewayServer:
    """A gateway for the tiny multimodal base with the jobs API on `store`."""
    settings = GatewaySettings(
        config or GatewayConfig(models_cache_s=0),
        engine_url=engine_url,
        base=BASE,
        registry=registry,
        keys=keys,
        dns_resolver=dns_resolver,
        jobs=JobsConfig(dir=store, poll_interval_s=0.2, stop_timeout_s=10, **jobs),
    )
    return GatewayServer(settings, free_port())


def client_for(server: GatewayServer, key: str) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def inline_jsonl(path: Path, count: int | None = None) -> bytes:
    """The first `count` examples of a dataset as OpenAI JSONL with its images inline (data
    URLs), as a client uploads a dataset whose images are local files."""
    from gemlora.data import read_dataset
    from gemlora.serve.jobs.files import openai_record

    examples = read_dataset(path).examples[:count]
    return "".join(json.dumps(openai_record(e)) + "\n" for e in examples).encode()


def upload_shapes(client: OpenAI, samples: Path, train: int = 16, held_out: int = 4) -> list:
    """`train` training and `held_out` validation examples of shapes-vqa, images inline."""
    directory = samples / "shapes-vqa"
    files = []
    for name, count in (("train", train), ("eval", held_out)):
        if not count:
            continue
        data = inline_jsonl(directory / f"{name}.jsonl", count)
        files.append(client.files.create(file=(f"{name}.jsonl", data), purpose="fine-tune"))
    return files


def jsonl(*records) -> bytes:
    """Lines of a JSONL file: dicts are dumped, strings kept as they are (broken lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return ("\n".join(lines) + "\n").encode()


def wait_for(client: OpenAI, job_id: str, *statuses: str, timeout_s: float = 240):
    """Poll the job until it is in one of `statuses`; fails on another final status."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        final = {"succeeded", "failed", "cancelled"}
        assert job.status not in final, f"job ended {job.status}: {job.error}"
        assert time.monotonic() < deadline, f"job still {job.status} after {timeout_s:.0f} s"
        time.sleep(0.5)


def wait_for_event(client: OpenAI, job_id: str, text: str, timeout_s: float = 240) -> None:
    """Poll the job's events until one message contains `text`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)]
        if any(text in message for message in messages):
            return
        time.sleep(0.5)
    raise AssertionError(f"no event with {text!r} after {timeout_s:.0f} s: {messages}")


def messages_of(client: OpenAI, job_id: str) -> list[str]:
    """Every event message, oldest first."""
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    return [event.message for event in reversed(events)]
