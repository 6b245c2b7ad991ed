"""The platform gateway: the OpenAI-compatible endpoint teams call, in front of vLLM.

    app = create_app(GatewaySettings(GatewayConfig(), engine_url="http://127.0.0.1:8100",
                                     base="gemma-3-270m-w4a16", registry=registry))
    uvicorn.run(app, host="127.0.0.1", port=8000)

It owns the contract, security and visibility; vLLM does the generation. For each chat request
it authenticates the key, checks its rate and the model it may use, validates the body against
the reference schema, fills in the deployment's sampling defaults, turns every image into a
checked data URL, and forwards the request to the engine over one pooled HTTP client. Answers
come back byte for byte; streamed ones chunk by chunk as they arrive. The only parsing of an
answer is reading its token usage for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from gemlora.adapters import AdapterRegistry, InvalidRefError, parse_ref
from gemlora.data.safe_fetch import Resolver
from gemlora.serve.auth import ApiKey, Authenticator, load_keys
from gemlora.serve.errors import GatewayError, error_body, validation_error
from gemlora.serve.gateway.config import GatewayConfig
from gemlora.serve.gateway.graders import RUN_PATH, VALIDATE_PATH, GradersApi
from gemlora.serve.gateway.images import ImageConverter
from gemlora.serve.gateway.metrics import GatewayMetrics
from gemlora.serve.gateway.models import ModelCatalog
from gemlora.serve.gateway.schema import ChatCompletionRequest, StreamOptions
from gemlora.serve.gateway.upstream import RETRY_AFTER_S, EngineClient, UpstreamStream
from gemlora.serve.jobs import JobsConfig, JobsContext, mount_jobs
from gemlora.serve.supervisor import ProcessStatus

logger = logging.getLogger("gemlora.gateway")
access_log = logging.getLogger("gemlora.gateway.access")

CHAT_PATH = "/v1/chat/completions"
# The final event of a stream with include_usage has no choices, only the usage.
USAGE_EVENT_MARK = b'"choices":[]'
# vLLM opens each choice of a stream with an event that has the role and no text yet.
ROLE_EVENT_MARK = b'"delta":{"role":"assistant","content":""}'


@dataclass
class GatewaySettings:
    """What one gateway serves: its config, the engine behind it and the registry."""

    config: GatewayConfig
    engine_url: str
    base: str  # the engine's base: catalogue name or model directory
    served_name: str | None = None  # the base's model name for clients (default: `base`)
    registry: AdapterRegistry | None = None
    keys: list[ApiKey] | None = None  # default: from config.keys_file and $GEMLORA_API_KEYS
    dns_resolver: Resolver | None = None  # for image URLs; tests answer names themselves
    jobs: JobsConfig | None = None  # the Files and Fine-tuning Jobs API (serve/jobs); None: off
    # the engine's supervisor's view (`gemlora serve`): why it is down, restarts, retry hint
    engine_status: Callable[[], ProcessStatus] | None = None
    engine_dtype: str = "auto"  # the engine's `engine.dtype` (what a verification computes in)
    # the engine's internal token (`gemlora serve`: its current start's); default: the token
    # file of the engine at `engine_url` (see gemlora.engine_token)
    engine_token: Callable[[], str | None] | None = None


@dataclass
class Exchange:
    """One request's facts, for the access log and the metrics."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    key_id: str = "-"
    model: str | None = None
    adapter: str = "-"
    stream: bool = False
    status: int = 0
    code: str | None = None
    images: int = 0
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    relayed_all: bool = False  # a stream reached its end


