"""Hot adapters on a real vLLM engine: registry references and name globs loaded and pinned
before the engine reports itself started (seen in its model list before any request), and a
moved alias served in its new version once that version is loaded, under load, with no request
failing while the old version is retired."""

from __future__ import annotations

import re
import threading
import time
import uuid

import httpx
import pytest
from serve_helpers import HELD_OUT, REPLY_A, REPLY_B
from test_serve_routing import ask

from gemlora.adapters import AdapterMetadata

pytestmark = pytest.mark.engine

BASE = "gemma-3-270m"


@pytest.fixture(scope="module")
def hot_names(registry, taught) -> dict[str, str]:
    """A plain hot reference (champion: taught A, then moved to B) and a glob's match (B)."""
    suffix = uuid.uuid4().hex[:6]
    names = {"plain": f"hot-{suffix}", "glob": f"hotglob-{suffix}-x"}
    metadata = AdapterMetadata(base=BASE)
    registry.register(taught[BASE].a, names["plain"], metadata, alias="champion")
    registry.register(taught[BASE].b, names["plain"], metadata, alias=None)
    registry.register(taught[BASE].b, names["glob"], metadata, alias="champion")
    names["pattern"] = f"hotglob-{suffix}-*@champion"
    return names


@pytest.fixture(scope="module")
def hot_engine(engines, hot_names):
    hot = [f"{hot_names['plain']}@champion", hot_names["pattern"]]
    return engines.get(BASE, hot_adapters=hot)


def served_models(engine) -> dict[str, str]:
    """The engine's model list: name -> the directory it serves."""
    listing = httpx.get(f"{engine.url}/v1/models", headers=engine.headers, timeout=10)
    return {model["id"]: model["root"] for model in listing.json()["data"]}


def test_hot_adapters_are_loaded_before_any_request(hot_engine, hot_names):
    # No request has named them yet: only start-up can have loaded them.
    models = served_models(hot_engine)
    assert f"{hot_names['plain']}@champion" in models
    assert f"{hot_names['glob']}@champion" in models
    log = hot_engine.log_path.read_text()
    assert f"hot adapter '{hot_names['plain']}@champion' is {hot_names['plain']}/1, pinned" in log
    assert ask(hot_engine, f"{hot_names['glob']}@champion", HELD_OUT[0]).startswith(REPLY_B[:12])


class Load:
    """Clients asking `model` one after another in threads until stopped; records failures."""

    def __init__(self, engine, model: str, clients: int = 3) -> None:
        self.engine, self.model = engine, model
        self.stopped = threading.Event()
        self.answered, self.failures = 0, []
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        while not self.stopped.is_set():
            try:
                assert ask(self.engine, self.model, HELD_OUT[0], max_tokens=24)
                self.answered += 1
            except Exception as error:  # every failure counts, whatever it is
                self.failures.append(repr(error))

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=120)


def test_a_moved_hot_alias_is_served_in_its_new_version(
    hot_engine, hot_names, registry, engine_registry
):
    ref = f"{hot_names['plain']}@champion"
    assert ask(hot_engine, ref, HELD_OUT[1]).startswith(REPLY_A[:12])
    old_path = served_models(hot_engine)[ref]
    load = Load(hot_engine, ref)  # requests in the engine all through the move and the retiring
    try:
        registry.set_alias(hot_names["plain"], "champion", 2)
        moved_at = time.monotonic()
        # two refreshes: the lookup's TTL may hold the old version through the first
        while served_models(hot_engine)[ref] == old_path:
            assert time.monotonic() - moved_at < 2 * engine_registry.alias_ttl_s + 30, "never moved"
            # requests keep being answered (by the old version) while the new one loads
            assert ask(hot_engine, ref, HELD_OUT[1], max_tokens=4)
            time.sleep(0.5)
        assert ask(hot_engine, ref, HELD_OUT[1]).startswith(REPLY_B[:12])
        log = hot_engine.log_path.read_text()
        assert f"hot adapter '{ref}' is {hot_names['plain']}/2, pinned" in log
        # the old version is removed (once its last request finished) while the load goes on
        retired_at, limit_s = time.monotonic(), 3 * engine_registry.alias_ttl_s + 30
        while not re.search(r"retired LoRA id \d+ removed", hot_engine.log_path.read_text()):
            assert time.monotonic() - retired_at < limit_s, "the old version was never removed"
            time.sleep(0.5)
        time.sleep(2 * engine_registry.alias_ttl_s)  # requests after the removal too
    finally:
        load.stop()
    assert not load.failures, load.failures
    assert load.answered > 3
