"""The engine's internal token: only gemlora's gateway and gemlora's own tools reach the engine.

Every start of a vLLM engine gets a fresh random token. The engine gets it through vLLM's
`VLLM_API_KEY` (the environment, not the command line: any user on the host can read another's
command line in `ps`, not its environment) and refuses every request without it, except the
liveness probes (`/health`, `/ping`; see `gemlora.serve.engine_guard`). The token is also written
to `$GEMLORA_HOME/run/engine-<port>.token`, readable by its owner only: that is how gemlora's
tools (`adapters verify`, a job's verification, the benchmarks) find it from an engine URL.
Another user's process on the host, or anything that only knows the port, gets a 401.

    token = new_engine_token(8100)          # by `start_engine`, before vLLM starts
    httpx.get(url, headers=engine_headers("http://127.0.0.1:8100"))
    forget_engine_token(8100, token)        # when that engine stops

`$GEMLORA_ENGINE_TOKEN` overrides the file, for an engine started by another machine's
gemlora (a tool pointed at it needs the token of that engine's start).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

from gemlora.paths import gemlora_home

TOKEN_ENV = "GEMLORA_ENGINE_TOKEN"
VLLM_TOKEN_ENV = "VLLM_API_KEY"  # what vLLM's server reads as its --api-key


def token_path(port: int, home: Path | None = None) -> Path:
    """Where the engine on `port` keeps its token, under `home` (default: $GEMLORA_HOME)."""
    return (home or gemlora_home()) / "run" / f"engine-{port}.token"


def new_engine_token(port: int) -> str:
    """A fresh token for the engine about to start on `port`, written where tools find it
    (created owner-only, then moved into place: never readable by others, never half-written)."""
    token = secrets.token_urlsafe(32)
    path = token_path(port)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(token)
    partial.replace(path)
    return token


def forget_engine_token(port: int, token: str) -> None:
    """Remove the engine's token file, if it still holds `token` (a newer start's stays)."""
    path = token_path(port)
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == token:
            path.unlink()


def engine_token(url: str, home: Path | None = None) -> str | None:
    """The token of the engine at `url`: `$GEMLORA_ENGINE_TOKEN`, else its start's token file
    (under `home`, for an engine started with another $GEMLORA_HOME); None when neither exists
    (a request without it gets the engine's 401)."""
    if token := os.environ.get(TOKEN_ENV):
        return token
    port = urlparse(url).port
    if port is None:
        return None
    try:
        return token_path(port, home).read_text().strip() or None
    except (FileNotFoundError, PermissionError):
        return None


def engine_headers(url: str, home: Path | None = None) -> dict[str, str]:
    """The Authorization header for a request to the engine at `url` (empty without a token)."""
    token = engine_token(url, home)
    return {"Authorization": f"Bearer {token}"} if token else {}
