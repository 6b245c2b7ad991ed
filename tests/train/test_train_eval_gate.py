"""The eval gate's rule and its config: what passes, what is refused, and why it says so. (The
gate on a real engine and MLflow: tests/serve/test_serve_eval.py.)"""

from __future__ import annotations

import pytest

from gemlora.config import ConfigError
from gemlora.evals.stats import compare
from gemlora.train import parse_config
from gemlora.train.config import EvalGate
from gemlora.train.eval_gate import decide

SIGNED = {
    "type": "string_check",
    "name": "signed",
    "input": "{{sample.output_text}}",
    "reference": "Captain Gem",
    "operation": "like",
}
CLOSE = SIGNED | {"name": "close", "operation": "ilike"}


def comparison(grader: str, candidate: list[float], holder: list[float]):
    return compare(grader, "new", "old", candidate, holder, samples=500)


def test_a_clearly_better_candidate_passes():
    passed, reason = decide(
        EvalGate(grader="signed"),
        [comparison("signed", [1] * 8, [0] * 8), comparison("close", [1] * 8, [1] * 8)],
    )
    assert passed and reason.startswith("signed +1.000 [+1.000, +1.000], 8/0/0")


def test_an_interval_straddling_zero_does_not_pass():
    mixed = comparison("signed", [1, 0, 1, 0, 1, 0, 1, 1], [0, 1, 0, 1, 0, 1, 1, 0])
    assert mixed.low < 0 < mixed.high
    passed, reason = decide(EvalGate(grader="signed"), [mixed])
    assert not passed and "is not above 0" in reason


def test_a_regression_on_another_grader_beyond_the_tolerance_does_not_pass():
    better = comparison("signed", [1] * 8, [0] * 8)
    worse = comparison("close", [0.8] * 8, [1.0] * 8)
    passed, reason = decide(EvalGate(grader="signed", tolerance=0.1), [better, worse])
    assert not passed and "close fell by 0.200 (tolerance 0.1)" in reason
    assert decide(EvalGate(grader="signed", tolerance=0.25), [better, worse])[0]


def config(**gate_and_more) -> dict:
    eval_section = gate_and_more.pop("eval", {"graders": [SIGNED, CLOSE]})
    output = {
        "name": "bot",
        "verify": {"engine_url": "http://127.0.0.1:8100"},
        "promote_if": {"gate": {"grader": "signed"}},
    } | gate_and_more
    return {
        "base": {"model": "gemma-3-270m"},
        "data": {"train_file": "train.jsonl"},
        "eval": eval_section,
        "output": output,
    }


def test_the_gate_config_names_what_is_missing():
    assert parse_config(config()).output.promote_if.gate.grader == "signed"
    with pytest.raises(ConfigError, match=r"promote_if\.gate\.grader: .*'nope' is not one of"):
        parse_config(config(promote_if={"gate": {"grader": "nope"}}))
    with pytest.raises(ConfigError, match=r"output\.verify\.engine_url: .*eval gate runs on"):
        parse_config(config(verify={"engine_url": None}))
    with pytest.raises(ConfigError, match=r"eval\.graders: \[0\] string_check\.operation"):
        parse_config(config(eval={"graders": [SIGNED | {"operation": "sounds_like"}]}))
    with pytest.raises(ConfigError, match="grader names must differ"):
        parse_config(config(eval={"graders": [SIGNED, SIGNED]}))
