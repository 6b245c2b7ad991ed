"""The serve config (`configs/serve/*.yaml`): which base the engine serves and how, the
registry its adapters come from, and the gateway in front of it.

    config = load_serve_config("configs/serve/local-270m-w4a16.yaml", ["engine.port=8200"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gemlora.adapters import RegistryConfig
from gemlora.config import load_yaml_config
from gemlora.serve.engine import EngineConfig
from gemlora.serve.gateway.config import GatewayConfig
from gemlora.serve.jobs.config import JobsConfig
from gemlora.serve.supervisor import RestartPolicy


class ServeConfig(BaseModel):
    """`engine:` the vLLM engine; `registry:` the MLflow registry adapters resolve through
    (`registry: null` serves the base only); `gateway:` the OpenAI-compatible endpoint teams
    call (`gemlora serve`)."""

    model_config = ConfigDict(extra="forbid")

    engine: EngineConfig
    registry: RegistryConfig | None = Field(default_factory=RegistryConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    restarts: RestartPolicy = Field(
        default_factory=RestartPolicy,
        description="`gemlora serve` restarts a crashed engine or local MLflow server.",
    )
    jobs: JobsConfig | None = Field(
        default=None,
        description="The Files and Fine-tuning Jobs API on the gateway (`jobs: {}` turns it on "
        "with the defaults); needs the registry.",
    )


def load_serve_config(path: str | Path, overrides: Sequence[str] = ()) -> ServeConfig:
    """Read and validate a serve config; `ConfigError` names every bad field."""
    return load_yaml_config(ServeConfig, path, overrides)
