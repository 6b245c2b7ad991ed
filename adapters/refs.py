"""Adapter names and references: `NAME`, `NAME@ALIAS`, `NAME/VERSION`.

`NAME` alone means the registry's default alias (`champion` unless configured otherwise) when
that alias is set, and the newest version when it is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gemlora.adapters.errors import InvalidRefError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# MLflow reserves `latest` and aliases that look like versions (`v3`).
ALIAS_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)
REF_FORMS = "NAME, NAME@ALIAS or NAME/VERSION"


@dataclass(frozen=True)
class AdapterRef:
    """A parsed reference. At most one of `alias` and `version` is set."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return self.name


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidRefError(
            f"invalid adapter name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no '@' or '/')"
        )
    return name


def validate_alias(alias: str) -> str:
    if not ALIAS_PATTERN.fullmatch(alias) or RESERVED_ALIAS.fullmatch(alias):
        raise InvalidRefError(
            f"invalid alias {alias!r}: use letters, digits, '_' and '-', starting with a letter; "
            "'latest' and version-like names such as 'v2' are reserved"
        )
    return alias


def validate_version(version: int | str) -> int:
    text = str(version)
    if not text.isdigit() or int(text) < 1:
        raise InvalidRefError(f"invalid version {text!r}: versions are positive integers")
    return int(text)


def split_ref(ref: str) -> tuple[str, str]:
    """`NAME@ALIAS` -> (`NAME`, `@ALIAS`), `NAME/VERSION` -> (`NAME`, `/VERSION`), `NAME` ->
    (`NAME`, ""), unchecked: a glob over names (`support-*@champion`, the engine's hot adapters)
    splits where a reference does."""
    cut = min((i for i in (ref.find("@"), ref.find("/")) if i >= 0), default=len(ref))
    return ref[:cut], ref[cut:]


def parse_ref(ref: str) -> AdapterRef:
    """`NAME`, `NAME@ALIAS` or `NAME/VERSION` -> `AdapterRef`; `InvalidRefError` otherwise."""
    if ref.count("@") + ref.count("/") > 1:
        raise InvalidRefError(f"invalid adapter reference {ref!r}: expected {REF_FORMS}")
    name, rest = split_ref(ref)
    try:
        if rest.startswith("@"):
            return AdapterRef(validate_name(name), alias=validate_alias(rest[1:]))
        if rest.startswith("/"):
            return AdapterRef(validate_name(name), version=validate_version(rest[1:]))
        return AdapterRef(validate_name(name))
    except InvalidRefError as error:
        raise InvalidRefError(f"invalid adapter reference {ref!r}: {error}") from None
