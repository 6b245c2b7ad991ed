"""`grade(grader, sample, item)`: one sample scored, returned in the shape of OpenAI's
`GraderRunResponse` (openai.types.fine_tuning.alpha) so that the gateway can return it as it
is, and an RL loop can read `reward`."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gemlora.evals.errors import GraderError
from gemlora.evals.formula import evaluate
from gemlora.evals.graders import (
    GraderModel,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    validate_grader,
)
from gemlora.evals.judge import Judge, label_with_judge, score_with_judge
from gemlora.evals.python_grader import PythonLimits, run_python_grader
from gemlora.evals.similarity import similarity
from gemlora.evals.templates import render


class GradeErrors(BaseModel):
    """OpenAI's `metadata.errors`: which kind of failure kept a sample from being graded."""

    model_config = ConfigDict(protected_namespaces=())

    formula_parse_error: bool = False
    invalid_variable_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_server_error: bool = False
    model_grader_server_error_details: str | None = None
    other_error: bool = False
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False


class GradeMetadata(BaseModel):
    errors: GradeErrors = Field(default_factory=GradeErrors)
    execution_time: float
    name: str
    sampled_model_name: str | None = None
    scores: dict[str, Any] = Field(default_factory=dict)
    token_usage: int | None = None
    type: str


class GradeResult(BaseModel):
    """OpenAI's GraderRunResponse: `reward` is the score, `sub_rewards` a multi grader's parts."""

    model_config = ConfigDict(protected_namespaces=())

    reward: float
    sub_rewards: dict[str, Any] = Field(default_factory=dict)
    metadata: GradeMetadata
    model_grader_token_usage_per_model: dict[str, Any] = Field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.reward

    @property
    def sub_scores(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.sub_rewards.items()}

    @classmethod
    def failed(cls, grader: GraderModel, error: GraderError, execution_time: float) -> GradeResult:
        """A response for a sample that could not be graded: reward 0 with the error's flag
        set, as OpenAI reports it. For a caller that must answer rather than raise."""
        errors = GradeErrors(**{error.flag: True})
        if error.flag == "python_grader_runtime_error":
            errors.python_grader_runtime_error_details = str(error)
        elif error.flag == "model_grader_server_error":
            errors.model_grader_server_error_details = str(error)
        metadata = GradeMetadata(
            errors=errors, execution_time=execution_time, name=grader.name, type=grader.type
        )
        return cls(reward=0.0, metadata=metadata)


def grade(
    grader: GraderModel | dict[str, Any],
    sample: dict[str, Any],
    item: dict[str, Any],
    judge: Judge | None = None,
    python_limits: PythonLimits | None = None,
) -> GradeResult:
    """Score one sample (`{"output_text": ...}`) of one item (the dataset row); a GraderError
    when it cannot be scored. `judge` serves model graders, `python_limits` python ones."""
    if isinstance(grader, dict):
        grader = validate_grader(grader)
    started = time.monotonic()
    limits = python_limits or PythonLimits()
    if isinstance(grader, MultiGrader):
        scores = {
            key: _score(sub, sample, item, judge, limits) for key, sub in grader.graders.items()
        }
        reward = evaluate(grader.calculate_output, scores)
    else:
        scores = {}
        reward = _score(grader, sample, item, judge, limits)
    metadata = GradeMetadata(
        execution_time=time.monotonic() - started,
        name=grader.name,
        type=grader.type,
        scores=scores,
    )
    return GradeResult(reward=reward, sub_rewards=scores, metadata=metadata)


def grade_or_failure(
    grader: GraderModel,
    sample: dict[str, Any],
    item: dict[str, Any],
    judge: Judge | None = None,
    python_limits: PythonLimits | None = None,
) -> GradeResult:
    """`grade`, with a sample that cannot be scored answered as OpenAI answers it: reward 0 and
    the error's flag (`GradeResult.failed`). What the graders endpoint returns and what an RL
    run is rewarded with. An item lacking a field the grader reads still raises GraderError
    (`invalid_variable_error`): the item is at fault, not the sample."""
    started = time.monotonic()
    try:
        return grade(grader, sample, item, judge=judge, python_limits=python_limits)
    except GraderError as error:
        if error.flag == "invalid_variable_error":
            raise
        return GradeResult.failed(grader, error, time.monotonic() - started)


def _score(
    grader: GraderModel,
    sample: dict[str, Any],
    item: dict[str, Any],
    judge: Judge | None,
    limits: PythonLimits,
) -> float:
    if isinstance(grader, StringCheckGrader):
        return _string_check(grader, sample, item)
    if isinstance(grader, TextSimilarityGrader):
        text, reference = render(grader.input, sample, item), render(grader.reference, sample, item)
        return similarity(grader.evaluation_metric, text, reference)
    if isinstance(grader, PythonGrader):
        return run_python_grader(grader.name, grader.source, sample, item, limits)
    if isinstance(grader, ScoreModelGrader):
        return score_with_judge(grader, sample, item, judge)
    if isinstance(grader, LabelModelGrader):
        return label_with_judge(grader, sample, item, judge)
    raise GraderError(f"a {grader.type} grader cannot be nested in a multi grader")


def _string_check(grader: StringCheckGrader, sample: dict[str, Any], item: dict[str, Any]) -> float:
    text, reference = render(grader.input, sample, item), render(grader.reference, sample, item)
    holds = {
        "eq": lambda: text == reference,
        "ne": lambda: text != reference,
        "like": lambda: reference in text,
        "ilike": lambda: reference.lower() in text.lower(),
    }[grader.operation]()
    return 1.0 if holds else 0.0
