"""`{{item.x.y}}` and `{{sample.output_text}}` templates, OpenAI's grader syntax, rendered by
a small regex (not Jinja: a grader's template is data from a user, never code to run).

`item` is the dataset row being graded; `sample` is the model's answer, whose `output_json` is
`output_text` parsed as JSON when the sample does not carry one of its own."""

from __future__ import annotations

import json
import re
from typing import Any

from gemlora.evals.errors import GraderError

NAMESPACES = ("item", "sample")
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = re.compile(r"^(?:item|sample)(?:\.[A-Za-z0-9_\-]+)+$")


def check_template(template: str) -> None:
    """Refuse bad syntax when the grader is validated, not on its first sample."""
    for match in _PLACEHOLDER.finditer(template):
        path = match.group(1).strip()
        if not _PATH.match(path):
            raise GraderError(
                f"template {template!r}: {{{{{match.group(1)}}}}} is not a path under "
                f"{' or '.join(NAMESPACES)} (like {{{{item.answer}}}})"
            )
    leftover = _PLACEHOLDER.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        raise GraderError(f"template {template!r}: an unclosed '{{{{' or a stray '}}}}'")


def render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    """Each placeholder replaced by its value: strings as they are, anything else as JSON."""
    check_template(template)
    scope = {"item": item, "sample": _with_output_json(sample)}
    return _PLACEHOLDER.sub(
        lambda m: _as_text(_lookup(m.group(1).strip(), scope, template)), template
    )


def _with_output_json(sample: dict[str, Any]) -> dict[str, Any]:
    if "output_json" in sample or not isinstance(sample.get("output_text"), str):
        return sample
    try:
        return {**sample, "output_json": json.loads(sample["output_text"])}
    except json.JSONDecodeError:
        return sample  # a lookup of output_json then names what is missing


def _lookup(path: str, scope: dict[str, Any], template: str) -> Any:
    value: Any = scope
    for depth, key in enumerate(path.split(".")):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            where = ".".join(path.split(".")[:depth]) or "the template"
            raise GraderError(
                f"template {template!r}: {where} has no {key!r} (looking up {path})",
                "sample_parse_error" if path.startswith("sample") else "invalid_variable_error",
            )
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def item_paths(value: Any) -> set[str]:
    """The `item.*` paths a grader's templates read (`value`: the grader as JSON; a python
    grader's `source` is code, not a template, and is skipped)."""
    if isinstance(value, str):
        paths = (m.group(1).strip() for m in _PLACEHOLDER.finditer(value))
        return {path for path in paths if path.startswith("item.")}
    if isinstance(value, dict):
        return set().union(*(item_paths(v) for k, v in value.items() if k != "source"))
    if isinstance(value, list):
        return set().union(*(item_paths(v) for v in value))
    return set()


def check_item(paths: set[str], item: dict[str, Any]) -> None:
    """Raises GraderError (`invalid_variable_error`) naming the first path `item` lacks."""
    for path in sorted(paths):
        _lookup(path, {"item": item}, "{{" + path + "}}")
