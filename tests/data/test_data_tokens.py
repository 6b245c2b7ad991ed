"""Token lengths with the bases' own processors and chat templates, and the over-long policy."""

from __future__ import annotations

import pytest
from data_helpers import png, write_jsonl

from gemlora.data import (
    DatasetError,
    Example,
    ImagePart,
    LengthStats,
    Message,
    ReadOptions,
    TextPart,
    apply_length_policy,
    decode_image,
    measure_tokens,
    validate_dataset,
)
from gemlora.data.images import ImageLimits

IMAGE_SOFT_TOKEN = 262144
BOS = 2


def image_example(images: int, question: str = "What colour is this?") -> Example:
    loaded = tuple(decode_image(png(c), ImageLimits()) for c in ("red", "blue", "green")[:images])
    parts = (*(ImagePart(i) for i in range(images)), TextPart(question))
    return Example((Message("user", parts), Message("assistant", (TextPart("red"),), 1)), loaded)


def text_example(system: str | None = None) -> Example:
    messages = [Message("user", (TextPart("Hi"),)), Message("assistant", (TextPart("Hello!"),), 1)]
    if system:
        messages.insert(0, Message("system", (TextPart(system),)))
    return Example(tuple(messages))


def test_images_are_counted_as_the_processor_expands_them(tiny_mm_counter):
    one, two = tiny_mm_counter.encode(image_example(1)), tiny_mm_counter.encode(image_example(2))

    assert one.count(IMAGE_SOFT_TOKEN) == 4
    assert two.count(IMAGE_SOFT_TOKEN) == 8
    # Each image: "\n\n<start_of_image>" + 4 soft tokens + "<end_of_image>\n\n" in place of the
    # template's single <start_of_image>.
    assert len(two) - len(one) == len(one) - tiny_mm_counter.count(image_example(0))
    assert one[0] == BOS and one[1] != BOS


def test_model_view_is_the_decoded_model_input(tiny_mm_counter):
    view = tiny_mm_counter.model_view(image_example(1))
    assert view == (
        "<bos><start_of_turn>user\n\n\n<start_of_image>"
        + "<image_soft_token>" * 4
        + "<end_of_image>\n\nWhat colour is this?<end_of_turn>\n"
        "<start_of_turn>model\nred<end_of_turn>\n"
    )


def test_text_base_uses_its_tokenizer_and_template(text_counter):
    example = text_example(system="Be brief.")
    rendered = text_counter.render(example)
    assert rendered == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
    )
    ids = text_counter.encode(example)
    assert ids == text_counter.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids[0] == BOS and ids[1] != BOS  # the template's <bos>, not doubled
    assert measure_tokens([example, text_example()], text_counter) == [
        len(ids),
        text_counter.count(text_example()),
    ]


def test_a_text_base_refuses_image_examples(text_counter):
    with pytest.raises(DatasetError, match="gemma-3-270m is a text-only model but 1 examples"):
        measure_tokens([text_example(), image_example(1)], text_counter)


def test_length_policy_drops_or_refuses_never_truncates():
    examples = [text_example(), text_example("long"), text_example()]
    lengths = [10, 50, 20]

    kept, kept_lengths, problems = apply_length_policy(examples, lengths, 20, "drop")
    assert kept_lengths == [10, 20] and len(kept) == 2
    assert [(p.severity, p.message) for p in problems] == [
        ("warning", "dropped: 50 tokens, over the max length of 20")
    ]

    kept, kept_lengths, problems = apply_length_policy(examples, lengths, 20, "refuse")
    assert kept_lengths == [10, 20]
    assert problems[0].severity == "error"
    assert problems[0].message.startswith("50 tokens, over the max length of 20")


def test_length_stats_are_nearest_rank():
    stats = LengthStats.of(list(range(20, 0, -1)))
    assert stats == LengthStats(min=1, median=10, p95=19, max=20)
    assert LengthStats.of([]) is None


def test_validate_dataset_measures_and_applies_the_policy(tmp_path, tiny_mm_counter):
    (tmp_path / "red.png").write_bytes(png("red"))
    short = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "red.png"}}]},
            {"role": "assistant", "content": "red"},
        ]
    }
    long = {
        "messages": [
            {"role": "user", "content": "word " * 40},
            {"role": "assistant", "content": "ok"},
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [short, long, short])

    report = validate_dataset(path, model=tiny_mm_counter, max_length=30, overlong="drop")
    assert report.ok
    assert [e.source.line for e in report.examples] == [1, 3]
    assert report.token_lengths == [tiny_mm_counter.count(e) for e in report.examples]
    assert report.images_per_example() == {1: 2}
    [warning] = report.warnings
    assert warning.source.line == 2 and warning.message.startswith("dropped: 52 tokens")

    refused = validate_dataset(path, model=tiny_mm_counter, max_length=30)
    assert not refused.ok and refused.errors[0].source.line == 2
    assert refused.max_length == 30 and refused.model == "tiny-gemma-3-mm"

    with pytest.raises(DatasetError, match="over the max length of 30"):
        validate_dataset(
            path, options=ReadOptions(strict=True), model=tiny_mm_counter, max_length=30
        )

    default = validate_dataset(path, model=tiny_mm_counter)
    assert default.max_length == 1024 and len(default.examples) == 3
