"""Hot adapters: registry references the engine loads and pins from start-up.

`engine.hot_adapters` lists references (`support-bot@champion`, `support-bot/3`) or globs over
adapter names (`support-*@champion`). Before vLLM's server reports itself started, each is
resolved through the registry, loaded into the engine (`add_lora`) and pinned (`pin_lora`: it
keeps its slot and is never evicted), under the reference as its model name. Their first
request then costs what a warm one does.

Every `refresh_s` the list is resolved again: a moved alias gets its new version loaded and
pinned under a new LoRA id (a new id also keeps vLLM's prefix cache from mixing versions), and
only then does the name route to it; the old version is removed one refresh later, once the
requests it was serving have finished. Adapters newly matching a glob become hot the same way.

Runs in vLLM's API server process, driven by the routing middleware's lifespan
(`gemlora.serve.lora_routing`). Registry calls block, so they run in worker threads.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from dataclasses import dataclass, field

from gemlora.adapters import AdapterError, AdapterSummary, ResolvedAdapter

logger = logging.getLogger("gemlora.hot_adapters")

GLOB_CHARACTERS = frozenset("*?[")


class HotAdapterError(RuntimeError):
    """A hot adapter that names no glob could not be resolved or loaded."""


def is_glob(pattern: str) -> bool:
    return any(character in GLOB_CHARACTERS for character in pattern_name(pattern))


def pattern_name(pattern: str) -> str:
    """The name part of `NAME`, `NAME@ALIAS` or `NAME/VERSION`."""
    return pattern.split("@", 1)[0].split("/", 1)[0]


def expand(patterns: list[str], adapters: list[AdapterSummary]) -> list[str]:
    """The references the patterns stand for: a plain reference as it is; a glob once per
    registered adapter whose name matches (and which has the alias, for `GLOB@ALIAS`)."""
    refs: list[str] = []
    for pattern in patterns:
        if not is_glob(pattern):
            refs.append(pattern)
            continue
        name_glob = pattern_name(pattern)
        suffix = pattern[len(name_glob) :]
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
    retiring: list[int] = field(default_factory=list)  # LoRA ids to remove next refresh

    def is_hot(self, model: str) -> bool:
        return model in self.loaded

    async def start(self, serving_models) -> None:
        """Load and pin every hot adapter; a plain reference that fails stops the start-up."""
        self.serving_models = serving_models
        await self.refresh(strict=True)

    async def refresh(self, strict: bool = False) -> None:
        for lora_id in self.retiring:
            await self.serving_models.engine_client.remove_lora(lora_id)
        self.retiring = []
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
        try:
            await models.engine_client.add_lora(request)
            await models.engine_client.pin_lora(request.lora_int_id)
        except Exception as error:  # vLLM raises plain exceptions for adapters it cannot load
            raise HotAdapterError(f"vLLM could not load {adapter.path}: {error}") from error
        async with models.lora_resolver_lock[ref]:
            previous = models.lora_requests.get(ref)
            models.lora_requests[ref] = request
        if previous is not None:
            self.retiring.append(previous.lora_int_id)
        self.loaded[ref] = str(adapter.path)
        logger.info("hot adapter %r is %s, pinned (%s)", ref, adapter.version_ref, adapter.path)
