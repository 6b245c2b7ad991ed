"""What a version's eval gate decided (`gemlora.eval`, written by `gemlora.train.eval_gate`), as
`adapters show` and GET /v1/models show it next to the verification."""

from __future__ import annotations

import json

EVAL_TAG = "gemlora.eval"


def eval_summary(tags: dict[str, str]) -> dict | None:
    """The recorded decision (against, grader, passed, reason, means, interval, ...), or None
    when the version was never gated (or its tag is unreadable)."""
    try:
        summary = json.loads(tags[EVAL_TAG])
    except (KeyError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def describe_eval(tags: dict[str, str]) -> str:
    """One line for tables: `passed vs base (signed +1.00 [+1.00, +1.00])`, or `-`."""
    summary = eval_summary(tags)
    if summary is None:
        return "-"
    verdict = "passed" if summary.get("passed") else "not passed"
    against = summary.get("against", "?")
    if "interval" not in summary:
        return f"{verdict} vs {against}"
    low, high = summary["interval"]
    return (
        f"{verdict} vs {against} ({summary['grader']} {summary['difference']:+.2f} "
        f"[{low:+.2f}, {high:+.2f}])"
    )