def create_app(settings: GatewaySettings) -> FastAPI:
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(title="gemlora gateway", lifespan=lifespan, openapi_url=None)
    app.state.gateway = gateway
    # Chat completions skip FastAPI's routing and exception layers (see ChatFastPath); the
    # route stays so that other methods on the path get a 405.
    app.add_middleware(ChatFastPath, handler=gateway.serve_chat)
    app.add_route(CHAT_PATH, gateway.chat_completions, methods=["POST"])
    app.add_route("/v1/models", gateway.list_models, methods=["GET"])
    app.add_route("/health", gateway.health, methods=["GET"])
    app.add_route("/metrics", gateway.metrics_page, methods=["GET"])
    graders = GradersApi(gateway)
    app.add_route(VALIDATE_PATH, graders.validate, methods=["POST"])
    app.add_route(RUN_PATH, graders.run, methods=["POST"])
    app.add_exception_handler(StarletteHTTPException, _http_error)
    if settings.jobs is not None:
        # Fine-tuning from the API (serve/jobs): its routes, and its job runner, which starts
        # and stops with the app.
        context = JobsContext(
            gateway.auth,
            settings.registry,
            settings.base,
            gateway.images.fetcher,
            engine_url=settings.engine_url,
            engine_dtype=settings.engine_dtype,
            python_graders=settings.config.graders.python,
        )
        mount_jobs(app, context, settings.jobs)
    return app


