"""Fixtures for the gateway tests: API keys, gateways served in this process (one in front of
the tiny multimodal engine, one strict one with no engine behind it), a loopback image server,
and a guard that records every connection and fails any outside 127.0.0.0/8."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from gateway_helpers import (
    BASE,
    DEFAULT_MAX_TOKENS,
    GatewayServer,
    ImageServer,
    free_port,
    png,
    resolver_for,
    save_tiny_adapter,
)

from gemlora.data.safe_fetch import FetchPolicy
from gemlora.serve.auth import ApiKey, hash_key, new_key
from gemlora.serve.gateway import GatewayConfig, GatewaySettings, ImagePolicy, SamplingDefaults


@pytest.fixture(autouse=True)
def connections(monkeypatch) -> list[tuple[str, int]]:
    """Every (host, port) a socket of this process connects to; outside loopback fails."""
    made: list[tuple[str, int]] = []
    real_connect = socket.socket.connect
    loopback = ipaddress.ip_network("127.0.0.0/8")

    def connect(sock, address):
        if isinstance(address, tuple):
            made.append((address[0], address[1]))
            if ipaddress.ip_address(address[0].split("%")[0]) not in loopback:
                raise OSError(f"test tried to connect outside 127.0.0.0/8: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return made


@dataclass(frozen=True)
class Keys:
    """Secrets of the test keys: `admin` may use anything, `team` the base and `team-*`
    adapters, `slow` two requests a minute."""

    admin: str
    team: str
    slow: str

    def api_keys(self) -> list[ApiKey]:
        return [
            ApiKey(id="admin", sha256=hash_key(self.admin), requests_per_minute=None),
            ApiKey(
                id="team",
                sha256=hash_key(self.team),
                models=(BASE, "team-*"),
                requests_per_minute=None,
            ),
            ApiKey(id="slow", sha256=hash_key(self.slow), requests_per_minute=2),
        ]


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(new_key(), new_key(), new_key())


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer({"/red.png": png("red"), "/notes.txt": b"not an image"})
    yield server
    server.close()


# Names the gateways' test resolver knows; nothing else resolves.
DNS = {
    "images.test": ["127.0.0.1"],
    "private.test": ["10.1.2.3"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
}


@pytest.fixture(scope="session")
def registry(mlflow_server, tmp_path_factory):
    from gemlora.adapters import AdapterRegistry, RegistryConfig

    cache = tmp_path_factory.mktemp("gateway-adapter-cache")
    return AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url, cache_dir=cache))


@dataclass(frozen=True)
class Adapters:
    """Two adapters registered on the tiny multimodal base: `team` (version 1, aliases
    candidate and champion) matches the team key's `team-*`; `secret` does not."""

    team: str
    secret: str


@pytest.fixture(scope="session")
def adapters(registry, built_models, tmp_path_factory) -> Adapters:
    import uuid

    from gemlora.adapters import AdapterMetadata

    out = tmp_path_factory.mktemp("gateway-adapters")
    team_dir = save_tiny_adapter(built_models[BASE], out / "team", seed=11)
    secret_dir = save_tiny_adapter(built_models[BASE], out / "secret", seed=12)
    suffix = uuid.uuid4().hex[:6]
    names = Adapters(team=f"team-bot-{suffix}", secret=f"secret-bot-{suffix}")
    registry.register(team_dir, names.team, AdapterMetadata(base=BASE))
    registry.promote(names.team)
    registry.register(secret_dir, names.secret, AdapterMetadata(base=BASE))
    return names


@pytest.fixture(scope="session")
def gateway(engines, registry, keys) -> Iterator[GatewayServer]:
    """The gateway in front of the tiny multimodal engine. Its image policy allows exactly one
    host, images.test (the loopback image server), on top of the default policy."""
    engine = engines.get(BASE)
    policy = FetchPolicy(
        allowed_schemes=frozenset({"http", "https"}),
        allow_loopback=True,
        allowed_hosts=frozenset({"images.test"}),
    )
    config = GatewayConfig(
        defaults=SamplingDefaults(max_tokens=DEFAULT_MAX_TOKENS),
        images=ImagePolicy(fetch=policy, max_per_request=4),
        models_cache_s=0,
    )
    settings = GatewaySettings(
        config,
        engine_url=engine.url,
        base=BASE,
        registry=registry,
        keys=keys.api_keys(),
        dns_resolver=resolver_for(DNS),
    )
    server = GatewayServer(settings, free_port())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def strict_gateway(keys, registry) -> Iterator[GatewayServer]:
    """A gateway with the default image policy (loopback not allowed; http let through to the
    address checks) and no engine behind it: every request it forwards fails with 503."""
    policy = FetchPolicy(allowed_schemes=frozenset({"http", "https"}))
    config = GatewayConfig(images=ImagePolicy(fetch=policy), models_cache_s=0)
    settings = GatewaySettings(
        config,
        engine_url=f"http://127.0.0.1:{free_port()}",
        base=BASE,
        registry=registry,
        keys=keys.api_keys(),
        dns_resolver=resolver_for(DNS),
    )
    server = GatewayServer(settings, free_port())
    yield server
    server.stop()
