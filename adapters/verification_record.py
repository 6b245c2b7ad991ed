"""A version's verification state: what `gemlora adapters verify` recorded on it, and what that
allows. The check itself is `gemlora.adapters.fidelity_check`; this module only reads and writes
the record, so the registry, the CLI and the gateway can use it without loading a model.

The `gemlora.verify` tag holds one of two records: a `Verification` (the check ran: passed or
failed) or an `ErroredVerification` (the check itself broke, with the reason). A version without
the tag, or with a record this module cannot read, is unverified. Promotion fails closed: by
default (`passed`) only a passed check lets `promote_if` move an alias.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

VERIFY_TAG = "gemlora.verify"
# nats. Measured on the tiny multimodal model, PEFT vs vLLM in fp32: text prompts 0.0 (equal
# tokens), image prompts up to 0.056 (the random SigLIP tower amplifies float differences); an
# adapter whose vision weights were dropped: 0.6 and more.
DEFAULT_TOLERANCE = 0.1

State = Literal["passed", "failed", "error", "unverified"]
# What `promote_if` asks of a version's verification before it moves an alias.
PromotionRule = Literal["passed", "not_failed", "ignore"]
DEFAULT_PROMOTION_RULE: PromotionRule = "passed"
# How checks before `logprobs` judged: equal greedy tokens passed a prompt on their own.
_TOKEN_COMPARISONS = ("tokens", "tokens+logprobs")


class Verification(BaseModel):
    """The `gemlora.verify` tag of a model version the check ran on."""

    passed: bool
    agreement: float = Field(description="Share of compared tokens inside agreeing prefixes.")
    compared_by: Literal["logprobs", "tokens", "tokens+logprobs"] = Field(
        description="`logprobs`: at every position of every prompt, PEFT gave the engine's top "
        "tokens the log-probabilities the engine gave them, within `tolerance` (equal greedy "
        "tokens are not enough). `tokens`, `tokens+logprobs`: records of the older check, which "
        "passed a prompt on equal greedy tokens alone; such a pass reads as unverified."
    )
    tolerance: float = Field(description="Largest log-probability gap that passes (nats).")
    max_logprob_gap: float = Field(description="Largest gap measured over the engine's top tokens.")
    prompts: int
    image_prompts: int = 0
    prompts_digest: str = ""
    engine_base: str = Field(description="The base the engine served.")
    quantization: str = Field(default="none", description="That base's quantization.")
    dtype: str = Field(default="", description="The precision both sides computed in.")
    checked_at: datetime
    refused: str | None = Field(
        default=None, description="Set when the engine would not serve the version at all."
    )

    @property
    def state(self) -> State:
        if not self.passed:
            return "failed"  # a failure under the older, weaker rule fails under this one too
        return "unverified" if self.compared_by in _TOKEN_COMPARISONS else "passed"

    def to_tag(self) -> str:
        return self.model_dump_json()


class ErroredVerification(BaseModel):
    """The `gemlora.verify` tag of a version whose check broke (the verifier raised): neither
    passed nor failed, and not promotable under `passed` or `not_failed`."""

    state: Literal["error"] = "error"
    error: str = Field(description="What broke: `ExceptionType: message`.")
    engine_base: str = Field(default="", description="The base the engine served, if known.")
    checked_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def to_tag(self) -> str:
        return self.model_dump_json()


Record = Verification | ErroredVerification


def error_record(error: BaseException | str, engine_base: str = "") -> ErroredVerification:
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return ErroredVerification(error=reason, engine_base=engine_base)


def record_of(tags: dict[str, str]) -> Record | None:
    """The recorded verification or error, or None when there is none this code can read (never
    verified, or a record of an older form: both count as unverified)."""
    raw = tags.get(VERIFY_TAG)
    if raw is None:
        return None
    try:
        document = json.loads(raw)
        if isinstance(document, dict) and document.get("state") == "error":
            return ErroredVerification.model_validate(document)
        return Verification.model_validate(document)
    except (ValueError, ValidationError):
        return None


def verification_of(tags: dict[str, str]) -> Verification | None:
    """The recorded check, or None when the check never ran to a result (never verified, a
    record of an older form, or an error: see `state_of`)."""
    record = record_of(tags)
    return record if isinstance(record, Verification) else None


def state_of(tags: dict[str, str]) -> State:
    record = record_of(tags)
    return record.state if record else "unverified"


def allows_promotion(tags: dict[str, str], rule: PromotionRule) -> bool:
    """`passed` (the default): only a passed check. `not_failed` (an explicit opt-in, e.g. where
    no engine runs): passed or unverified; a failed check or an error still blocks. `ignore`:
    anything."""
    state = state_of(tags)
    if rule == "ignore":
        return True
    if rule == "not_failed":
        return state in ("passed", "unverified")
    return state == "passed"


def describe(tags: dict[str, str]) -> str:
    """One line for tables: `passed (logprobs, 100%)`, `failed (gap 0.81 > 0.1)`,
    `error (ConnectError: ...)`, `-`."""
    record = record_of(tags)
    if record is None:
        return "-"
    if isinstance(record, ErroredVerification):
        return f"error ({_shorten(record.error)})"
    if record.state == "unverified":
        return f"- (old check by {record.compared_by}: verify again)"
    if record.passed:
        return f"passed ({record.compared_by}, {record.agreement:.0%})"
    if record.refused:
        return "failed (the engine refused it)"
    return (
        f"failed (agreement {record.agreement:.0%}, "
        f"gap {record.max_logprob_gap:.2f} > {record.tolerance:g})"
    )


def summary(tags: dict[str, str]) -> dict:
    """What GET /v1/models shows of a version's verification."""
    record = record_of(tags)
    if record is None:
        return {"state": "unverified"}
    if isinstance(record, ErroredVerification):
        return {
            "state": "error",
            "error": record.error,
            "engine_base": record.engine_base,
            "checked_at": int(record.checked_at.timestamp()),
        }
    return {
        "state": record.state,
        "compared_by": record.compared_by,
        "agreement": record.agreement,
        "engine_base": record.engine_base,
        "checked_at": int(record.checked_at.timestamp()),
    }


def _shorten(text: str, limit: int = 80) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
