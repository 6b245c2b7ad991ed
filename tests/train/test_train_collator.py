"""The Gemma 3 collator puts the loss exactly on the assistant turns that train, on the tiny
multimodal model's processor and on the 270M's tokenizer (both carry gemlora's template)."""

from __future__ import annotations

import pytest
from train_helpers import example, text, with_image

from gemlora.train import Gemma3ChatCollator
from gemlora.train.collator import IGNORE_INDEX, assistant_spans
from gemlora.train.dataset import to_hf_dataset

END_OF_TURN = 106
IMAGE_IDS = {255999, 262144, 256000}  # <start_of_image>, <image_soft_token>, <end_of_image>


@pytest.fixture(scope="module")
def processor(built_models):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(built_models["tiny-gemma-3-mm"])


@pytest.fixture(scope="module")
def tokenizer(built_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built_models["gemma-3-270m"])


def collate(processor, examples, multimodal=True):
    rows = list(to_hf_dataset(examples, multimodal))
    return Gemma3ChatCollator(processor)(rows)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def reply_ids(tokenizer, text: str) -> list[int]:
    """A trained reply's tokens: its text and the <end_of_turn> that closes it."""
    return [*ids(tokenizer, text), END_OF_TURN]


def trained(batch, row: int) -> list[int]:
    """The label ids of one row where the loss is."""
    return [label for label in batch["labels"][row].tolist() if label != IGNORE_INDEX]


def positions(batch, row: int) -> list[int]:
    return [i for i, label in enumerate(batch["labels"][row].tolist()) if label != IGNORE_INDEX]


def test_only_weighted_assistant_turns_train(processor):
    tokenizer = processor.tokenizer
    conversation = example(
        text("system", "Answer in one word."),
        with_image("What colour is it?"),
        text("assistant", "red", weight=0),
        text("user", "Are you sure?"),
        text("assistant", "yes, red", weight=1),
        images=1,
    )
    batch = collate(processor, [conversation])
    input_ids = batch["input_ids"][0].tolist()

    reply = reply_ids(tokenizer, "yes, red")
    assert trained(batch, 0) == reply
    # The labelled positions are exactly where the trained reply sits in the input, at the end
    # (only the turn's closing newline follows it).
    start = len(input_ids) - len(reply) - 1
    assert positions(batch, 0) == list(range(start, start + len(reply)))
    assert input_ids[start : start + len(reply)] == reply
    # The weight-0 reply is in the input but not in the loss.
    first_reply = ids(tokenizer, "red")
    assert any(input_ids[i : i + len(first_reply)] == first_reply for i in range(start))


def test_image_tokens_never_train_and_token_type_ids_mark_them(processor):
    conversation = example(with_image("What colour?"), text("assistant", "red", 1), images=1)
    batch = collate(processor, [conversation])
    input_ids = batch["input_ids"][0].tolist()
    soft_tokens = [i for i, token in enumerate(input_ids) if token == 262144]
    assert len(soft_tokens) == 4  # mm_tokens_per_image of the tiny model
    assert 255999 in input_ids and 256000 in input_ids
    assert not IMAGE_IDS & set(trained(batch, 0))
    assert [i for i, t in enumerate(batch["token_type_ids"][0].tolist()) if t] == soft_tokens
    assert tuple(batch["pixel_values"].shape) == (1, 3, 64, 64)


def test_image_tokens_are_masked_even_inside_a_reply(processor):
    # A reply cannot hold an image, but a label copied from image tokens would crash the loss
    # (text vocabulary 262144 == <image_soft_token>): the collator masks them wherever they are.
    collator = Gemma3ChatCollator(processor)
    input_ids = processor.tokenizer(
        "<start_of_image><image_soft_token><end_of_image>ok", add_special_tokens=False,
        return_tensors="pt",
    )["input_ids"]  # fmt: skip
    rows = [{"messages": [{"role": "assistant", "weight": 1, "content": []}]}]
    labels = collator.labels(rows, input_ids, input_ids.new_ones(input_ids.shape))
    assert labels[0].tolist()[:3] == [IGNORE_INDEX] * 3
    assert labels[0].tolist()[3:] == input_ids[0].tolist()[3:]


def test_padding_is_right_and_never_trains(processor):
    long = example(text("user", "Tell me a long story please"), text("assistant", "Once", 1))
    short = example(text("user", "Hi"), text("assistant", "Hello there friend", 1))
    batch = collate(processor, [long, short])
    for row in range(2):
        mask = batch["attention_mask"][row].tolist()
        padded = mask.count(0)
        assert mask == [1] * (len(mask) - padded) + [0] * padded  # right padding
        pad_labels = batch["labels"][row].tolist()[len(mask) - padded :]
        assert pad_labels == [IGNORE_INDEX] * padded
    assert batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].shape[1]] * 2
    tokenizer = processor.tokenizer
    assert trained(batch, 0) == reply_ids(tokenizer, "Once")
    assert trained(batch, 1) == reply_ids(tokenizer, "Hello there friend")


def test_text_only_batch_on_the_multimodal_processor(processor):
    batch = collate(processor, [example(text("user", "Hi"), text("assistant", "Hello", 1))])
    assert "pixel_values" not in batch
    assert batch["token_type_ids"].sum() == 0
    assert trained(batch, 0) == reply_ids(processor.tokenizer, "Hello")


def test_mixed_image_and_text_batch(processor):
    pictured = example(with_image("Colour?"), text("assistant", "red", 1), images=1)
    plain = example(text("user", "Hi"), text("assistant", "Hello", 1))
    batch = collate(processor, [pictured, plain])
    assert tuple(batch["pixel_values"].shape) == (1, 3, 64, 64)
    assert batch["token_type_ids"][0].sum() == 4 and batch["token_type_ids"][1].sum() == 0


def test_every_weighted_turn_of_a_multi_turn_chat_trains(processor):
    chat = example(
        text("user", "One?"),
        text("assistant", "uno", 1),
        text("user", "Two?"),
        text("assistant", "dos", 1),
    )
    batch = collate(processor, [chat])
    tokenizer = processor.tokenizer
    expected = reply_ids(tokenizer, "uno") + reply_ids(tokenizer, "dos")
    assert trained(batch, 0) == expected


def test_text_only_base_tokenizer(tokenizer):
    chat = example(
        text("system", "Be a pirate."), text("user", "Hi"), text("assistant", "Ahoy!", 1)
    )
    batch = collate(tokenizer, [chat], multimodal=False)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"][0].tolist()[0] == 2  # one <bos>, from the template
    assert batch["input_ids"][0].tolist().count(2) == 1
    assert trained(batch, 0) == reply_ids(tokenizer, "Ahoy!")


def test_a_template_without_generation_markers_is_refused(tokenizer, monkeypatch):
    template = tokenizer.chat_template
    plain = template.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    assert plain != template
    monkeypatch.setattr(tokenizer, "chat_template", plain)
    chat = example(text("user", "Hi"), text("assistant", "Hello", 1))
    with pytest.raises(ValueError, match="generation"):
        collate(tokenizer, [chat], multimodal=False)


def test_assistant_spans():
    assert assistant_spans([]) == []
    assert assistant_spans([0, 1, 1, 0, 0, 1, 0, 1, 1]) == [(1, 3), (5, 6), (7, 9)]
