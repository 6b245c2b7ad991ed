"""A version's verification state: what `gemlora adapters verify` recorded on it, and what that
allows. The check itself is `gemlora.adapters.verify`; this module only reads and writes the
record, so the registry, the CLI and the gateway can use it without loading a model."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

VERIFY_TAG = "gemlora.verify"
# nats. Measured on the tiny multimodal model, PEFT vs vLLM in fp32: text prompts 0.0 (equal
# tokens), image prompts up to 0.056 (the random SigLIP tower amplifies float differences); an
# adapter whose vision weights were dropped: 0.6 and more.
DEFAULT_TOLERANCE = 0.1

State = Literal["passed", "failed", "unverified"]
# What `promote_if` asks of a version's verification before it moves an alias.
PromotionRule = Literal["not_failed", "passed", "ignore"]


class Verification(BaseModel):
    """The `gemlora.verify` tag of a model version."""

    passed: bool
    agreement: float = Field(description="Share of compared tokens inside agreeing prefixes.")
    compared_by: Literal["tokens", "tokens+logprobs"] = Field(
        description="`tokens`: every prompt's greedy tokens were equal; `tokens+logprobs`: some "
        "differed and were judged by the log-probability gap."
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
        return "passed" if self.passed else "failed"

    def to_tag(self) -> str:
        return self.model_dump_json()


def verification_of(tags: dict[str, str]) -> Verification | None:
    """The recorded verification, or None when the version was never verified. A record of an
    older form counts as never verified rather than as passed."""
    raw = tags.get(VERIFY_TAG)
    if raw is None:
        return None
    try:
        return Verification.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None


def state_of(tags: dict[str, str]) -> State:
    verification = verification_of(tags)
    return verification.state if verification else "unverified"


def allows_promotion(tags: dict[str, str], rule: PromotionRule) -> bool:
    """`not_failed`: anything but a failed verification; `passed`: only a passed one."""
    state = state_of(tags)
    if rule == "ignore":
        return True
    return state == "passed" if rule == "passed" else state != "failed"


def describe(tags: dict[str, str]) -> str:
    """One line for tables: `passed (tokens, 100%)`, `failed (gap 0.81 > 0.1)`, `-`."""
    verification = verification_of(tags)
    if verification is None:
        return "-"
    if verification.passed:
        return f"passed ({verification.compared_by}, {verification.agreement:.0%})"
    if verification.refused:
        return "failed (the engine refused it)"
    return (
        f"failed (agreement {verification.agreement:.0%}, "
        f"gap {verification.max_logprob_gap:.2f} > {verification.tolerance:g})"
    )


def summary(tags: dict[str, str]) -> dict:
    """What GET /v1/models shows of a version's verification."""
    verification = verification_of(tags)
    if verification is None:
        return {"state": "unverified"}
    return {
        "state": verification.state,
        "compared_by": verification.compared_by,
        "agreement": verification.agreement,
        "engine_base": verification.engine_base,
        "checked_at": int(verification.checked_at.timestamp()),
    }
