"""Per-request adapter routing inside vLLM's OpenAI server.

A request's `model` is the served base's name or an adapter reference: `NAME` (the registry's
default alias), `NAME@ALIAS` or `NAME/VERSION`. Two pieces, both running in vLLM's API server
process and sharing one `AdapterRouter` (configured by the launcher through an env var):

- `RegistryLoRAResolver`, a vLLM `LoRAResolver` (registered by the `gemlora_lora_resolver`
  general plugin): vLLM asks it for any model name that is neither the base nor loaded, and it
  answers with the registry's cached, verified PEFT directory.
- `AdapterRoutingMiddleware`, an ASGI middleware (passed to vLLM as `--middleware`): it resolves
  the name before vLLM sees the request, so that an unknown adapter is a 404 naming `model`,
  an incompatible one a 400 with the reasons (vLLM itself can only say "not found" or "could
  not be loaded"), and a name whose alias moved is unloaded so vLLM resolves it again (vLLM
  keeps a resolved name forever otherwise).

A name's first request is resolved once: the middleware keeps what it resolved in the request's
context, and the resolver, which vLLM calls later in the same request, takes it from there.

Registry calls block (HTTP to MLflow, downloads), so they run in worker threads.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from contextvars import ContextVar
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from gemlora.adapters import (
    AdapterError,
    AdapterNotFoundError,
    AdapterRegistry,
    IncompatibleAdapterError,
    InvalidRefError,
    RegistryConfig,
    RegistryUnavailableError,
    ResolvedAdapter,
)
from gemlora.serve.engine_log import log_to_engine_log
from gemlora.serve.errors import error_body
from gemlora.serve.hot_adapters import HotAdapters

logger = logging.getLogger("gemlora.routing")

ROUTING_ENV = "GEMLORA_ROUTING"
ROUTED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
MIDDLEWARE = "gemlora.serve.lora_routing.AdapterRoutingMiddleware"

# What the middleware resolved for the request in hand. uvicorn runs each request in a task of
# its own, and a task has its own copy of the context: the value never reaches another request.
_resolved_in_request: ContextVar[ResolvedAdapter | None] = ContextVar(
    "gemlora_resolved_in_request", default=None
)


class RoutingConfig(BaseModel):
    """What the engine's resolver needs: the registry and what the engine can serve."""

    model_config = ConfigDict(extra="forbid")

    registry: RegistryConfig
    served_base: str
    max_lora_rank: int
    max_loras: int = 4
    hot_adapters: list[str] = []
    vision_lora: bool = False  # the engine applies LoRA to the vision tower and projector

    def to_env(self) -> str:
        return self.model_dump_json()


@dataclass
class AdapterRouter:
    registry: AdapterRegistry
    served_base: str
    max_lora_rank: int
    vision_lora: bool = False
    hot: HotAdapters | None = None

    def resolve(self, ref: str) -> ResolvedAdapter:
        return self.registry.resolve(
            ref,
            base=self.served_base,
            max_lora_rank=self.max_lora_rank,
            vision_lora=self.vision_lora,
        )

    async def resolve_for_request(self, ref: str) -> ResolvedAdapter:
        """Resolve `ref` (in a worker thread: registry calls block) and keep the result for the
        rest of this request."""
        adapter = await asyncio.to_thread(self.resolve, ref)
        _resolved_in_request.set(adapter)  # not in the thread: it runs in a copy of the context
        return adapter

    async def reuse_or_resolve(self, ref: str) -> ResolvedAdapter:
        """What this request resolved `ref` to already, else a fresh resolution."""
        adapter = _resolved_in_request.get()
        if adapter is not None and adapter.ref == ref:
            return adapter
        return await asyncio.to_thread(self.resolve, ref)


@functools.cache
def router_from_env() -> AdapterRouter | None:
    """The router of this engine process; None when the engine runs without a registry."""
    raw = os.environ.get(ROUTING_ENV)
    if not raw:
        return None
    config = RoutingConfig.model_validate_json(raw)
    log_to_engine_log()
    router = AdapterRouter(
        AdapterRegistry(config.registry),
        config.served_base,
        config.max_lora_rank,
        config.vision_lora,
    )
    if config.hot_adapters:
        refresh_s = config.registry.alias_ttl_s
        router.hot = HotAdapters(router, config.hot_adapters, refresh_s, config.max_loras)
    return router


