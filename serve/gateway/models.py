"""GET /v1/models: the base and every registered adapter, with ids for each way to call it
(`NAME`, `NAME@ALIAS`, `NAME/VERSION`). The registry listing is kept for a few seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from gemlora.adapters import AdapterDetails, AdapterError, AdapterRegistry
from gemlora.adapters.compat import lookup_base
from gemlora.adapters.eval_record import eval_summary
from gemlora.adapters.verification_record import summary as verified

logger = logging.getLogger("gemlora.gateway")

OWNER = "gemlora"


@dataclass(frozen=True)
class ModelEntry:
    """One id in /v1/models; `name` is what API key patterns are matched against."""

    id: str
    name: str
    created: int
    parent: str | None
    verification: dict | None = None  # an adapter version's (`adapters.verification.summary`)
    evaluation: dict | None = None  # its eval gate's decision (`adapters.eval_record`)

    def card(self) -> dict:
        card = {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": OWNER,
            "parent": self.parent,
            "root": self.parent or self.id,
        }
        if self.verification is not None:
            card["verification"] = self.verification
        if self.evaluation is not None:
            card["eval"] = self.evaluation
        return card


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
            entries += self._entries_of(details)
        return entries

    def _entries_of(self, details: AdapterDetails) -> list[ModelEntry]:
        """An adapter's ids: NAME (the version it resolves to: the default alias's, else the
        newest), NAME@ALIAS and NAME/VERSION, each with its version's verification."""
        versions = {version.version: version for version in details.versions}
        default = details.aliases.get(self.registry.config.default_alias)

        def entry(entry_id: str, number: int) -> ModelEntry:
            version = versions[number]
            created = int(version.created_at.timestamp())
            return ModelEntry(
                entry_id,
                details.name,
                created,
                self.served_name,
                verified(version.tags),
                eval_summary(version.tags),
            )

        return [
            entry(details.name, default or details.versions[0].version),
            *(entry(f"{details.name}@{a}", v) for a, v in sorted(details.aliases.items())),
            *(entry(f"{details.name}/{number}", number) for number in sorted(versions)),
        ]

    def _fits(self, adapter_base: str | None) -> bool:
        """Adapters of another base family cannot be served here, so they are not listed."""
        if adapter_base is None or self.family is None:
            return True
        spec = lookup_base(adapter_base)
        return spec is None or spec.family == self.family