class ChatFastPath:
    """POST /v1/chat/completions goes straight to the gateway's handler; everything else to
    the FastAPI app. On this path the gateway's whole added latency is budgeted at 2 ms, and
    FastAPI's router, exception and exit-stack layers cost a sizeable part of it on a small
    CPU; the handler parses, validates and answers errors itself."""

    def __init__(self, app: ASGIApp, handler: ASGIApp) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == CHAT_PATH:
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and methods answer in the OpenAI shape too."""
    return GatewayError(error.status_code, str(error.detail), code="unknown_route").response()


def run_gateway(settings: GatewaySettings) -> None:
    """Serve on the config's host and port until Ctrl-C (uvicorn then drains open requests and
    returns), with one JSON access line per request on stderr."""
    import uvicorn

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    config = settings.config
    app = create_app(settings)
    # uvicorn's own access log and proxy-header rewriting are off: the gateway logs itself and
    # is the first hop.
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.config = settings.config
        self.served_name = settings.served_name or settings.base
        keys = settings.keys
        if keys is None and self.config.auth:
            keys = load_keys(self.config.keys_file)
            if not keys:
                raise ValueError(
                    "auth is on but there are no API keys: set gateway.keys_file or "
                    "$GEMLORA_API_KEYS, or run without auth on loopback (--no-auth)"
                )
        self.auth = Authenticator(keys if self.config.auth else None)
        self.images = ImageConverter(self.config.images, settings.dns_resolver)
        self.catalog = ModelCatalog(
            self.served_name, settings.base, settings.registry, self.config.models_cache_s
        )
        status = settings.engine_status
        self.metrics = GatewayMetrics(engine_restarts=status and (lambda: status().restarts))
        self.engine = EngineClient(
            settings.engine_url,
            self.config.engine_timeout_s,
            retry_after_s=status and (lambda: status().retry_after_s),
            token=settings.engine_token,
        )

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    # --- POST /v1/chat/completions ------------------------------------------------------------

    async def serve_chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The chat endpoint as a plain ASGI app (what ChatFastPath calls)."""
        response = await self.chat_completions(Request(scope, receive))
        await response(scope, receive, send)

    async def chat_completions(self, request: Request) -> Response | Relay:
        exchange = Exchange(request_id=f"gw-{uuid.uuid4().hex}")
        try:
            key = self.auth.authenticate(request.headers.get("authorization"))
            exchange.key_id = key.id
            self.auth.check_rate(key)
            chat = self._parse(await self._read_body(request))
            exchange.model, exchange.stream = chat.model, chat.stream
            name = self.registry_name(chat.model)
            self.auth.check_model(key, chat.model, name)
            exchange.adapter = name  # a metrics label only once the key may use it
            exchange.images = await self.images.convert(chat.messages)
            wants_usage = chat.wants_usage_chunk  # before the payload asks for it anyway
            payload = self._upstream_payload(chat)
            self._check_engine()
            if chat.stream:
                return await self._stream(request, payload, wants_usage, exchange)
            return await self._complete(request, payload, exchange)
        except GatewayError as error:
            return self._refuse(error, exchange)
        except Exception:
            logger.exception("request %s failed", exchange.request_id)
            error = GatewayError(500, "internal error in the gateway", code="internal_error")
            return self._refuse(error, exchange)

    def registry_name(self, model: str) -> str:
        """What key patterns and metrics see: an adapter reference's registry NAME
        (`team-a-bot@champion` -> `team-a-bot`), or the base's served name. A reference that
        cannot name an adapter is refused here, as the engine would refuse it."""
        if model == self.served_name:
            return model
        try:
            return parse_ref(model).name
        except InvalidRefError as error:
            raise GatewayError(404, str(error), param="model", code="model_not_found") from None

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
        return bytes(body)

    def _parse(self, body: bytes) -> ChatCompletionRequest:
        try:
            chat = ChatCompletionRequest.model_validate_json(body)
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            if first["type"] == "json_invalid":
                raise GatewayError(
                    400, f"request body is not valid JSON: {first['msg']}", code="invalid_json"
                ) from None
            if first["type"] == "model_type" and not first["loc"]:
                raise GatewayError(
                    400, "request body must be a JSON object", code="invalid_json"
                ) from None
            raise validation_error(error) from None
        if chat.stream_options is not None and not chat.stream:
            raise GatewayError(
                400,
                "stream_options: only allowed with stream: true",
                param="stream_options",
                code="invalid_value",
            )
        return chat

    def _upstream_payload(self, chat: ChatCompletionRequest) -> bytes:
        defaults = self.config.defaults
        if chat.max_tokens is None and chat.max_completion_tokens is None:
            chat.max_tokens = defaults.max_tokens
        if chat.temperature is None:
            chat.temperature = defaults.temperature
        if chat.top_p is None:
            chat.top_p = defaults.top_p
        if chat.stream:
            # Always ask for usage, for the token metrics; dropped again if the client did not.
            chat.stream_options = StreamOptions(include_usage=True)
        return chat.model_dump_json(exclude_unset=True).encode()

    def _check_engine(self) -> None:
        """A 503 at once while the supervisor knows the engine is down or hung, rather than a
        request that waits on it until its client gives up."""
        supervised = self.settings.engine_status
        if supervised is None or (status := supervised()).state == "up":
            return
        raise GatewayError(
            503,
            f"the engine is unavailable ({status.describe()}); retry later",
            code="engine_unavailable",
            headers={"Retry-After": str(status.retry_after_s)},
        )

    def _answer_headers(self, status: int, exchange: Exchange) -> dict[str, str]:
        """A 503 from the engine (e.g. `registry_unavailable`: MLflow is down) tells the client
        when to try again, as the gateway's own 503s do."""
        headers = {"X-Request-Id": exchange.request_id}
        if status == 503:
            headers["Retry-After"] = str(RETRY_AFTER_S)
        return headers

    def _headers(self, exchange: Exchange) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Request-Id": exchange.request_id}

    # --- forwarding ----------------------------------------------------------------------------

    async def _complete(self, request: Request, payload: bytes, exchange: Exchange) -> Response:
        upstream = asyncio.ensure_future(
            self.engine.post(CHAT_PATH, payload, self._headers(exchange))
        )
        disconnect = asyncio.ensure_future(_client_disconnect(request))
        try:
            await asyncio.wait({upstream, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
            if not upstream.done():
                # The client left: closing the engine connection makes vLLM abort the request.
                upstream.cancel()
        if not upstream.done() or upstream.cancelled():
            exchange.status, exchange.code = 499, "client_disconnected"
            self._record(exchange)
            return Response(status_code=499)
        status, body = upstream.result()  # a GatewayError if the engine failed
        if status == 200:
            _read_usage(json.loads(body).get("usage"), exchange)
        exchange.status = status
        return Response(
            body,
            status_code=status,
            media_type="application/json",
            headers=self._answer_headers(status, exchange),
            background=BackgroundTask(self._record_after, exchange),  # after the answer is sent
        )

    async def _stream(
        self, request: Request, payload: bytes, wants_usage: bool, exchange: Exchange
    ) -> Response:
        upstream = await self.engine.stream(CHAT_PATH, payload, self._headers(exchange))
        if upstream.status != 200:  # refused before streaming: an ordinary error answer
            body = await upstream.read()
            upstream.close()
            exchange.status = upstream.status
            self._record(exchange)
            return Response(
                body,
                status_code=upstream.status,
                media_type="application/json",
                headers=self._answer_headers(upstream.status, exchange),
            )
        exchange.status = 200

        def finish() -> None:
            upstream.close()  # before the end: the engine sees the connection go and aborts
            if not exchange.relayed_all and exchange.code is None:
                exchange.status, exchange.code = 499, "client_disconnected"
            self._record(exchange)

        return Relay(self._relay(upstream, wants_usage, exchange), upstream, finish, exchange)

    async def _relay(self, upstream: UpstreamStream, wants_usage: bool, exchange: Exchange):
        """The engine's server-sent events as they arrive. Events are passed on whole and
        untouched, except the usage event, which is read and dropped unless asked for. The
        opening role events (no text yet) wait for the first text, which the engine produces
        in the same step: one write to the client instead of two on the way to the first
        token."""
        pending = held = b""
        opened = False  # past the opening role events
        try:
            async for chunk in upstream.chunks():
                if exchange.code == "client_disconnected":
                    return
                if exchange.ttft_s is None:
                    exchange.ttft_s = time.perf_counter() - exchange.started
                pending += chunk
                if b"\n\n" not in pending:
                    continue
                *events, pending = pending.split(b"\n\n")
                kept = [event for event in events if self._keep(event, wants_usage, exchange)]
                if not opened and all(ROLE_EVENT_MARK in e for e in kept):
                    held += b"".join(event + b"\n\n" for event in kept)
                    continue
                opened = True
                yield held + b"".join(event + b"\n\n" for event in kept)
                held = b""
            if held or pending:
                yield held + pending
            exchange.relayed_all = True
        except (TimeoutError, aiohttp.ClientError) as error:
            if exchange.code == "client_disconnected":
                return  # the relay closed the engine connection itself
            exchange.status, exchange.code = 502, "engine_stream_broken"
            message = f"the engine connection broke mid-stream ({type(error).__name__})"
            body = error_body(502, message, code=exchange.code)
            # the error event, then the end every OpenAI stream has: clients stop reading
            yield b"data: " + json.dumps(body).encode() + b"\n\ndata: [DONE]\n\n"

    @staticmethod
    def _keep(event: bytes, wants_usage: bool, exchange: Exchange) -> bool:
        if USAGE_EVENT_MARK not in event or not event.startswith(b"data: {"):
            return True
        with contextlib.suppress(ValueError):
            _read_usage(json.loads(event[len(b"data: ") :]).get("usage"), exchange)
        return wants_usage

    # --- recording -----------------------------------------------------------------------------

    def _refuse(self, error: GatewayError, exchange: Exchange) -> Response:
        exchange.status, exchange.code = error.status, error.code
        if error.status >= 500:
            logger.warning("request %s: %s", exchange.request_id, error.message)
        self._record(exchange)
        return error.response(exchange.request_id)

    async def _record_after(self, exchange: Exchange) -> None:
        self._record(exchange)

    def _record(self, exchange: Exchange) -> None:
        elapsed = time.perf_counter() - exchange.started
        # Unknown model names (404) would make a label per typo: they count as "-".
        adapter = "-" if exchange.status == 404 else exchange.adapter
        labels = (adapter, exchange.key_id)
        metrics = self.metrics
        metrics.requests.labels(*labels, str(exchange.status)).inc()
        if exchange.status >= 400:
            metrics.errors.labels(*labels, exchange.code or str(exchange.status)).inc()
        else:
            metrics.latency.labels(*labels, str(exchange.stream).lower()).observe(elapsed)
        if exchange.ttft_s is not None:
            metrics.ttft.labels(*labels).observe(exchange.ttft_s)
        if exchange.prompt_tokens is not None:
            metrics.tokens_in.labels(*labels).inc(exchange.prompt_tokens)
        if exchange.completion_tokens is not None:
            metrics.tokens_out.labels(*labels).inc(exchange.completion_tokens)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(_access_line(exchange, elapsed))

    # --- GET endpoints -------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        try:
            key = self.auth.authenticate(request.headers.get("authorization"))
        except GatewayError as error:
            return error.response()
        entries = await self.catalog.entries()
        cards = [entry.card() for entry in entries if key.may_use(entry.name)]
        return JSONResponse({"object": "list", "data": cards})

    async def health(self, _request: Request) -> Response:
        engine, registry = await asyncio.gather(self._engine_health(), self._registry_health())
        # Without MLflow the base and every adapter resolved before still serve: degraded, but
        # ready (a shared registry's outage must not take every replica out of rotation).
        if engine != "ok":
            status = "unavailable"
        else:
            status = "ok" if registry in ("ok", "not configured") else "degraded"
        body = {"status": status, "engine": engine, "registry": registry}
        return JSONResponse(body, status_code=503 if status == "unavailable" else 200)

    async def _engine_health(self) -> str:
        # The supervisor's word comes first: a restarted engine answers its /health before its
        # start-up (hot adapters, warm-up) is done, and requests are refused until it is.
        supervised = self.settings.engine_status
        if supervised is not None and (status := supervised()).state != "up":
            return status.describe()  # why: restarting after a crash, or gave up
        return await self.engine.health()

    async def _registry_health(self) -> str:
        registry = self.settings.registry
        if registry is None:
            return "not configured"
        uri = registry.config.tracking_uri
        if uri.startswith(("http://", "https://")):
            try:
                async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
                    response = await client.get(f"{uri.rstrip('/')}/health")
            except httpx.HTTPError as error:
                return f"unreachable: {type(error).__name__}"
            return "ok" if response.status_code == 200 else f"HTTP {response.status_code}"
        try:
            await asyncio.to_thread(registry.list)
        except Exception as error:
            return f"unavailable: {type(error).__name__}"
        return "ok"

    async def metrics_page(self, _request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


class Relay:
    """The ASGI response of a streamed answer: the engine's events as they arrive. A task
    watches the client; when it goes, the engine connection is closed, which makes vLLM abort
    the generation. `on_close` runs however the stream ends. (Starlette's StreamingResponse
    does the same with an anyio task group, which costs more per request than the gateway's
    whole latency budget allows on a small CPU.)"""

    HEADERS = ((b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"))

    def __init__(
        self,
        events: AsyncIterator[bytes],
        upstream: UpstreamStream,
        on_close: Callable[[], None],
        exchange: Exchange,
    ) -> None:
        self.events = events
        self.upstream = upstream
        self.on_close = on_close
        self.exchange = exchange

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(_client_disconnect_from(receive))
        watcher.add_done_callback(self._client_left)
        started = False
        try:
            async for events in self.events:
                if not started:  # with the first events: before them the client has nothing
                    await self._start(send)  # to do, and every wake-up costs CPU time
                    started = True
                await send({"type": "http.response.body", "body": events, "more_body": True})
            if not started:
                await self._start(send)
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.remove_done_callback(self._client_left)
            watcher.cancel()
            await self.events.aclose()
            self.on_close()

    async def _start(self, send: Send) -> None:
        headers = [*self.HEADERS, (b"x-request-id", self.exchange.request_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    def _client_left(self, watcher: asyncio.Task) -> None:
        if not watcher.cancelled():
            self.exchange.status, self.exchange.code = 499, "client_disconnected"
            self.upstream.close()


async def _client_disconnect(request: Request) -> None:
    await _client_disconnect_from(request.receive)


async def _client_disconnect_from(receive: Receive) -> None:
    """Returns when the client closes its connection (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _read_usage(usage: dict | None, exchange: Exchange) -> None:
    if usage:
        exchange.prompt_tokens = usage.get("prompt_tokens")
        exchange.completion_tokens = usage.get("completion_tokens")


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"request body is over the limit of {limit:,} bytes", code="request_too_large"
    )


def _access_line(exchange: Exchange, elapsed: float) -> str:
    """One JSON object per request. Never the API key, the prompt or the answer."""
    line = {
        "request_id": exchange.request_id,
        "key_id": exchange.key_id,
        "model": exchange.model,
        "stream": exchange.stream,
        "status": exchange.status,
        "code": exchange.code,
        "images": exchange.images,
        "duration_ms": round(elapsed * 1000, 2),
        "ttft_ms": None if exchange.ttft_s is None else round(exchange.ttft_s * 1000, 2),
        "prompt_tokens": exchange.prompt_tokens,
        "completion_tokens": exchange.completion_tokens,
    }
    return json.dumps(line, separators=(",", ":"))
