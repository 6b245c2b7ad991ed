"""Reference grammar and the metadata <-> MLflow tag mapping."""

from __future__ import annotations

import pytest

from gemlora.adapters import AdapterMetadata, AdapterRef, InvalidRefError, parse_ref


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("support-bot", AdapterRef("support-bot")),
        ("support-bot@champion", AdapterRef("support-bot", alias="champion")),
        ("support_bot.v2@canary-1", AdapterRef("support_bot.v2", alias="canary-1")),
        ("support-bot/12", AdapterRef("support-bot", version=12)),
    ],
)
def test_the_three_reference_forms(ref, parsed):
    assert parse_ref(ref) == parsed
    assert str(parsed) == ref


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("", "invalid adapter name ''"),
        ("bot@", "invalid alias ''"),
        ("bot@latest", "'latest' and version-like names such as 'v2' are reserved"),
        ("bot@v3", "'latest' and version-like names such as 'v2' are reserved"),
        ("bot/0", "invalid version '0': versions are positive integers"),
        ("bot/champion", "invalid version 'champion'"),
        ("bot@a/1", "expected NAME, NAME@ALIAS or NAME/VERSION"),
        ("bot@a@b", "expected NAME, NAME@ALIAS or NAME/VERSION"),
        (".bot", "starting with a letter or digit"),
        ("my bot", "invalid adapter name 'my bot'"),
    ],
)
def test_malformed_references_say_what_is_wrong(ref, why):
    with pytest.raises(InvalidRefError) as error:
        parse_ref(ref)
    assert str(error.value).startswith(f"invalid adapter reference {ref!r}: ")
    assert why in str(error.value)


def test_metadata_round_trips_through_mlflow_tags():
    metadata = AdapterMetadata(
        base="gemma-3-270m",
        base_family="gemma-3-270m",
        base_quantization="bnb-nf4",
        base_revision="abc123",
        rank=16,
        alpha=32,
        target_modules=r".*language_model.*\.(q_proj|v_proj)",
        chat_template_hash="3ac5a565ef4e61d6",
        dataset_digest="f" * 64,
        eval_scores={"eval_loss": 0.125, "accuracy": 0.9},
        extra={"owner": "team-a"},
    )
    tags = metadata.to_tags()
    assert tags["gemlora.base"] == "gemma-3-270m"
    assert tags["gemlora.eval.eval_loss"] == "0.125"
    assert tags["gemlora.extra.owner"] == "team-a"
    assert AdapterMetadata.from_tags(tags | {"mlflow.user": "x"}) == metadata
    assert AdapterMetadata.from_tags({"other": "tag"}) is None
