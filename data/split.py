"""A deterministic train/eval split by example content.

Each example's side depends only on its own digest (and an optional seed), so appending rows
never moves an existing example to the other side, and duplicates always land together: the
eval set cannot contain a copy of a training example. SFT, preference and prompt examples split
alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Generic, NamedTuple, TypeVar

from gemlora.data.example import Digestible

T = TypeVar("T", bound=Digestible)


class Split(NamedTuple, Generic[T]):
    train: list[T]
    eval: list[T]


def eval_score(example: Digestible, seed: str = "") -> float:
    """A number in [0, 1) fixed by the example's content: below the eval fraction means eval."""
    return digest_score(example.digest(), seed)


def digest_score(digest: str, seed: str = "") -> float:
    hashed = hashlib.sha256(f"{seed}:{digest}".encode()).digest()
    return int.from_bytes(hashed[:8], "big") / 2**64


def is_eval(example: Digestible, eval_fraction: float, seed: str = "") -> bool:
    return eval_score(example, seed) < eval_fraction


def split_examples(
    examples: Iterable[T],
    eval_fraction: float = 0.1,
    *,
    seed: str = "",
    by: Callable[[T], str] | None = None,
) -> Split[T]:
    """`by(example)` gives the digest that decides the side (default: the example's own), e.g.
    a preference pair's `chosen_example().digest()` to split as the SFT set of its chosen
    replies does."""
    if not 0 <= eval_fraction <= 1:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    digest_of = by or _own_digest
    split: Split[T] = Split([], [])
    for example in examples:
        held_out = digest_score(digest_of(example), seed) < eval_fraction
        (split.eval if held_out else split.train).append(example)
    return split


def _own_digest(example: Digestible) -> str:
    return example.digest()
