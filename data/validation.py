"""`validate_dataset`: read a dataset, measure it with a model, and sum it up;
`validate_preferences` and `validate_prompts`: the same for preference (DPO) datasets and for
reinforcement prompts (RFT).

This is what `gemlora data validate` prints and what training uses to get its examples:
`report.examples` holds the examples that passed every check, the length policy included.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gemlora.data.example import DatasetError, Example, HasProblems, Problem
from gemlora.data.formats import DatasetFormat, PreferenceFormat, PromptFormat
from gemlora.data.preference import PreferenceExample
from gemlora.data.prompts import PromptExample
from gemlora.data.reader import (
    PreferenceReadResult,
    PromptReadResult,
    ReadOptions,
    ReadResult,
    read_dataset,
    read_preferences,
    read_prompts,
)
from gemlora.data.tokens import (
    OverlongPolicy,
    TokenCounter,
    apply_length_policy,
    apply_preference_length_policy,
    apply_prompt_length_policy,
    load_token_counter,
    measure_preference_tokens,
    measure_prompt_tokens,
    measure_tokens,
)


@dataclass(frozen=True)
class LengthStats:
    """Token lengths; the median and p95 are nearest-rank, so every value is a real length."""

    min: int
    median: int
    p95: int
    max: int

    @classmethod
    def of(cls, lengths: list[int]) -> LengthStats | None:
        if not lengths:
            return None
        ordered = sorted(lengths)
        return cls(ordered[0], _rank(ordered, 0.5), _rank(ordered, 0.95), ordered[-1])


def _rank(ordered: list[int], quantile: float) -> int:
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


class _Summary(HasProblems):
    """What `gemlora data validate` prints of any kind of report."""

    examples: list
    max_length: int | None

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.examples)

    def length_stats(self) -> LengthStats | None:
        return LengthStats.of(self.longest())

    def longest(self) -> list[int]:
        raise NotImplementedError

    def images_per_example(self) -> dict[int, int]:
        """Number of images -> number of examples with that many."""
        return dict(sorted(Counter(len(example.images) for example in self.examples).items()))


@dataclass
class DatasetReport(_Summary):
    read: ReadResult
    examples: list[Example]  # the usable ones
    problems: list[Problem]
    model: str | None = None
    token_lengths: list[int] | None = None  # of `examples`, when a model was given
    max_length: int | None = None

    def longest(self) -> list[int]:
        return self.token_lengths or []


@dataclass
class PreferenceReport(_Summary):
    read: PreferenceReadResult
    examples: list[PreferenceExample]  # the usable ones
    problems: list[Problem]
    model: str | None = None
    # (prompt + chosen, prompt + rejected) of each of `examples`, when a model was given
    token_lengths: list[tuple[int, int]] | None = None
    max_length: int | None = None

    def longest(self) -> list[int]:
        """Prompt + the longer reply, per pair: what the length policy compares."""
        return [max(pair) for pair in self.token_lengths or []]


@dataclass
class PromptReport(_Summary):
    read: PromptReadResult
    examples: list[PromptExample]  # the usable ones
    problems: list[Problem]
    model: str | None = None
    # each of `examples`' prompt tokens with the generation prompt, when a model was given
    token_lengths: list[int] | None = None
    max_length: int | None = None
    completion_tokens: int = 0  # room left for each completion within `max_length`

    def longest(self) -> list[int]:
        """The prompts' own lengths (the length policy adds `completion_tokens` to each)."""
        return self.token_lengths or []


def validate_dataset(
    path: str | Path,
    format: DatasetFormat | None = None,
    *,
    options: ReadOptions | None = None,
    model: str | TokenCounter | None = None,
    max_length: int | None = None,
    overlong: OverlongPolicy = "refuse",
) -> DatasetReport:
    """Read and check a dataset; with a model, also measure token lengths and apply the
    over-long policy (`max_length` defaults to the base's context length)."""
    options = options or ReadOptions()
    read = read_dataset(path, format, options=options)
    report = DatasetReport(read, list(read.examples), list(read.problems))
    policy = partial(apply_length_policy, policy=overlong)
    return _measured(report, options, model, max_length, measure_tokens, policy)


def validate_preferences(
    path: str | Path,
    format: PreferenceFormat | None = None,
    *,
    options: ReadOptions | None = None,
    model: str | TokenCounter | None = None,
    max_length: int | None = None,
    overlong: OverlongPolicy = "refuse",
) -> PreferenceReport:
    """`validate_dataset` for preference datasets: with a model, prompt + chosen and prompt +
    rejected are both measured, and a pair whose longer side is over `max_length` is refused or
    dropped."""
    options = options or ReadOptions()
    read = read_preferences(path, format, options=options)
    report = PreferenceReport(read, list(read.examples), list(read.problems))
    policy = partial(apply_preference_length_policy, policy=overlong)
    return _measured(report, options, model, max_length, measure_preference_tokens, policy)


def validate_prompts(
    path: str | Path,
    format: PromptFormat | None = None,
    *,
    options: ReadOptions | None = None,
    model: str | TokenCounter | None = None,
    max_length: int | None = None,
    overlong: OverlongPolicy = "refuse",
    completion_tokens: int = 0,
) -> PromptReport:
    """`validate_dataset` for reinforcement prompt datasets: with a model, each prompt is
    measured rendered with the generation prompt, and one whose tokens plus `completion_tokens`
    (the room its completions need) are over `max_length` is refused or dropped."""
    options = options or ReadOptions()
    read = read_prompts(path, format, options=options)
    report = PromptReport(read, list(read.examples), list(read.problems))
    report.completion_tokens = completion_tokens
    policy = partial(
        apply_prompt_length_policy, policy=overlong, completion_tokens=completion_tokens
    )
    return _measured(report, options, model, max_length, measure_prompt_tokens, policy)


def _measured(report, options, model, max_length, measure, apply_policy):
    """With a model: the report's examples measured (`measure`), and the over-long ones
    refused or dropped (`apply_policy(examples, lengths, max_length)`)."""
    if model is None:
        return report
    counter = model if isinstance(model, TokenCounter) else load_token_counter(model)
    report.model = counter.name
    report.max_length = max_length or counter.max_length
    lengths = measure(report.examples, counter)
    report.examples, report.token_lengths, problems = apply_policy(
        report.examples, lengths, report.max_length
    )
    report.problems += problems
    _raise_if_strict(options, problems, report.problems)
    return report


def _raise_if_strict(options: ReadOptions, found: list[Problem], problems: list[Problem]) -> None:
    refused = [p for p in found if p.severity == "error"]
    if options.strict and refused:
        raise DatasetError(refused[0], problems)
