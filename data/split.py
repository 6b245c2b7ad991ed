"""A deterministic train/eval split by example content.

Each example's side depends only on its own digest (and an optional seed), so appending rows
never moves an existing example to the other side, and duplicates always land together: the
eval set cannot contain a copy of a training example.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import NamedTuple

from gemlora.data.example import Example


class Split(NamedTuple):
    train: list[Example]
    eval: list[Example]


def eval_score(example: Example, seed: str = "") -> float:
    """A number in [0, 1) fixed by the example's content: below the eval fraction means eval."""
    digest = hashlib.sha256(f"{seed}:{example.digest()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_eval(example: Example, eval_fraction: float, seed: str = "") -> bool:
    return eval_score(example, seed) < eval_fraction


def split_examples(
    examples: Iterable[Example], eval_fraction: float = 0.1, *, seed: str = ""
) -> Split:
    if not 0 <= eval_fraction <= 1:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    split = Split([], [])
    for example in examples:
        (split.eval if is_eval(example, eval_fraction, seed) else split.train).append(example)
    return split
