"""A version's verification record: how it reads, what it allows, how it is shown; and how a
prompt check decides (greedy tokens, else the log-probability gap)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gemlora.adapters.verification import (
    VERIFY_TAG,
    Verification,
    allows_promotion,
    describe,
    state_of,
    summary,
    verification_of,
)
from gemlora.adapters.verify import PromptCheck, VerifyReport, builtin_image_prompts, prompts_digest


def record(passed: bool, **fields) -> dict[str, str]:
    verification = Verification(
        passed=passed,
        agreement=1.0 if passed else 0.25,
        compared_by="tokens" if passed else "tokens+logprobs",
        tolerance=0.05,
        max_logprob_gap=0.01 if passed else 0.7,
        prompts=6,
        image_prompts=2,
        prompts_digest="abc",
        engine_base="tiny-gemma-3-mm",
        checked_at=datetime(2026, 12, 4, tzinfo=UTC),
        **fields,
    )
    return {VERIFY_TAG: verification.to_tag()}


@pytest.mark.parametrize(
    ("tags", "rule", "allowed"),
    [
        ({}, "not_failed", True),  # never verified: no engine was reachable
        ({}, "passed", False),
        ("passed", "not_failed", True),
        ("passed", "passed", True),
        ("failed", "not_failed", False),
        ("failed", "passed", False),
        ("failed", "ignore", True),
    ],
)
def test_promotion_follows_the_verification_rule(tags, rule, allowed):
    tags = record(tags == "passed") if isinstance(tags, str) else tags
    assert allows_promotion(tags, rule) is allowed


def test_the_record_reads_back_and_is_described_for_tables_and_v1_models():
    passed, failed = record(True), record(False)
    assert verification_of(passed).passed and state_of(passed) == "passed"
    assert describe(passed) == "passed (tokens, 100%)"
    assert describe(failed) == "failed (agreement 25%, gap 0.70 > 0.05)"
    refused = record(False, refused="400 incompatible_adapter")
    assert describe(refused) == "failed (the engine refused it)"
    assert summary(passed)["state"] == "passed" and summary({}) == {"state": "unverified"}
    assert describe({}) == "-"


def test_a_record_of_the_old_form_counts_as_unverified_not_as_passed():
    old = {VERIFY_TAG: json.dumps({"agreement": 1.0, "identical": True, "base": "x"})}
    assert verification_of(old) is None and state_of(old) == "unverified"


def check(reference, served, gap) -> PromptCheck:
    return PromptCheck(prompt="p", reference=reference, served=served, max_logprob_gap=gap)


def test_equal_tokens_pass_and_a_near_tie_passes_only_within_the_tolerance():
    assert check([1, 2, 3], [1, 2, 3], 0.3).passed(0.05)  # greedy tokens decide
    assert check([1, 2, 3], [1, 4, 5], 0.02).passed(0.05)  # flipped near-tie
    assert not check([1, 2, 3], [1, 4, 5], 0.6).passed(0.05)  # the engine serves another model
    report = VerifyReport(
        ref="a", version_ref="a/1", base="b", quantization="none", dtype="fp32", tokens=3,
        tolerance=0.05, prompts_digest="d", checked_at=datetime.now(UTC),
        prompts=[check([1, 2, 3], [1, 2, 3], 0.0), check([1, 2, 3], [1, 4, 5], 0.02)],
    )  # fmt: skip
    verification = report.verification()
    assert verification.passed and verification.compared_by == "tokens+logprobs"
    assert verification.agreement == round(4 / 6, 4)


def test_the_prompts_digest_follows_the_pixels():
    square, stripes = builtin_image_prompts()
    assert prompts_digest([square]) == prompts_digest(builtin_image_prompts()[:1])
    assert prompts_digest([square]) != prompts_digest([stripes])
