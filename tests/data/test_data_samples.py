"""The sample datasets: deterministic, valid, and what their README promises."""

from __future__ import annotations

import json
from pathlib import Path

from gemlora.data import read_dataset, read_preferences, read_prompts, validate_prompts
from gemlora.data.sample_sets import COLOURS, SHAPES, write_samples, write_say_the_word


def files(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_generation_is_byte_for_byte_deterministic(samples_dir, tmp_path):
    write_samples(tmp_path)
    assert files(tmp_path) == files(samples_dir)
    names = {path.split("/")[0] for path in files(samples_dir)}
    assert names == {"shapes-vqa", "style-chat", "style-preference", "say-the-word"}


def test_shapes_vqa_is_valid_and_small(samples_dir):
    directory = samples_dir / "shapes-vqa"
    train, held_out = (
        read_dataset(directory / "train.jsonl"),
        read_dataset(directory / "eval.jsonl"),
    )
    assert train.problems == [] and held_out.problems == []
    assert 180 <= len(train.examples) <= 220 and 10 <= len(held_out.examples) <= 40
    assert not {e.digest() for e in train.examples} & {e.digest() for e in held_out.examples}
    assert sum(p.stat().st_size for p in directory.rglob("*")) < 2_000_000

    answers = {e.messages[-1].text for e in train.examples}
    assert answers <= {*COLOURS, *SHAPES, "left", "right", "1", "2", "3", "4"}
    for example in train.examples:
        assert len(example.images) == 1 and example.images[0].width == 96
    first = json.loads((directory / "train.jsonl").read_text().splitlines()[0])
    assert first["messages"][0]["content"][0]["image_url"]["url"].startswith("images/")


def test_shapes_answers_match_the_pictures(samples_dir):
    """Spot-check: the colour questions name the colour of the shape's pixels."""
    examples = read_dataset(samples_dir / "shapes-vqa" / "train.jsonl").examples
    colour_questions = [e for e in examples if e.messages[0].text.startswith("What colour")]
    assert len(colour_questions) > 20
    for example in colour_questions:
        image = example.images[0].to_pil().convert("RGB")
        colours = {c for _, c in image.getcolors()} - {(255, 255, 255)}
        assert COLOURS[example.messages[-1].text] in colours


def test_style_chat_teaches_a_checkable_style(samples_dir):
    directory = samples_dir / "style-chat"
    train, held_out = (
        read_dataset(directory / "train.jsonl"),
        read_dataset(directory / "eval.jsonl"),
    )
    assert train.problems == [] and held_out.problems == []
    assert 50 <= len(train.examples) <= 70 and 8 <= len(held_out.examples) <= 15
    for example in train.examples + held_out.examples:
        reply = example.messages[-1].text
        assert reply.startswith("Ahoy! ") and reply.endswith(" — Captain Gem")
        assert len(reply) < 120 and not example.images
    prompts = {e.messages[0].text for e in train.examples}
    assert not prompts & {e.messages[0].text for e in held_out.examples}


def test_style_preference_prefers_the_style_and_holds_out_style_chats_questions(samples_dir):
    directory = samples_dir / "style-preference"
    train, held_out = (
        read_preferences(directory / "train.jsonl"),
        read_preferences(directory / "eval.jsonl"),
    )
    assert (train.format, train.problems, held_out.problems) == ("openai-preference", [], [])
    assert 50 <= len(train.examples) <= 70 and 8 <= len(held_out.examples) <= 15
    for pair in train.examples + held_out.examples:
        chosen, rejected = pair.chosen.text, pair.rejected.text
        assert chosen == f"Ahoy! {rejected} — Captain Gem"
        assert len(pair.prompt) == 1 and not pair.images
    # The chosen conversations are style-chat's examples, split the same way.
    style_chat = samples_dir / "style-chat"
    for side, pairs in (("train", train), ("eval", held_out)):
        chats = read_dataset(style_chat / f"{side}.jsonl").examples
        assert [pair.chosen_example() for pair in pairs.examples] == chats


def test_say_the_word_is_valid_prompts_asking_for_their_answer(samples_dir, text_counter, tmp_path):
    directory = samples_dir / "say-the-word"
    train = validate_prompts(directory / "train.jsonl", model=text_counter, completion_tokens=4)
    held_out = validate_prompts(directory / "eval.jsonl", model=text_counter, completion_tokens=4)
    assert train.read.format == "openai-reinforcement"
    assert (train.problems, held_out.problems) == ([], [])
    assert 85 <= len(train.examples) <= 105 and 15 <= len(held_out.examples) <= 35
    assert max(train.token_lengths + held_out.token_lengths) < 30
    # held-out words are words never trained on
    words = {
        side: {e.item["answer"] for e in r.examples}
        for side, r in (("train", train), ("eval", held_out))
    }
    assert not words["train"] & words["eval"]

    examples = train.examples + held_out.examples
    instructions = set()
    for example in examples:
        assert len(example.prompt) == 1 and example.prompt[0].role == "user"
        assert set(example.item) == {"answer"} and not example.images
        text, word = example.prompt[0].text, example.item["answer"]
        assert text.endswith(f": {word}") and word.isalpha()
        instructions.add(text.removesuffix(word))
    assert len(instructions) == 6
    first = json.loads((directory / "train.jsonl").read_text().splitlines()[0])
    assert list(first) == ["messages", "answer"]

    write_say_the_word(tmp_path)
    assert files(tmp_path) == files(directory)
    assert read_prompts(tmp_path / "eval.jsonl").digest() == held_out.read.digest()
