"""`validate_dataset`: read a dataset, measure it with a model, and sum it up.

This is what `gemlora data validate` prints and what training uses to get its examples:
`report.examples` holds the examples that passed every check, the length policy included.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gemlora.data.example import DatasetError, Example, HasProblems, Problem
from gemlora.data.formats import DatasetFormat
from gemlora.data.reader import ReadOptions, ReadResult, read_dataset
from gemlora.data.tokens import (
    OverlongPolicy,
    TokenCounter,
    apply_length_policy,
    load_token_counter,
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


@dataclass
class DatasetReport(HasProblems):
    read: ReadResult
    examples: list[Example]  # the usable ones
    problems: list[Problem]
    model: str | None = None
    token_lengths: list[int] | None = None  # of `examples`, when a model was given
    max_length: int | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.examples)

    def length_stats(self) -> LengthStats | None:
        return LengthStats.of(self.token_lengths or [])

    def images_per_example(self) -> dict[int, int]:
        """Number of images -> number of examples with that many."""
        return dict(sorted(Counter(len(example.images) for example in self.examples).items()))


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
    if model is None:
        return report
    counter = model if isinstance(model, TokenCounter) else load_token_counter(model)
    report.model = counter.name
    report.max_length = max_length or counter.max_length
    lengths = measure_tokens(report.examples, counter)
    report.examples, report.token_lengths, problems = apply_length_policy(
        report.examples, lengths, report.max_length, overlong
    )
    report.problems += problems
    refused = [p for p in problems if p.severity == "error"]
    if options.strict and refused:
        raise DatasetError(refused[0], report.problems)
    return report
