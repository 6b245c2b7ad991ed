"""score_model and label_model graders: templated messages to a judge model, its reply read.

The judge is injected, `judge(model, messages, sampling) -> reply text`, so that the caller
decides where the model runs (the gateway's own engine, or an OpenAI-compatible URL). Messages
are chat-completions dicts; `sampling` holds the grader's sampling_params under the
chat-completions names (max_completion_tokens, temperature, top_p, seed, reasoning_effort)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gemlora.evals.errors import GraderError
from gemlora.evals.graders import (
    InputAudio,
    InputImage,
    JudgeMessage,
    LabelModelGrader,
    SamplingParams,
    ScoreModelGrader,
)
from gemlora.evals.templates import render

Judge = Callable[[str, list[dict[str, Any]], dict[str, Any]], str]
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def score_with_judge(
    grader: ScoreModelGrader, sample: dict[str, Any], item: dict[str, Any], judge: Judge | None
) -> float:
    """The first number in the judge's reply, refused when outside the grader's range."""
    reply = _ask(grader, sample, item, judge)
    found = _NUMBER.search(reply)
    if found is None:
        raise GraderError(
            f"score_model {grader.name!r}: no number in the judge's reply {reply[:200]!r}",
            "model_grader_parse_error",
        )
    score, (low, high) = float(found.group()), grader.bounds
    if not low <= score <= high:
        raise GraderError(
            f"score_model {grader.name!r}: the judge's score {score:g} "
            f"is outside [{low:g}, {high:g}]",
            "model_grader_parse_error",
        )
    return score


def label_with_judge(
    grader: LabelModelGrader, sample: dict[str, Any], item: dict[str, Any], judge: Judge | None
) -> float:
    """1.0 when the judge's label is a passing one, 0.0 for another label, refused otherwise."""
    label = _ask(grader, sample, item, judge).strip()
    if label not in grader.labels:
        raise GraderError(
            f"label_model {grader.name!r}: the judge replied {label[:200]!r}, "
            f"not one of {grader.labels}",
            "model_grader_parse_error",
        )
    return 1.0 if label in grader.passing_labels else 0.0


def _ask(
    grader: ScoreModelGrader | LabelModelGrader,
    sample: dict[str, Any],
    item: dict[str, Any],
    judge: Judge | None,
) -> str:
    if judge is None:
        raise GraderError(f"{grader.type} {grader.name!r} needs a judge, and none was given")
    messages = [_message(message, sample, item) for message in grader.input]
    sampling = getattr(grader, "sampling_params", None) or SamplingParams()
    try:
        return judge(grader.model, messages, _sampling(sampling))
    except GraderError:
        raise
    except Exception as error:  # the judge is the caller's: report its failure as a grader's
        raise GraderError(
            f"{grader.type} {grader.name!r}: the judge {grader.model!r} failed: {error}",
            "model_grader_server_error",
        ) from error


def _message(message: JudgeMessage, sample: dict[str, Any], item: dict[str, Any]) -> dict:
    if isinstance(message.content, str):
        return {"role": message.role, "content": render(message.content, sample, item)}
    parts = message.content if isinstance(message.content, list) else [message.content]
    return {"role": message.role, "content": [_part(part, sample, item) for part in parts]}


def _part(part: Any, sample: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": render(part, sample, item)}
    if isinstance(part, InputImage):
        url = render(part.image_url, sample, item)
        return {"type": "image_url", "image_url": {"url": url, "detail": part.detail or "auto"}}
    if isinstance(part, InputAudio):
        raise GraderError("input_audio content: gemlora's judges (Gemma 3) take no audio")
    return {"type": "text", "text": render(part.text, sample, item)}


def _sampling(params: SamplingParams) -> dict[str, Any]:
    """The judge's sampling: greedy unless `sampling_params` say otherwise, so that the same
    answer gets the same grade (label_model graders have no sampling_params at all)."""
    named = {
        "max_completion_tokens": params.max_completions_tokens,
        "reasoning_effort": params.reasoning_effort,
        "seed": params.seed,
        "temperature": 0.0 if params.temperature is None else params.temperature,
        "top_p": params.top_p,
    }
    return {key: value for key, value in named.items() if value is not None}
