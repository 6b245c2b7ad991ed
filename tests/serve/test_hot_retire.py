"""Hot adapters' retire and pin accounting against a fake vLLM engine client: a moved alias's old
version stays loaded while a request in the engine uses it, and pinned ids (retiring ones
included) never take the last free batch slot."""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from gemlora.serve.hot_adapters import HotAdapters


@dataclass
class FakeEngine:
    """What `HotAdapters` uses of vLLM's `AsyncLLM`; `output_processor.request_states` holds the
    requests in the engine, as vLLM's does from `add_request` until they finish."""

    loaded: set[int] = field(default_factory=set)
    pinned: set[int] = field(default_factory=set)
    output_processor: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(request_states={})
    )

    async def add_lora(self, request) -> None:
        self.loaded.add(request.lora_int_id)

    async def pin_lora(self, lora_id: int) -> None:
        assert lora_id in self.loaded
        self.pinned.add(lora_id)

    async def remove_lora(self, lora_id: int) -> None:
        self.loaded.discard(lora_id)
        self.pinned.discard(lora_id)

    def start_request(self, request_id: str, lora_request) -> None:
        self.output_processor.request_states[request_id] = SimpleNamespace(
            lora_request=lora_request
        )

    def finish_request(self, request_id: str) -> None:
        del self.output_processor.request_states[request_id]


class FakeRouter:
    def __init__(self) -> None:
        self.versions: dict[str, int] = {}

    def resolve(self, ref: str):
        version = self.versions[ref]
        path = Path(f"/adapters/{ref}/{version}")
        return SimpleNamespace(path=path, version_ref=f"{ref.split('@')[0]}/{version}")


def hot_set(refs: dict[str, int], max_loras: int) -> tuple[HotAdapters, FakeEngine, FakeRouter]:
    engine, router = FakeEngine(), FakeRouter()
    router.versions.update(refs)
    counter = itertools.count(1)
    models = SimpleNamespace(
        engine_client=engine,
        lora_requests={},
        lora_resolver_lock=collections.defaultdict(asyncio.Lock),
        lora_id_counter=SimpleNamespace(inc=lambda n: next(counter)),
    )
    hot = HotAdapters(router, list(refs), refresh_s=1.0, max_loras=max_loras)
    asyncio.run(hot.start(models))
    return hot, engine, router


def test_a_moved_version_is_removed_only_once_no_request_uses_it():
    hot, engine, router = hot_set({"a@champion": 1}, max_loras=4)
    models = hot.serving_models
    old = models.lora_requests["a@champion"]
    engine.start_request("r1", old)  # a request took the old version before the alias moved
    router.versions["a@champion"] = 2
    asyncio.run(hot.refresh())
    new = models.lora_requests["a@champion"]
    assert new.lora_int_id != old.lora_int_id and new.lora_int_id in engine.pinned
    for _ in range(3):  # refreshes while the request runs keep the old version loaded
        asyncio.run(hot.refresh())
        assert old.lora_int_id in engine.loaded
    engine.finish_request("r1")
    asyncio.run(hot.refresh())
    assert old.lora_int_id not in engine.loaded
    assert engine.loaded == engine.pinned == {new.lora_int_id}
    assert not hot.retiring


def test_retiring_versions_count_against_max_loras():
    # 2 hot adapters, max_loras 3: one slot stays free, so while a's old version is pinned,
    # its new version cannot be pinned too: it is loaded (and served) unpinned until the old
    # one is removed.
    hot, engine, router = hot_set({"a@champion": 1, "b@champion": 1}, max_loras=3)
    models = hot.serving_models
    old = models.lora_requests["a@champion"]
    engine.start_request("r1", old)
    router.versions["a@champion"] = 2
    asyncio.run(hot.refresh())
    new = models.lora_requests["a@champion"]
    assert new.lora_int_id in engine.loaded
    assert len(engine.pinned) == 2 and new.lora_int_id not in engine.pinned
    asyncio.run(hot.refresh())
    assert len(engine.pinned) == 2 and old.lora_int_id in engine.pinned  # still in use
    engine.finish_request("r1")
    asyncio.run(hot.refresh())
    assert old.lora_int_id not in engine.loaded
    assert new.lora_int_id in engine.pinned and len(engine.pinned) == 2


def test_without_a_request_count_the_old_version_waits_out_the_grace_period():
    hot, engine, router = hot_set({"a@champion": 1}, max_loras=4)
    engine.output_processor = None  # a vLLM whose requests cannot be counted
    old = hot.serving_models.lora_requests["a@champion"]
    router.versions["a@champion"] = 2
    asyncio.run(hot.refresh())
    asyncio.run(hot.refresh())
    assert old.lora_int_id in engine.loaded
    hot.retire_grace_s = 0.0
    asyncio.run(hot.refresh())
    assert old.lora_int_id not in engine.loaded
