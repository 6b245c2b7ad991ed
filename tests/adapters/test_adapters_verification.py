"""A version's verification record: how it reads, what it allows, how it is shown; and how a
prompt check decides (the log-probability gap at every position, whatever the greedy tokens)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gemlora.adapters.fidelity_check import (
    PromptCheck,
    VerifyReport,
    builtin_image_prompts,
    prompts_digest,
)
from gemlora.adapters.verification_record import (
    DEFAULT_PROMOTION_RULE,
    VERIFY_TAG,
    ErroredVerification,
    Verification,
    allows_promotion,
    describe,
    error_record,
    record_of,
    state_of,
    summary,
    verification_of,
)


def record(passed: bool, compared_by: str = "logprobs", **fields) -> dict[str, str]:
    verification = Verification(
        passed=passed,
        agreement=1.0 if passed else 0.25,
        compared_by=compared_by,
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


ERROR = {VERIFY_TAG: error_record(ConnectionError("engine hung up"), "tiny-gemma-3-mm").to_tag()}
STATES = {
    "unverified": {},
    "passed": record(True),
    "failed": record(False),
    "error": ERROR,
    "malformed": {VERIFY_TAG: "{not json"},
    "old pass": record(True, compared_by="tokens"),  # equal greedy tokens passed on their own
}


@pytest.mark.parametrize(
    ("state", "rule", "allowed"),
    [
        ("unverified", "passed", False),  # no engine was reachable: not promoted by default
        ("malformed", "passed", False),
        ("old pass", "passed", False),
        ("error", "passed", False),
        ("failed", "passed", False),
        ("passed", "passed", True),
        ("unverified", "not_failed", True),  # the explicit opt-in where no engine runs
        ("old pass", "not_failed", True),
        ("passed", "not_failed", True),
        ("error", "not_failed", False),  # a check that broke is not "not failed"
        ("failed", "not_failed", False),
        ("failed", "ignore", True),
        ("error", "ignore", True),
    ],
)
def test_promotion_follows_the_verification_rule(state, rule, allowed):
    assert allows_promotion(STATES[state], rule) is allowed


def test_promotion_fails_closed_by_default():
    assert DEFAULT_PROMOTION_RULE == "passed"
    for state in ("unverified", "malformed", "old pass", "error", "failed"):
        assert not allows_promotion(STATES[state], DEFAULT_PROMOTION_RULE), state


def test_the_record_reads_back_and_is_described_for_tables_and_v1_models():
    passed, failed = record(True), record(False)
    assert verification_of(passed).passed and state_of(passed) == "passed"
    assert describe(passed) == "passed (logprobs, 100%)"
    assert describe(failed) == "failed (agreement 25%, gap 0.70 > 0.05)"
    refused = record(False, refused="400 incompatible_adapter")
    assert describe(refused) == "failed (the engine refused it)"
    assert summary(passed)["state"] == "passed" and summary({}) == {"state": "unverified"}
    assert summary(passed)["compared_by"] == "logprobs"
    assert describe({}) == "-"


def test_an_error_is_its_own_state_with_its_reason():
    errored = record_of(ERROR)
    assert isinstance(errored, ErroredVerification)
    assert errored.error == "ConnectionError: engine hung up"
    assert state_of(ERROR) == "error" and verification_of(ERROR) is None
    assert describe(ERROR) == "error (ConnectionError: engine hung up)"
    shown = summary(ERROR)
    assert shown["state"] == "error" and shown["error"] == "ConnectionError: engine hung up"
    assert shown["engine_base"] == "tiny-gemma-3-mm"


def test_a_record_of_an_older_form_counts_as_unverified_not_as_passed():
    old = {VERIFY_TAG: json.dumps({"agreement": 1.0, "identical": True, "base": "x"})}
    assert verification_of(old) is None and state_of(old) == "unverified"
    # The previous check passed equal greedy tokens without looking at the gap: such a pass
    # proves too little. Its failures were failures by the gap, and still are.
    for compared_by in ("tokens", "tokens+logprobs"):
        assert state_of(record(True, compared_by=compared_by)) == "unverified"
        assert state_of(record(False, compared_by=compared_by)) == "failed"
    assert describe(STATES["old pass"]) == "- (old check by tokens: verify again)"


def check(reference, served, gap) -> PromptCheck:
    return PromptCheck(prompt="p", reference=reference, served=served, max_logprob_gap=gap)


def test_a_prompt_is_judged_by_the_log_probability_gap_even_when_the_tokens_are_equal():
    assert not check([1, 2, 3], [1, 2, 3], 0.3).passed(0.05)  # equal tokens are not enough
    assert check([1, 2, 3], [1, 2, 3], 0.01).passed(0.05)
    assert check([1, 2, 3], [1, 4, 5], 0.02).passed(0.05)  # flipped near-tie
    assert not check([1, 2, 3], [1, 4, 5], 0.6).passed(0.05)  # the engine serves another model


def report(*checks: PromptCheck) -> VerifyReport:
    return VerifyReport(
        ref="a", version_ref="a/1", base="b", quantization="none", dtype="fp32", tokens=3,
        tolerance=0.05, prompts_digest="d", checked_at=datetime.now(UTC), prompts=list(checks),
    )  # fmt: skip


def test_the_report_is_compared_by_logprobs_and_fails_on_any_gap_over_the_tolerance():
    near_tie = report(check([1, 2, 3], [1, 2, 3], 0.0), check([1, 2, 3], [1, 4, 5], 0.02))
    verification = near_tie.verification()
    assert verification.passed and verification.compared_by == "logprobs"
    assert verification.agreement == round(4 / 6, 4) and verification.state == "passed"
    # Every greedy token equal, one prompt's log-probabilities moved: failed.
    moved = report(check([1, 2, 3], [1, 2, 3], 0.0), check([1, 2, 3], [1, 2, 3], 0.4))
    assert moved.identical and not moved.passed
    assert moved.verification().state == "failed"
    assert moved.verification().max_logprob_gap == 0.4


def test_the_prompts_digest_follows_the_pixels():
    square, stripes = builtin_image_prompts()
    assert prompts_digest([square]) == prompts_digest(builtin_image_prompts()[:1])
    assert prompts_digest([square]) != prompts_digest([stripes])
