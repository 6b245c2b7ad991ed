"""Is the candidate better than the baseline, on these items, beyond noise?

Both models answered the same items, so the comparison is paired: the per-item differences are
resampled with replacement (a paired bootstrap, percentile interval), which keeps each item's
own difficulty out of the noise. Wins, ties and losses count the items one by one.
"""

from __future__ import annotations

import random
from statistics import fmean

from pydantic import BaseModel

TIE = 1e-9


class Comparison(BaseModel):
    """One grader, a model against the baseline, over the items both were graded on."""

    grader: str
    model: str
    baseline: str
    items: int
    mean: float
    baseline_mean: float
    difference: float  # mean of the per-item differences (model - baseline)
    low: float  # the bootstrap interval of `difference`
    high: float
    confidence: float
    wins: int
    ties: int
    losses: int

    @property
    def better(self) -> bool:
        """The whole interval above zero."""
        return self.low > 0


def compare(
    grader: str,
    model: str,
    baseline: str,
    scores: list[float | None],
    baseline_scores: list[float | None],
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """`scores[i]` and `baseline_scores[i]` grade item i; items either could not be graded on
    (None) are left out of both."""
    pairs = [(a, b) for a, b in zip(scores, baseline_scores, strict=True) if None not in (a, b)]
    if not pairs:
        raise ValueError(f"{grader}: no item was graded for both {model} and {baseline}")
    differences = [a - b for a, b in pairs]
    low, high = paired_bootstrap(differences, samples, confidence, seed)
    return Comparison(
        grader=grader,
        model=model,
        baseline=baseline,
        items=len(pairs),
        mean=fmean(a for a, _ in pairs),
        baseline_mean=fmean(b for _, b in pairs),
        difference=fmean(differences),
        low=low,
        high=high,
        confidence=confidence,
        wins=sum(d > TIE for d in differences),
        ties=sum(abs(d) <= TIE for d in differences),
        losses=sum(d < -TIE for d in differences),
    )


def paired_bootstrap(
    differences: list[float], samples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """The percentile interval of the mean difference over `samples` resamples of the items."""
    rng = random.Random(seed)
    count = len(differences)
    means = sorted(fmean(rng.choices(differences, k=count)) for _ in range(samples))
    tail = (1 - confidence) / 2
    low = means[int(tail * (samples - 1))]
    high = means[round((1 - tail) * (samples - 1))]
    return low, high
