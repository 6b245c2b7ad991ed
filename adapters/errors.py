"""The errors the registry raises; each message says what went wrong and what to do."""

from __future__ import annotations


class AdapterError(Exception):
    """Base class of every registry error."""


class InvalidRefError(AdapterError, ValueError):
    """A malformed adapter name, alias or reference."""


class AdapterNotFoundError(AdapterError, LookupError):
    """The registry has no such adapter, alias or version; the message says which part."""


class IncompatibleAdapterError(AdapterError):
    """An adapter that must not be registered or served on a base; `reasons` says why."""

    def __init__(self, subject: str, base: str, reasons: list[str]) -> None:
        self.subject = subject
        self.base = base
        self.reasons = list(reasons)
        super().__init__(f"{subject} does not fit base {base}: " + "; ".join(self.reasons))


class AdapterIntegrityError(AdapterError):
    """Downloaded or cached adapter files whose content digest is not the registered one."""


class RegistryUnavailableError(AdapterError):
    """The MLflow tracking server could not be reached or answered with an error."""
