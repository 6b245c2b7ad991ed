"""A new adapter name is resolved once per first request: vLLM's call of gemlora's resolver takes
what the routing middleware resolved for that request instead of going to the registry again.
No engine: the middleware and resolver run against the part of vLLM they talk to."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from gemlora.adapters import ResolvedAdapter, parse_ref
from gemlora.serve import lora_routing
from gemlora.serve.lora_routing import AdapterRouter, AdapterRoutingMiddleware

BASE = "gemma-3-270m"


class CountingRegistry:
    """Resolves every reference to one directory and records each call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.resolved: list[str] = []

    def resolve(self, ref: str, **_checks) -> ResolvedAdapter:
        self.resolved.append(ref)
        return ResolvedAdapter(
            ref=ref,
            name=parse_ref(ref).name,
            version=len(self.resolved),
            path=self.path,
            digest="0" * 64,
            metadata=None,
            aliases=[],
        )


class ServingModels:
    """What the routing touches of vLLM's `OpenAIServingModels`; `resolve_lora` asks the
    resolvers about a name that is not loaded yet, as vLLM's does."""

    def __init__(self, resolver) -> None:
        self.resolver = resolver
        self.lora_requests: dict = {}
        self.lora_resolver_lock = defaultdict(asyncio.Lock)

    def is_base_model(self, name: str) -> bool:
        return name == BASE

    async def resolve_lora(self, name: str):
        async with self.lora_resolver_lock[name]:
            if name not in self.lora_requests:
                self.lora_requests[name] = await self.resolver.resolve_lora(BASE, name)
            return self.lora_requests[name]


async def vllm_app(scope, receive, send) -> None:
    """vLLM's chat endpoint, as far as adapters go: resolve the request's model, then answer."""
    body = json.loads((await receive())["body"])
    await scope["app"].state.openai_serving_models.resolve_lora(body["model"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def post_chat(middleware, models: ServingModels, model: str) -> int:
    """One request, in a task of its own as uvicorn runs it; the response status."""
    body = json.dumps({"model": model, "messages": []}).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "app": SimpleNamespace(state=SimpleNamespace(openai_serving_models=models)),
    }
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"]


@pytest.fixture
def routing(tmp_path, monkeypatch):
    """The engine process's routing pieces around a counting registry."""
    registry = CountingRegistry(tmp_path)
    router = AdapterRouter(registry, BASE, max_lora_rank=16)
    monkeypatch.setattr(lora_routing, "router_from_env", lambda: router)
    resolver = lora_routing._vllm_resolver_class()(router)
    models = ServingModels(resolver)
    return SimpleNamespace(
        registry=registry,
        resolver=resolver,
        models=models,
        middleware=AdapterRoutingMiddleware(vllm_app),
    )


def test_a_new_name_is_resolved_once_by_its_first_request(routing):
    assert post_chat(routing.middleware, routing.models, "pirate@champion") == 200
    assert routing.registry.resolved == ["pirate@champion"]
    loaded = routing.models.lora_requests["pirate@champion"]
    assert loaded.lora_path == str(routing.registry.path)


def test_each_request_resolves_for_itself(routing):
    """What one request resolved never stands in for another's: the next request looks its
    name up again (an alias may have moved), and the resolver called outside a routed request
    goes to the registry."""
    post_chat(routing.middleware, routing.models, "pirate@champion")
    post_chat(routing.middleware, routing.models, "pirate@champion")
    asyncio.run(routing.resolver.resolve_lora(BASE, "robot@champion"))
    assert routing.registry.resolved == ["pirate@champion", "pirate@champion", "robot@champion"]
