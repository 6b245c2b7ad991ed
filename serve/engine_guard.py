"""The engine's door: inside the vLLM server, every request needs the engine's internal token.

vLLM's own `--api-key` check (`VLLM_API_KEY`, which gemlora sets) guards only paths under
`/v1`, `/v2`, `/inference` and `/cohere`; the same server also answers `/invocations` (chat,
SageMaker-style), `/tokenize`, `/metrics`, `/pause`, `/abort_requests`, `/reset_prefix_cache`
and more, to anyone. This middleware (vLLM's `--middleware` extension point) asks for the same
token on every path but the liveness probes, so the gateway's keys, model ACLs and rate limits
cannot be walked around through the engine's port. The token is per start: see
`gemlora.engine_token`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from gemlora.engine_token import VLLM_TOKEN_ENV

MIDDLEWARE = "gemlora.serve.engine_guard.RequireEngineToken"
OPEN_PATHS = frozenset({"/health", "/ping"})  # liveness: the supervisor probes without a token
UNAUTHORIZED = json.dumps(
    {
        "error": {
            "message": "this engine serves gemlora's gateway only: call the gateway",
            "type": "authentication_error",
            "param": None,
            "code": "engine_token_required",
        }
    }
).encode()


class RequireEngineToken:
    """Pure ASGI: a request without `Authorization: Bearer <token>` gets a 401."""

    def __init__(self, app) -> None:
        self.app = app
        token = os.environ.get(VLLM_TOKEN_ENV)
        if not token:
            raise RuntimeError(f"the engine guard needs ${VLLM_TOKEN_ENV}: start it with gemlora")
        self.expected = hashlib.sha256(f"Bearer {token}".encode()).digest()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self._authorized(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": UNAUTHORIZED})

    def _authorized(self, scope) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return hmac.compare_digest(hashlib.sha256(given).digest(), self.expected)
