"""YAML configs validated by pydantic models, with `--set section.field=value` overrides.

Shared by every config gemlora reads (training, serving): a wrong or unknown field is a
`ConfigError` whose lines each name the field path, e.g. `engine.port: Input should be ...`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds one `path: message` line per error."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  {p}" for p in problems))


def read_yaml_mapping(path: Path, what: str = "sections") -> dict[str, Any]:
    """The top-level mapping of a YAML file; `ConfigError` when unreadable or not a mapping."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError([f"cannot read {path}: {error.strerror}"], str(path)) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"not valid YAML: {error}"], str(path)) from None
    if not isinstance(document, dict):
        raise ConfigError([f"the file must hold a mapping of {what}"], str(path))
    return document


def apply_override(document: dict[str, Any], override: str, source: str = "config") -> None:
    """Apply one `--set a.b.c=VALUE` (VALUE parsed as YAML) to `document` in place."""
    key, equals, text = override.partition("=")
    if not equals or not key.strip():
        problem = f"--set {override!r}: expected KEY=VALUE, e.g. training.lr=1e-4"
        raise ConfigError([problem], source)
    *sections, field = key.strip().split(".")
    node = document
    for depth, section in enumerate(sections):
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            where = ".".join(sections[: depth + 1])
            raise ConfigError([f"--set {key}: {where} is a value, not a section"], source)
    node[field] = yaml.safe_load(text) if text.strip() else None


def validate(model: type[Model], document: dict[str, Any], source: str = "config") -> Model:
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise ConfigError([describe(e) for e in error.errors()], source) from None


def load_yaml_config(
    model: type[Model],
    path: str | Path,
    overrides: Sequence[str] = (),
    prepare: Callable[[dict[str, Any], Path], None] | None = None,
) -> Model:
    """Read `path`, let `prepare(document, file_dir)` adjust it (e.g. resolve relative paths),
    apply `overrides`, and validate it as `model`."""
    path = Path(path)
    document = read_yaml_mapping(path)
    if prepare is not None:
        prepare(document, path.resolve().parent)
    for override in overrides:
        apply_override(document, override, str(path))
    return validate(model, document, str(path))


def describe(error: dict[str, Any]) -> str:
    """One pydantic error as `field.path: message`."""
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required field is missing"
    return f"{path}: {message}"
