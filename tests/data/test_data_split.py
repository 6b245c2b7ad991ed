"""The train/eval split: deterministic, by content, stable when rows are appended."""

from __future__ import annotations

import pytest
from data_helpers import write_jsonl

from gemlora.data import Example, Message, TextPart, is_eval, read_dataset, split_examples


def examples(count: int, start: int = 0) -> list[Example]:
    return [
        Example(
            (
                Message("user", (TextPart(f"What is {n} plus 1?"),)),
                Message("assistant", (TextPart(str(n + 1)),), 1),
            )
        )
        for n in range(start, start + count)
    ]


def test_split_is_deterministic_and_near_the_fraction():
    first = split_examples(examples(1000), 0.1)
    again = split_examples(examples(1000), 0.1)
    assert first == again
    assert 70 <= len(first.eval) <= 130
    assert len(first.train) + len(first.eval) == 1000


def test_appending_rows_never_moves_existing_examples():
    before = split_examples(examples(300), 0.2)
    after = split_examples(examples(300) + examples(200, start=300), 0.2)
    assert after.train[: len(before.train)] == before.train
    assert after.eval[: len(before.eval)] == before.eval
    assert {e.digest() for e in before.eval} <= {e.digest() for e in after.eval}
    assert not {e.digest() for e in before.train} & {e.digest() for e in after.eval}


def test_order_does_not_matter_and_duplicates_stay_together():
    items = examples(200)
    forward, backward = split_examples(items, 0.3), split_examples(items[::-1], 0.3)
    assert set(map(Example.digest, forward.eval)) == set(map(Example.digest, backward.eval))
    doubled = split_examples(items + items, 0.3)
    assert not set(map(Example.digest, doubled.train)) & set(map(Example.digest, doubled.eval))


def test_seed_changes_the_split_and_edges_hold():
    items = examples(200)
    assert split_examples(items, 0.3, seed="a").eval != split_examples(items, 0.3, seed="b").eval
    assert split_examples(items, 0.0).eval == [] and split_examples(items, 1.0).train == []
    assert all(is_eval(e, 1.0) for e in items)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_examples(items, 1.5)


def test_the_same_content_splits_the_same_from_any_format(tmp_path):
    openai = [
        {
            "messages": [
                {"role": "user", "content": f"Q{n}"},
                {"role": "assistant", "content": f"A{n}"},
            ]
        }
        for n in range(60)
    ]
    sharegpt = [
        {"conversations": [{"from": "human", "value": f"Q{n}"}, {"from": "gpt", "value": f"A{n}"}]}
        for n in range(60)
    ]
    a = split_examples(read_dataset(write_jsonl(tmp_path / "a.jsonl", openai)).examples, 0.25)
    b = split_examples(read_dataset(write_jsonl(tmp_path / "b.jsonl", sharegpt)).examples, 0.25)
    assert a == b
