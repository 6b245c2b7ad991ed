"""Fixtures for the fine-tuning jobs tests: API keys, the sample datasets, and one gateway with
the jobs API in front of the session's tiny multimodal engine (real vLLM, real MLflow server,
real training workers), shared by the module's tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from jobs_helpers import BASE, GatewayServer, jobs_gateway

from gemlora.serve.auth import ApiKey, hash_key, new_key


@pytest.fixture(autouse=True)
def _loopback_only(loopback_only) -> None:
    """Every test here: no connection outside 127.0.0.0/8."""


@dataclass(frozen=True)
class Keys:
    """`admin` may call any model; `team` only models named `team-*`."""

    admin: str
    team: str

    def api_keys(self) -> list[ApiKey]:
        return [
            ApiKey(id="admin", sha256=hash_key(self.admin), requests_per_minute=None),
            ApiKey(
                id="team", sha256=hash_key(self.team), models=("team-*",), requests_per_minute=None
            ),
        ]


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(new_key(), new_key())


@pytest.fixture(scope="session")
def registry(mlflow_server, tmp_path_factory):
    from gemlora.adapters import AdapterRegistry, RegistryConfig

    cache = tmp_path_factory.mktemp("jobs-adapter-cache")
    return AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url, cache_dir=cache))


@pytest.fixture(scope="module")
def engine(engines):
    return engines.get(BASE)


@pytest.fixture(scope="module")
def gateway(engine, registry, keys, tmp_path_factory) -> Iterator[GatewayServer]:
    store = tmp_path_factory.mktemp("jobs-store")
    server = jobs_gateway(store, engine.url, registry, keys.api_keys())
    yield server
    server.stop()
