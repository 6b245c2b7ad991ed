"""The `gateway:` section of a serve config: where the gateway listens, who may call it, the
sampling defaults of this deployment and the image policy.

    gateway:
      port: 8000
      keys_file: ~/.config/gemlora/keys.yaml
      defaults: {max_tokens: 512, temperature: 0.2, top_p: 0.7}
      images:
        fetch: {allowed_schemes: [https], timeout_s: 10}
        max_per_request: 8
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gemlora.data.safe_fetch import FetchPolicy
from gemlora.serve.auth import KEYS_ENV


class SamplingDefaults(BaseModel):
    """Applied to a request that leaves the field out (the hosted reference's defaults)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(
        default=512, ge=1, description="When neither max_tokens nor max_completion_tokens is given."
    )
    temperature: float = Field(default=0.2, ge=0, le=2, description="When temperature is left out.")
    top_p: float = Field(default=0.7, gt=0, le=1, description="When top_p is left out.")


class ImagePolicy(BaseModel):
    """How the gateway turns image URLs into the data URLs the engine gets."""

    model_config = ConfigDict(extra="forbid")

    fetch: FetchPolicy = Field(
        default_factory=FetchPolicy,
        description="The SSRF policy for http(s) image URLs (https only, public addresses).",
    )
    max_per_request: int = Field(default=8, ge=0, description="Images in one request, at most.")


class GradersPolicy(BaseModel):
    """What `POST /v1/fine_tuning/alpha/graders/run` may do on this gateway."""

    model_config = ConfigDict(extra="forbid")

    python: bool = Field(
        default=False,
        description="Run `python` graders: callers' code, in a child process without network, "
        "time- and memory-capped. Off: they are refused.",
    )
    python_timeout_s: float = Field(default=10, gt=0, le=600, description="Per python grader.")
    python_memory_mib: int = Field(default=1024, ge=64, description="Per python grader.")
    judge_timeout_s: float = Field(
        default=120, gt=0, description="How long a score_model/label_model judge may answer."
    )


class GatewayConfig(BaseModel):
    """Settings of the OpenAI-compatible gateway in front of the vLLM engine."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        default="127.0.0.1", description="Bind address; non-loopback only with auth on."
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port teams call.")
    auth: bool = Field(default=True, description="Require API keys (off only on loopback).")
    keys_file: Path | None = Field(
        default=None,
        description=f"YAML/JSON of hashed API keys; ${KEYS_ENV} may hold the same document.",
    )
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)
    images: ImagePolicy = Field(default_factory=ImagePolicy)
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Request bodies above this are refused."
    )
    engine_timeout_s: float = Field(
        default=600, gt=0, description="How long a non-streamed answer may take."
    )
    models_cache_s: float = Field(
        default=10, ge=0, description="How long the /v1/models listing of the registry is kept."
    )
    graders: GradersPolicy = Field(default_factory=GradersPolicy)

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> GatewayConfig:
        if not self.auth and not is_loopback(self.host):
            raise ValueError(
                f"auth is off but host is {self.host}: without API keys the gateway only "
                "listens on loopback (127.0.0.1); turn auth on or bind to 127.0.0.1"
            )
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