def _vllm_resolver_class():
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    class RegistryLoRAResolver(LoRAResolver):
        """Resolves a request's model name to an adapter directory through the registry."""

        def __init__(self, router: AdapterRouter) -> None:
            self.router = router

        async def resolve_lora(self, base_model_name: str, lora_name: str):
            try:
                adapter = await self.router.reuse_or_resolve(lora_name)
            except AdapterError as error:
                logger.warning("cannot serve %r: %s", lora_name, error)
                return None
            logger.info("serving %r as %s from %s", lora_name, adapter.version_ref, adapter.path)
            # vLLM replaces the id with its own counter; the request only needs a valid one.
            return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(adapter.path))

    return RegistryLoRAResolver


def register_resolver() -> None:
    """The `gemlora_lora_resolver` vLLM plugin: register the resolver when the launcher
    configured a registry."""
    router = router_from_env()
    if router is None:
        return
    from vllm.lora.resolver import LoRAResolverRegistry

    if "gemlora" not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver("gemlora", _vllm_resolver_class()(router))


# --- the middleware ---------------------------------------------------------------------------


def routing_error(error: AdapterError) -> tuple[int, dict]:
    """The HTTP status and OpenAI error body for a reference the engine cannot serve."""
    if isinstance(error, InvalidRefError | AdapterNotFoundError):
        return 404, error_body(404, str(error), param="model", code="model_not_found")
    if isinstance(error, IncompatibleAdapterError):
        return 400, error_body(400, str(error), param="model", code="incompatible_adapter")
    if isinstance(error, RegistryUnavailableError):
        return 503, error_body(503, str(error), code="registry_unavailable")
    return 400, error_body(400, str(error), param="model", code="adapter_unavailable")


class AdapterRoutingMiddleware:
    """Checks `model` of completion requests against the registry before vLLM runs them."""

    def __init__(self, app) -> None:
        self.app = app
        self.router = router_from_env()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan" and self.router is not None and self.router.hot:
            return await self.app(scope, receive, self._starting_hot_adapters(scope, send))
        if (
            self.router is None
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in ROUTED_PATHS
        ):
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        model = _model_name(body)
        serving_models = scope["app"].state.openai_serving_models
        if model and not serving_models.is_base_model(model):
            refusal = await self._route(model, serving_models)
            if refusal is not None:
                return await _send_json(send, *refusal)
        await self.app(scope, _replay(body, receive), send)

    async def _route(self, model: str, serving_models) -> tuple[int, dict] | None:
        try:
            adapter = await self.router.resolve_for_request(model)
        except AdapterError as error:
            logger.warning("refused model %r: %s", model, error)
            return routing_error(error)
        except Exception:  # a bug: logged whole here (vLLM's handler would only show a 500)
            logger.exception("resolving %r failed", model)
            return 500, error_body(500, f"resolving {model!r} failed; see the engine's log")
        loaded = serving_models.lora_requests.get(model)
        if self.router.hot is not None and self.router.hot.is_hot(model):
            return None  # a moved hot alias keeps its old version until the new one is loaded
        if loaded is not None and loaded.lora_path != str(adapter.path):
            # The name now means another version (a moved alias): let vLLM resolve it again.
            async with serving_models.lora_resolver_lock[model]:
                serving_models.lora_requests.pop(model, None)
            logger.info("%r moved to %s", model, adapter.version_ref)
        return None

    def _starting_hot_adapters(self, scope, send):
        """`send` for the lifespan: vLLM's start-up completes only once the hot adapters are
        loaded and pinned (a failure fails the start-up, naming the adapter); then they are
        refreshed in the background until shutdown."""
        hot = self.router.hot
        watcher: list[asyncio.Task] = []

        async def lifespan_send(message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await hot.start(scope["app"].state.openai_serving_models)
                except Exception as error:
                    logger.error("%s", error)
                    return await send({"type": "lifespan.startup.failed", "message": str(error)})
                watcher.append(asyncio.create_task(hot.watch()))
            elif message["type"].startswith("lifespan.shutdown") and watcher:
                watcher.pop().cancel()
            await send(message)

        return lifespan_send


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _model_name(body: bytes) -> str | None:
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None  # vLLM answers malformed bodies itself
    return model if isinstance(model, str) else None


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
