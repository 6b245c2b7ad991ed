"""Clients that leave free the engine, under mixed-adapter load: 12 clients over four adapters
and the base (more than the engine's 8 sequences, so some wait for a slot), half streaming and
hung up on mid-answer, half non-streaming and hung up on mid-request, once the engine holds 8 of
them. Within 5 s of the last client leaving the engine runs and holds nothing, whether
the clients came through the gateway or talked to vLLM directly."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from gateway_helpers import BASE, engine_metric, save_tiny_adapter

from gemlora.adapters import AdapterMetadata
from gemlora.engine_token import engine_headers

pytestmark = pytest.mark.engine

CLIENTS = 12
LONG = {"max_tokens": 900, "stop": [], "temperature": 0}  # far longer than the test waits


@pytest.fixture(scope="module")
def four_adapters(registry, built_models, gateway, keys, tmp_path_factory) -> list[str]:
    """Four registered adapters, each already loaded by one request, so that the dropped
    clients' requests all reach the engine at once."""
    out, suffix = tmp_path_factory.mktemp("disconnect-adapters"), uuid.uuid4().hex[:6]
    names = [f"drop-{i}-{suffix}" for i in range(4)]
    for seed, name in enumerate(names, start=31):
        adapter = save_tiny_adapter(built_models[BASE], out / name, seed=seed)
        registry.register(adapter, name, AdapterMetadata(base=BASE))
        hello = {"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        headers = {"Authorization": f"Bearer {keys.admin}"}
        httpx.post(f"{gateway.url}/v1/chat/completions", json=hello, headers=headers, timeout=60)
    return names


async def read_stream(client: httpx.AsyncClient, url: str, headers: dict, body: dict) -> None:
    async with client.stream("POST", url, json=body | {"stream": True}, headers=headers) as reply:
        async for _ in reply.aiter_lines():
            pass


async def load_then_hang_up(url: str, headers: dict, bodies: list[dict], engine_url: str) -> float:
    """Send every body (odd ones streamed), wait until the engine holds 8 of them, then hang up
    on all: streams mid-answer, the others mid-request. Returns the most requests seen held."""
    busy = 0.0
    async with httpx.AsyncClient(timeout=30) as client:
        requests = [
            asyncio.create_task(
                read_stream(client, url, headers, body)
                if i % 2
                else client.post(url, json=body, headers=headers)
            )
            for i, body in enumerate(bodies)
        ]
        deadline = time.monotonic() + 30
        while busy < 8 and time.monotonic() < deadline:
            busy = max(busy, await asyncio.to_thread(in_flight, engine_url))
            await asyncio.sleep(0.05)
        for request in requests:
            request.cancel()
        await asyncio.gather(*requests, return_exceptions=True)
    return busy


def wait_until_idle(engine_url: str, within: float) -> None:
    started = time.monotonic()
    while time.monotonic() - started < within and in_flight(engine_url) > 0:
        time.sleep(0.5)


def in_flight(engine_url: str) -> float:
    return engine_metric(engine_url, "vllm:num_requests_running") + engine_metric(
        engine_url, "vllm:num_requests_waiting"
    )


@pytest.mark.parametrize("through", ["gateway", "engine"])
def test_dropped_clients_under_mixed_adapter_load_free_the_engine(
    through, gateway, keys, four_adapters
):
    engine_url = gateway.gateway.settings.engine_url
    url = f"{gateway.url if through == 'gateway' else engine_url}/v1/chat/completions"
    # the gateway takes a team's key; the engine only its internal token
    headers = {"Authorization": f"Bearer {keys.admin}"}
    if through == "engine":
        headers = engine_headers(engine_url)
    models = [BASE, *four_adapters]
    bodies = [
        {"model": models[i % len(models)], "messages": [{"role": "user", "content": "Hi"}]} | LONG
        for i in range(CLIENTS)
    ]
    generated_before = engine_metric(engine_url, "vllm:generation_tokens_total")
    busy = asyncio.run(load_then_hang_up(url, headers, bodies, engine_url))
    if busy < 8:  # the load never filled the engine (a stall of this test process, which also
        # runs the gateway; the requests trickled in and ran to their end): not a trial of the
        # freeing; once the engine is idle, one more, which must fill it and is counted alone
        wait_until_idle(engine_url, within=120)
        generated_before = engine_metric(engine_url, "vllm:generation_tokens_total")
        busy = asyncio.run(load_then_hang_up(url, headers, bodies, engine_url))
    assert busy >= 8, f"the load never filled the engine ({busy} requests at most)"

    left = time.monotonic()
    while (held := in_flight(engine_url)) > 0:
        assert time.monotonic() - left < 5, f"{held} requests still running or waiting after 5 s"
        time.sleep(0.1)
    generated = engine_metric(engine_url, "vllm:generation_tokens_total") - generated_before
    assert generated < CLIENTS * LONG["max_tokens"] / 2
