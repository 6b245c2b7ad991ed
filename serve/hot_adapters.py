"""Hot adapters: registry references the engine loads and pins from start-up.

`engine.hot_adapters` lists references (`support-bot@champion`, `support-bot/3`) or globs over
adapter names (`support-*@champion`). Before vLLM's server reports itself started, each is
resolved through the registry, loaded into the engine (`add_lora`) and pinned (`pin_lora`: it
keeps its slot and is never evicted), under the reference as its model name. Their first
request then costs what a warm one does.

Every `refresh_s` the list is resolved again: a moved alias gets its new version loaded and
pinned under a new LoRA id (a new id also keeps vLLM's prefix cache from mixing versions), and
only then does the name route to it. The old version is retired (removed from the engine) at
a later refresh, and only once no request in the engine (waiting or running) uses its LoRA id;
where the engine cannot be asked, after `RETIRE_GRACE_S`, longer than any request. Adapters newly
matching a glob become hot the same way.

Every pinned LoRA id holds a batch slot, retiring ones included, and vLLM fails a batch that
needs a slot when all are pinned: at most `max_loras - 1` ids are pinned at once. A new version
that finds no slot to pin is loaded unpinned (vLLM reloads it if evicted) and pinned at a later
refresh, once retired versions have made room.

Runs in vLLM's API server process, driven by the routing middleware's lifespan
(`gemlora.serve.lora_routing`). Registry calls block, so they run in worker threads.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from dataclasses import dataclass, field

from gemlora.adapters import AdapterError, AdapterSummary, ResolvedAdapter
from gemlora.adapters.refs import split_ref

logger = logging.getLogger("gemlora.hot_adapters")

GLOB_CHARACTERS = frozenset("*?[")
# Where the engine's in-flight requests cannot be counted: a retired version is removed after
# this long, longer than any request (the gateway's upstream timeout is shorter).
RETIRE_GRACE_S = 900.0


class HotAdapterError(RuntimeError):
    """A hot adapter that names no glob could not be resolved or loaded."""


def is_glob(pattern: str) -> bool:
    return any(character in GLOB_CHARACTERS for character in split_ref(pattern)[0])


def expand(patterns: list[str], adapters: list[AdapterSummary]) -> list[str]:
    """The references the patterns stand for: a plain reference as it is; a glob once per
    registered adapter whose name matches (and which has the alias, for `GLOB@ALIAS`)."""
    refs: list[str] = []
    for pattern in patterns:
        if not is_glob(pattern):
            refs.append(pattern)
            continue
        name_glob, suffix = split_ref(pattern)
        alias = suffix[1:] if suffix.startswith("@") else None
        for adapter in adapters:
            if fnmatch.fnmatchcase(adapter.name, name_glob) and (
                alias is None or alias in adapter.aliases
            ):
                refs.append(adapter.name + suffix)
    return list(dict.fromkeys(refs))


@dataclass
class HotAdapters:
    """The hot set of one engine: `router` resolves references (`AdapterRouter`),
    `serving_models` is vLLM's `OpenAIServingModels` of the API server."""

    router: object
    patterns: list[str]
    refresh_s: float
    max_loras: int
    serving_models: object = None
    loaded: dict[str, str] = field(default_factory=dict)  # model name -> version path
    retiring: dict[int, float] = field(default_factory=dict)  # LoRA id -> when it was retired
    pinned: set[int] = field(default_factory=set)  # LoRA ids pinned now (retiring ones too)
    unpinned: list[int] = field(default_factory=list)  # current ids waiting for a slot to pin
    retire_grace_s: float = RETIRE_GRACE_S

    def is_hot(self, model: str) -> bool:
        return model in self.loaded

    async def start(self, serving_models) -> None:
        """Load and pin every hot adapter; a plain reference that fails stops the start-up."""
        self.serving_models = serving_models
        await self.refresh(strict=True)

    def requests_using(self, lora_id: int) -> int | None:
        """Requests in the engine (waiting or running) that use `lora_id`; None when this vLLM
        does not let us count them."""
        processor = getattr(self.serving_models.engine_client, "output_processor", None)
        states = getattr(processor, "request_states", None)
        if not isinstance(states, dict):
            return None
        return sum(
            1
            for state in list(states.values())
            if getattr(getattr(state, "lora_request", None), "lora_int_id", None) == lora_id
        )

    async def retire_idle(self) -> None:
        """Remove the retired versions no request uses any more (or, uncountable, past the
        grace period); pin waiting new versions where that frees a slot."""
        engine = self.serving_models.engine_client
        for lora_id, retired_at in list(self.retiring.items()):
            busy = self.requests_using(lora_id)
            waited = time.monotonic() - retired_at
            if busy or (busy is None and waited < self.retire_grace_s):
                logger.debug("retired LoRA id %d kept: %s request(s) still use it", lora_id, busy)
                continue
            await engine.remove_lora(lora_id)
            del self.retiring[lora_id]
            self.pinned.discard(lora_id)
            logger.info("retired LoRA id %d removed after %.1f s", lora_id, waited)
        for lora_id in list(self.unpinned):
            if not self._has_free_pin():
                break
            await engine.pin_lora(lora_id)
            self.pinned.add(lora_id)
            self.unpinned.remove(lora_id)
            logger.info("LoRA id %d pinned", lora_id)

    def _has_free_pin(self) -> bool:
        # one slot always stays unpinned: vLLM fails a batch that finds every slot pinned
        return len(self.pinned) < self.max_loras - 1

    async def refresh(self, strict: bool = False) -> None:
        await self.retire_idle()
        refs = await self._refs(strict)
        if len(refs) >= self.max_loras:
            # Pinned adapters keep their batch slots: one must stay free for the others, and
            # for a moved alias's new version while the old one still serves.
            message = (
                f"engine.hot_adapters: {len(refs)} adapters ({', '.join(refs)}) need "
                f"engine.max_loras of at least {len(refs) + 1} (it is {self.max_loras})"
            )
            if strict:
                raise HotAdapterError(message)
            logger.warning("%s; only the first %d stay hot", message, self.max_loras - 1)
            refs = refs[: self.max_loras - 1]
        for ref in refs:
            try:
                adapter = await asyncio.to_thread(self.router.resolve, ref)
                if self.loaded.get(ref) != str(adapter.path):
                    await self._load(ref, adapter)
            except (AdapterError, HotAdapterError) as error:
                if strict and not is_glob(ref):
                    raise HotAdapterError(f"engine.hot_adapters: {ref}: {error}") from error
                logger.warning("hot adapter %r not refreshed: %s", ref, error)

    async def watch(self) -> None:
        """Refresh every `refresh_s` until cancelled."""
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:  # the registry or engine hiccuped: the next round tries again
                logger.exception("refreshing the hot adapters failed")

    async def _refs(self, strict: bool) -> list[str]:
        if not any(is_glob(pattern) for pattern in self.patterns):
            return list(self.patterns)
        try:
            adapters = await asyncio.to_thread(self.router.registry.list)
        except AdapterError as error:
            if strict:
                raise HotAdapterError(f"engine.hot_adapters: {error}") from error
            adapters = []
        return expand(self.patterns, adapters)

    async def _load(self, ref: str, adapter: ResolvedAdapter) -> None:
        from vllm.lora.request import LoRARequest

        models = self.serving_models
        request = LoRARequest(
            lora_name=ref, lora_int_id=models.lora_id_counter.inc(1), lora_path=str(adapter.path)
        )
        lora_id = request.lora_int_id
        try:
            await models.engine_client.add_lora(request)
            if self._has_free_pin():
                await models.engine_client.pin_lora(lora_id)
                self.pinned.add(lora_id)
            else:
                self.unpinned.append(lora_id)
                logger.info("hot adapter %r loaded unpinned until a slot frees", ref)
        except Exception as error:  # vLLM raises plain exceptions for adapters it cannot load
            raise HotAdapterError(f"vLLM could not load {adapter.path}: {error}") from error
        async with models.lora_resolver_lock[ref]:
            previous = models.lora_requests.get(ref)
            models.lora_requests[ref] = request
        if previous is not None:
            self.retiring[previous.lora_int_id] = time.monotonic()
            if previous.lora_int_id in self.unpinned:
                self.unpinned.remove(previous.lora_int_id)
        self.loaded[ref] = str(adapter.path)
        state = "pinned" if lora_id in self.pinned else "not pinned yet"
        logger.info("hot adapter %r is %s, %s (%s)", ref, adapter.version_ref, state, adapter.path)
