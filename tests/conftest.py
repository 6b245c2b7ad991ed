"""Shared session fixtures: the local Gemma 3 bases and vLLM engines serving them.

Models are built once into $GEMLORA_HOME/models (default ~/.cache/gemlora) and reused across
runs; everything else a test writes goes to pytest's tmp dirs. vLLM engines take 1-3 minutes to
start on 2 cores, so each base gets at most one engine per session, shared by every test.
"""

import ipaddress
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

LOCAL_BASES = ("gemma-3-270m", "gemma-3-270m-w4a16", "tiny-gemma-3-mm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def built_models() -> dict[str, Path]:
    """Every local base, built if missing (the quantized one with GPTQ, as `make models` does:
    ~4 minutes on 2 cores, once per machine)."""
    from gemlora.train.bases import build_model

    return {name: build_model(name).path for name in LOCAL_BASES}


# --- test order: engines start as few times as possible -----------------------------------------

# The engine each engine test uses, in the order the session starts them: tests that need no
# engine run first; then the 270M's tests (its engine carries the hot adapters), the W4A16's,
# the tiny multimodal model's, and last the test that starts its own engine (`gemlora serve`).
# With two engines alive at a time, each base's engine then starts once.
ENGINE_GROUPS = ("none", "gemma-3-270m", "gemma-3-270m-w4a16", "tiny-gemma-3-mm", "own")
# Modules whose tests use several engines; every other module keeps its tests together.
MIXED_MODULES = ("test_serve_routing.py", "test_engine_models.py")


def engine_group(item: pytest.Item) -> int:
    module = item.path.name
    if item.get_closest_marker("engine") is None:
        group = "none"
    elif "w4a16" in item.nodeid:
        group = "gemma-3-270m-w4a16"
    elif module in ("test_serve_hot_adapters.py", "test_serve_routing.py"):
        group = "gemma-3-270m"  # the routing tests share the hot-adapter engine
    elif item.nodeid.endswith("[gemma-3-270m]"):
        group = "gemma-3-270m"
    elif module == "test_gateway_serve_cli.py":
        group = "own"
    else:
        group = "tiny-gemma-3-mm"
    return ENGINE_GROUPS.index(group)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    groups = {item: engine_group(item) for item in items}
    latest: dict[Path, int] = {}
    for item, group in groups.items():
        latest[item.path] = max(group, latest.get(item.path, 0))
    for item in items:  # a module's tests stay together, in its latest group
        if item.path.name not in MIXED_MODULES:
            groups[item] = latest[item.path]
    items.sort(key=groups.__getitem__)  # stable: the collected order within a group


# How soon the session's engines see a moved alias (the product default is 30 s).
ENGINE_ALIAS_TTL_S = 3.0


# Engines alive at once. In fp32 (the engines' `auto` precision on these CPUs) three engines
# and a training run outgrow a 24 GiB machine; the least recently used engine makes way.
MAX_LIVE_ENGINES = 2
LIVE_POOLS: list["EnginePool"] = []


class EnginePool:
    """Starts at most one vLLM engine per base (and `MAX_LIVE_ENGINES` at once) and stops them
    all at the end of the session. Every engine routes adapter names through the registry on the
    session's MLflow server."""

    def __init__(self, log_dir: Path, registry) -> None:
        self.log_dir = log_dir
        self.registry = registry
        self.engines: dict[str, object] = {}  # least recently used first

    def get(self, base: str, **settings):
        """The engine for `base`, with `EngineConfig` `settings` beyond the pool's defaults.
        Without settings, any live engine of `base` will do (extra settings such as hot
        adapters only add to what an engine serves), which saves a start on 2 cores."""
        from gemlora.serve.engine import EngineConfig, start_engine

        key = json.dumps([base, settings], sort_keys=True)
        if not settings:
            key = next((k for k in reversed(self.engines) if json.loads(k)[0] == base), key)
        if key in self.engines:
            self.engines[key] = self.engines.pop(key)
            return self.engines[key]
        while len(self.engines) >= MAX_LIVE_ENGINES:
            self.engines.pop(next(iter(self.engines))).stop()
        config = EngineConfig(**({"base": base, "port": free_port(), "max_num_seqs": 8} | settings))
        log = self.log_dir / f"engine-{base}-{len(key)}-{config.port}.log"
        self.engines[key] = start_engine(config, log, registry=self.registry)
        return self.engines[key]

    def stop(self, base: str, **settings) -> None:
        """Stop the engine started with exactly these settings (so that a later `get(base)`
        cannot pick an engine configured for one test)."""
        engine = self.engines.pop(json.dumps([base, settings], sort_keys=True), None)
        if engine is not None:
            engine.stop()

    def stop_all(self) -> None:
        while self.engines:
            self.engines.popitem()[1].stop()


@pytest.fixture(scope="session")
def engines(built_models, engine_registry, tmp_path_factory) -> Iterator[EnginePool]:
    pool = EnginePool(tmp_path_factory.mktemp("engine-logs"), engine_registry)
    LIVE_POOLS.append(pool)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def no_engines() -> None:
    """Stops the session's engines (they start again when asked for): for tests that train and
    need the memory."""
    for pool in LIVE_POOLS:
        pool.stop_all()


@pytest.fixture(scope="session", autouse=True)
def _quiet_hub() -> None:
    # Nothing may be fetched from a model hub here; fail fast instead of timing out.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator:
    """A real MLflow tracking server (SQLite registry, proxied artifacts) on a free loopback port,
    shared by the session."""
    from gemlora.adapters.mlflow_server import start_mlflow_server

    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-home"), port=free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def engine_registry(mlflow_server, tmp_path_factory):
    """The `RegistryConfig` the session's engines resolve adapter names with (own cache)."""
    from gemlora.adapters import RegistryConfig

    return RegistryConfig(
        tracking_uri=mlflow_server.url,
        cache_dir=tmp_path_factory.mktemp("engine-adapter-cache"),
        alias_ttl_s=ENGINE_ALIAS_TTL_S,
    )


@pytest.fixture
def loopback_only(monkeypatch) -> None:
    """Fail any connection this process opens outside 127.0.0.0/8 (directories whose tests
    must never leave the machine request it with an autouse fixture)."""
    loopback = ipaddress.ip_network("127.0.0.0/8")
    real_connect = socket.socket.connect

    def connect(sock, address):
        if isinstance(address, tuple) and ipaddress.ip_address(address[0]) not in loopback:
            raise OSError(f"test tried to connect outside 127.0.0.0/8: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> Path:
    """`gemlora data samples` output: shapes-vqa/ and style-chat/, train.jsonl and eval.jsonl."""
    from gemlora.data.sample_sets import write_samples

    out = tmp_path_factory.mktemp("samples")
    write_samples(out)
    return out
