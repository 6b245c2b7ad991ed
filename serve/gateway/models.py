"""GET /v1/models: the base and every registered adapter, with ids for each way to call it
(`NAME`, `NAME@ALIAS`, `NAME/VERSION`). The registry listing is kept for a few seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from gemlora.adapters import AdapterError, AdapterRegistry
from gemlora.adapters.compat import lookup_base

logger = logging.getLogger("gemlora.gateway")

OWNER = "gemlora"


@dataclass(frozen=True)
class ModelEntry:
    """One id in /v1/models; `name` is what API key patterns are matched against."""

    id: str
    name: str
    created: int
    parent: str | None

    def card(self) -> dict:
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": OWNER,
            "parent": self.parent,
            "root": self.parent or self.id,
        }


class ModelCatalog:
    """The models this deployment serves: the base, and the registry's adapters of its family."""

    def __init__(
        self, served_name: str, base: str, registry: AdapterRegistry | None, cache_s: float
    ) -> None:
        self.served_name = served_name
        spec = lookup_base(base)
        self.family = spec.family if spec else None
        self.registry = registry
        self.cache_s = cache_s
        self.started = int(time.time())
        self._cached: tuple[float, list[ModelEntry]] | None = None
        self._lock = asyncio.Lock()

    async def entries(self) -> list[ModelEntry]:
        base = ModelEntry(self.served_name, self.served_name, self.started, None)
        if self.registry is None:
            return [base]
        async with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.cache_s:
                try:
                    adapters = await asyncio.to_thread(self._adapters)
                except AdapterError as error:
                    logger.warning("/v1/models lists the base only: %s", error)
                    return [base]
                self._cached = (now, adapters)
            return [base, *self._cached[1]]

    def _adapters(self) -> list[ModelEntry]:
        entries: list[ModelEntry] = []
        for summary in self.registry.list():
            if not self._fits(summary.base):
                continue
            details = self.registry.show(summary.name)
            if not details.versions:
                continue
            newest = int(details.versions[0].created_at.timestamp())
            parent = self.served_name
            entries.append(ModelEntry(summary.name, summary.name, newest, parent))
            for alias in sorted(details.aliases):
                created = next(
                    int(v.created_at.timestamp())
                    for v in details.versions
                    if v.version == details.aliases[alias]
                )
                entries.append(ModelEntry(f"{summary.name}@{alias}", summary.name, created, parent))
            for version in sorted(details.versions, key=lambda v: v.version):
                created = int(version.created_at.timestamp())
                entry_id = f"{summary.name}/{version.version}"
                entries.append(ModelEntry(entry_id, summary.name, created, parent))
        return entries

    def _fits(self, adapter_base: str | None) -> bool:
        """Adapters of another base family cannot be served here, so they are not listed."""
        if adapter_base is None or self.family is None:
            return True
        spec = lookup_base(adapter_base)
        return spec is None or spec.family == self.family
