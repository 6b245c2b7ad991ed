"""Which references a hot-adapter list stands for, and the engine settings it needs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from gemlora.adapters import AdapterSummary
from gemlora.serve.engine import EngineConfig
from gemlora.serve.hot_adapters import expand


def summary(name: str, **aliases: int) -> AdapterSummary:
    return AdapterSummary(
        name=name,
        description="",
        version_count=2,
        latest_version=2,
        aliases=aliases,
        base="gemma-3-270m",
        updated_at=datetime.now(UTC),
    )


ADAPTERS = [
    summary("support-en", champion=2),
    summary("support-fr", candidate=1),
    summary("sales-en", champion=1),
]


@pytest.mark.parametrize(
    ("patterns", "refs"),
    [
        (["support-*@champion"], ["support-en@champion"]),  # support-fr has no champion
        (["support-*"], ["support-en", "support-fr"]),
        (["*-en/1", "sales-en@champion"], ["support-en/1", "sales-en/1", "sales-en@champion"]),
        (["support-en@champion", "support-?n@champion"], ["support-en@champion"]),  # once
        (["other-*"], []),
        (["not-registered@champion"], ["not-registered@champion"]),  # resolved (and refused) later
    ],
)
def test_patterns_expand_over_registered_names(patterns, refs):
    assert expand(patterns, ADAPTERS) == refs


def test_hot_adapters_need_a_free_batch_slot_and_valid_references():
    assert EngineConfig(base="gemma-3-270m", hot_adapters=["a@champion", "b-*"]).hot_adapters
    with pytest.raises(ValidationError, match="max_loras of at least 5"):
        EngineConfig(base="gemma-3-270m", max_loras=4, hot_adapters=["a", "b", "c", "d"])
    with pytest.raises(ValidationError, match="invalid adapter name"):
        EngineConfig(base="gemma-3-270m", hot_adapters=["bad name!"])
    with pytest.raises(ValidationError, match="enable_lora"):
        EngineConfig(base="gemma-3-270m", enable_lora=False, hot_adapters=["a"])
