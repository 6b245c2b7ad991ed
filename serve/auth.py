"""API keys: stored as sha256 hashes, each with the models it may call and a rate limit. The
gateway and its jobs API both check callers with them.

A keys file (YAML or JSON; `$GEMLORA_API_KEYS` may hold the same document):

    keys:
      - id: team-a                      # shows in logs and metrics; the key itself never does
        sha256: 9f86d08...              # sha256 hex of the secret (`gemlora keys new`)
        models: ["gemma-3-27b-it-int4", "team-a-*"]   # fnmatch patterns over model names
        requests_per_minute: 120

A pattern is matched against the base's served name or an adapter's NAME, so `team-a-*` covers
`team-a-bot`, `team-a-bot@champion` and `team-a-bot/3`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import secrets
import threading
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gemlora.serve.errors import GatewayError, field_path

KEYS_ENV = "GEMLORA_API_KEYS"
KEY_PREFIX = "gl-"


class ApiKey(BaseModel):
    """One caller."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Name in logs and metrics."
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the secret key.")
    models: tuple[str, ...] = Field(default=("*",), description="fnmatch patterns of models.")
    requests_per_minute: int | None = Field(default=60, ge=1, description="None: unlimited.")

    def may_use(self, model_name: str) -> bool:
        return any(fnmatch.fnmatchcase(model_name, pattern) for pattern in self.models)


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey]


# The caller when auth is off (loopback only): may use everything, unlimited.
LOCAL_KEY = ApiKey(id="local", sha256="0" * 64, models=("*",), requests_per_minute=None)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_keys(text: str, origin: str) -> list[ApiKey]:
    try:
        document = yaml.safe_load(text)
        return KeysFile.model_validate(document).keys
    except yaml.YAMLError as error:
        raise ValueError(f"{origin}: not YAML or JSON: {error}") from None
    except ValidationError as error:
        problems = [f"{field_path(e['loc'])}: {e['msg']}" for e in error.errors()]
        raise ValueError(f"{origin}: " + "; ".join(problems)) from None


def load_keys(keys_file: Path | None) -> list[ApiKey]:
    """Keys from the file and from $GEMLORA_API_KEYS; ids must be unique."""
    keys: list[ApiKey] = []
    if keys_file is not None:
        path = Path(keys_file).expanduser()
        if not path.is_file():
            raise ValueError(f"keys file {path} does not exist")
        keys += parse_keys(path.read_text(), str(path))
    if os.environ.get(KEYS_ENV):
        keys += parse_keys(os.environ[KEYS_ENV], f"${KEYS_ENV}")
    ids = [key.id for key in keys]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate key ids: {', '.join(duplicates)}")
    return keys


class RateLimiter:
    """A token bucket per key: `requests_per_minute` tokens, refilled continuously."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # id -> (tokens, last refill)
        self._lock = threading.Lock()

    def retry_after(self, key: ApiKey) -> float | None:
        """Take one token; None when allowed, else the seconds until a token is back."""
        rpm = key.requests_per_minute
        if rpm is None:
            return None
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key.id, (float(rpm), now))
            tokens = min(float(rpm), tokens + (now - last) * rpm / 60)
            if tokens < 1:
                self._buckets[key.id] = (tokens, now)
                return (1 - tokens) * 60 / rpm
            self._buckets[key.id] = (tokens - 1, now)
        return None


class Authenticator:
    """Bearer token -> `ApiKey`, and the per-key checks (model access, rate)."""

    def __init__(self, keys: list[ApiKey] | None) -> None:
        """`keys=None` turns auth off: every caller is `LOCAL_KEY`."""
        self.enabled = keys is not None
        self._by_hash = {key.sha256: key for key in keys or []}
        self.limiter = RateLimiter()

    def authenticate(self, authorization: str | None) -> ApiKey:
        if not self.enabled:
            return LOCAL_KEY
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GatewayError(
                401,
                "missing API key: send it as 'Authorization: Bearer <key>'",
                code="missing_api_key",
            )
        key = self._by_hash.get(hash_key(token.strip()))
        if key is None:
            raise GatewayError(401, "invalid API key", code="invalid_api_key")
        return key

    def check_rate(self, key: ApiKey) -> None:
        wait = self.limiter.retry_after(key)
        if wait is not None:
            raise GatewayError(
                429,
                f"rate limit of {key.requests_per_minute} requests per minute reached for key "
                f"{key.id}; retry in {wait:.1f} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )

    @staticmethod
    def check_model(key: ApiKey, model: str, model_name: str) -> None:
        if not key.may_use(model_name):
            raise GatewayError(
                403,
                f"API key {key.id} may not use model {model!r}",
                param="model",
                code="model_not_allowed",
            )


def keys_document(keys: list[ApiKey]) -> str:
    """The keys file text for `keys` (JSON is valid YAML)."""
    return json.dumps(KeysFile(keys=keys).model_dump(mode="json"), indent=2) + "\n"
