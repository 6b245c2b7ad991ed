"""Preference (DPO) data: OpenAI and TRL preference readers giving the same canonical pair,
detection, TRL rows, malformed pairs (each between two good ones), the length policy on pairs,
and `gemlora data validate|preview` on preference files."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import pytest
from data_helpers import png, write_jsonl
from typer.testing import CliRunner

from gemlora.cli import app
from gemlora.data import (
    DatasetError,
    Example,
    ImagePart,
    Message,
    PreferenceExample,
    ReadOptions,
    TextPart,
    encode_preference,
    is_preference_file,
    preference_digest,
    read_dataset,
    read_preferences,
    split_examples,
    validate_preferences,
)

runner = CliRunner()
SYSTEM = "Answer like a pirate."
EXPECTED_PROMPT = (
    Message("system", (TextPart(SYSTEM),), 0),
    Message("user", (ImagePart(0), TextPart("What colour is this?")), 0),
    Message("assistant", (TextPart("red"),), 0),  # context: prompt turns carry weight 0
    Message("user", (ImagePart(1), TextPart("And this one?")), 0),
)
EXPECTED_CHOSEN = Message("assistant", (TextPart("Ahoy! Blue, matey."),), 1)
EXPECTED_REJECTED = Message("assistant", (TextPart("blue"),), 1)


# --- the same pair in every format ------------------------------------------------------------


def openai_pair(blue_url: str = "images/blue.png") -> dict:
    return {
        "input": {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "images/red.png"}},
                        {"type": "text", "text": "What colour is this?"},
                    ],
                },
                {"role": "assistant", "content": "red"},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": blue_url, "detail": "low"}},
                        {"type": "text", "text": "And this one?"},
                    ],
                },
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "Ahoy! Blue, matey."}],
        "non_preferred_output": [{"role": "assistant", "content": "blue"}],
    }


def trl_prompt() -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this one?"}]},
    ]


def trl_reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def trl_pair(images: list | None = None) -> dict:
    return {
        "prompt": trl_prompt(),
        "chosen": trl_reply("Ahoy! Blue, matey."),
        "rejected": trl_reply("blue"),
        "images": images if images is not None else ["images/red.png", "images/blue.png"],
    }


def write_format(kind: str, directory: Path) -> Path:
    blue = (directory / "images" / "blue.png").read_bytes()
    if kind == "openai-paths":
        return write_jsonl(directory / "openai.jsonl", [openai_pair()])
    if kind == "openai-data-url":
        url = "data:image/png;base64," + base64.b64encode(blue).decode()
        return write_jsonl(directory / "openai.jsonl", [openai_pair(url)])
    if kind == "trl-jsonl":
        return write_jsonl(directory / "trl.jsonl", [trl_pair()])
    if kind == "trl-implicit-prompt":
        row = trl_pair()
        prompt = row.pop("prompt")
        row["chosen"], row["rejected"] = prompt + row["chosen"], prompt + row["rejected"]
        return write_jsonl(directory / "implicit.jsonl", [row])
    if kind == "trl-saved":
        import datasets

        table = datasets.Dataset.from_list(
            [trl_pair([str(directory / "images" / n) for n in ("red.png", "blue.png")])]
        )
        table = table.cast_column("images", datasets.List(datasets.Image()))
        table.save_to_disk(str(directory / "saved"))
        return directory / "saved"
    if kind == "trl-parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        images = [{"bytes": None, "path": "images/red.png"}, {"bytes": blue, "path": "blue.png"}]
        pq.write_table(pa.Table.from_pylist([trl_pair(images)]), directory / "trl.parquet")
        return directory / "trl.parquet"
    raise AssertionError(kind)


KINDS = [
    ("openai-paths", "openai-preference"),
    ("openai-data-url", "openai-preference"),
    ("trl-jsonl", "trl-preference"),
    ("trl-implicit-prompt", "trl-preference"),
    ("trl-saved", "trl-preference"),
    ("trl-parquet", "trl-preference"),
]


@pytest.mark.parametrize(("kind", "expected_format"), KINDS)
def test_reader_gives_the_canonical_pair(dataset_dir, kind, expected_format):
    path = write_format(kind, dataset_dir)
    result = read_preferences(path)

    assert is_preference_file(path)
    assert (result.format, result.records, result.problems) == (expected_format, 1, [])
    [pair] = result.examples
    assert pair.prompt == EXPECTED_PROMPT
    assert (pair.chosen, pair.rejected) == (EXPECTED_CHOSEN, EXPECTED_REJECTED)
    assert [i.to_pil().getpixel((0, 0)) for i in pair.images] == [(255, 0, 0), (0, 0, 255)]


def test_the_same_pair_is_identical_in_every_format(dataset_dir):
    pairs = {
        kind: read_preferences(write_format(kind, dataset_dir)).examples[0] for kind, _ in KINDS
    }
    first = pairs["openai-paths"]
    for kind, pair in pairs.items():
        assert pair == first, kind
        assert pair.canonical_json() == first.canonical_json(), kind
    assert len(first.digest()) == 64
    assert read_preferences(write_format("trl-jsonl", dataset_dir)).digest() == preference_digest(
        [first]
    )


def test_text_only_pairs_are_equal_across_formats(tmp_path):
    openai = {
        "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
        "preferred_output": [{"role": "assistant", "content": "Ahoy! Paris."}],
        "non_preferred_output": [{"role": "assistant", "content": "Paris."}],
    }
    trl = {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Ahoy! Paris."}],
        "rejected": [{"role": "assistant", "content": "Paris."}],
    }
    [a] = read_preferences(write_jsonl(tmp_path / "a.jsonl", [openai])).examples
    [b] = read_preferences(write_jsonl(tmp_path / "b.jsonl", [trl])).examples
    assert a == b and a.digest() == b.digest() and not a.images
    built = PreferenceExample(
        (Message("user", (TextPart("Capital of France?"),)),),
        Message("assistant", (TextPart("Ahoy! Paris."),), 1),
        Message("assistant", (TextPart("Paris."),), 1),
    )
    assert built == a and built.digest() == a.digest()


def test_to_trl_row_is_what_dpo_trainer_takes(dataset_dir):
    [pair] = read_preferences(write_format("openai-paths", dataset_dir)).examples
    row = pair.to_trl_row()

    assert set(row) == {"prompt", "chosen", "rejected", "images"}
    assert row["prompt"][1] == {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}],
    }
    assert row["chosen"] == trl_reply("Ahoy! Blue, matey.")
    assert row["rejected"] == trl_reply("blue")
    assert [image.size for image in row["images"]] == [(16, 16), (24, 12)]
    text_only = PreferenceExample((Message("user", (TextPart("Hi"),)),), pair.chosen, pair.rejected)
    assert "images" not in text_only.to_trl_row()


def test_chosen_and_rejected_examples_are_sft_conversations(dataset_dir):
    [pair] = read_preferences(write_format("trl-jsonl", dataset_dir)).examples
    chosen, rejected = pair.chosen_example(), pair.rejected_example()
    assert chosen == Example((*EXPECTED_PROMPT, EXPECTED_CHOSEN), pair.images)
    assert rejected.messages[-1] == EXPECTED_REJECTED and rejected.images == pair.images
    assert chosen.source == pair.source


# --- detection --------------------------------------------------------------------------------


def test_detection_tells_preference_from_chat_files(tmp_path):
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    chat_file = write_jsonl(tmp_path / "chat.jsonl", [chat])
    pair_file = write_jsonl(tmp_path / "pairs.jsonl", ["{broken", openai_pair()])

    assert is_preference_file(pair_file) and not is_preference_file(chat_file)
    assert not is_preference_file(tmp_path / "missing.jsonl")
    assert read_preferences(pair_file).format == "openai-preference"
    with pytest.raises(DatasetError, match="this is a preference dataset \\(openai-preference\\)"):
        read_dataset(pair_file)
    with pytest.raises(DatasetError, match="cannot tell the preference format"):
        read_preferences(chat_file)


def test_the_format_can_be_named(tmp_path):
    # A record with `chosen` but no `rejected` does not tell its format; named, it is read.
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [user("Hi")], "chosen": []}])
    with pytest.raises(DatasetError, match="cannot tell the preference format"):
        read_preferences(path)
    result = read_preferences(path, "trl-preference")
    [problem] = result.errors
    assert (problem.field, problem.message) == (
        "rejected",
        "expected an array, got nothing (missing)",
    )


def test_weight_is_ignored_with_a_warning(tmp_path):
    record = {
        "input": {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Yo", "weight": 0},
                {"role": "user", "content": "Capital of France?"},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "Paris", "weight": 0}],
        "non_preferred_output": [{"role": "assistant", "content": "Rome"}],
    }
    result = read_preferences(write_jsonl(tmp_path / "w.jsonl", [record]))
    [pair] = result.examples
    assert [p.field for p in result.warnings] == [
        "input.messages[1].weight",
        "preferred_output[0].weight",
    ]
    assert [m.weight for m in pair.prompt] == [0, 0, 0]
    assert pair.chosen.weight == pair.rejected.weight == 1


def test_pairs_split_like_examples(tmp_path):
    pairs = [
        PreferenceExample(
            (Message("user", (TextPart(f"Q{n}"),)),),
            Message("assistant", (TextPart(f"good {n}"),), 1),
            Message("assistant", (TextPart(f"bad {n}"),), 1),
        )
        for n in range(40)
    ]
    split = split_examples(pairs, 0.25, seed="s")
    assert split.eval and len(split.train) + len(split.eval) == 40
    assert split_examples(pairs, 0.25, seed="s") == split
    by_chosen = split_examples(pairs, 0.25, seed="s", by=lambda p: p.chosen_example().digest())
    as_sft = split_examples([p.chosen_example() for p in pairs], 0.25, seed="s")
    assert [p.chosen_example() for p in by_chosen.eval] == as_sft.eval


# --- malformed pairs --------------------------------------------------------------------------


def openai(prompt: list, chosen: list, rejected: list, **extra) -> dict:
    return {
        "input": {"messages": prompt, **extra},
        "preferred_output": chosen,
        "non_preferred_output": rejected,
    }


def trl(prompt: list, chosen: list, rejected: list, **extra) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content) -> dict:
    return {"role": "assistant", "content": content}


def image_url(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


GOOD = {
    "openai-preference": openai([user("2 plus 2?")], [assistant("Ahoy! 4.")], [assistant("4")]),
    "trl-preference": trl([user("2 plus 2?")], [assistant("Ahoy! 4.")], [assistant("4")]),
}


@dataclass
class Case:
    """`bad` is written on line 2, between two good records of its format."""

    bad: dict
    field: str
    message: str
    format: str = "openai-preference"


CASES = {
    "missing-preferred-output": Case(
        {"input": {"messages": [user("Hi")]}, "non_preferred_output": [assistant("Hey")]},
        "preferred_output",
        "expected an array, got nothing (missing)",
    ),
    "input-wrong-type": Case(
        {"input": [user("Hi")], "preferred_output": [], "non_preferred_output": []},
        "input",
        "expected an object, got array",
    ),
    "reply-not-assistant": Case(
        openai([user("Hi")], [user("Hey")], [assistant("Yo")]),
        "preferred_output[0].role",
        "a reply must be an assistant message, not user",
    ),
    "two-replies": Case(
        openai([user("Hi")], [assistant("Hey")], [assistant("Yo"), assistant("Yo again")]),
        "non_preferred_output",
        "expected one assistant message as the reply, got 2",
    ),
    "no-reply": Case(
        openai([user("Hi")], [], [assistant("Yo")]),
        "preferred_output",
        "expected one assistant message as the reply, got 0",
    ),
    "empty-reply": Case(
        openai([user("Hi")], [assistant("Hey")], [assistant("  ")]),
        "non_preferred_output[0].content",
        "empty content",
    ),
    "identical-replies": Case(
        openai([user("Hi")], [assistant("Hey")], [assistant([{"type": "text", "text": "Hey"}])]),
        "non_preferred_output",
        "the rejected reply is the same as the chosen one",
    ),
    "prompt-ends-with-assistant": Case(
        openai([user("Hi"), assistant("Hey")], [assistant("Yo")], [assistant("Hm")]),
        "input.messages[1].role",
        "a preference prompt must end with a user turn, not assistant",
    ),
    "empty-prompt": Case(
        openai([], [assistant("Yo")], [assistant("Hm")]),
        "input.messages",
        "no messages",
    ),
    "prompt-turns-do-not-alternate": Case(
        openai([user("Hi"), user("Hello?")], [assistant("Yo")], [assistant("Hm")]),
        "input.messages[1].role",
        "expected assistant, got user: turns must alternate",
    ),
    "system-not-first": Case(
        openai(
            [user("Hi"), assistant("Hey"), {"role": "system", "content": "Be brief."}, user("Hm")],
            [assistant("Yo")],
            [assistant("Hm")],
        ),
        "input.messages[2].role",
        "a system message is only allowed as the first message",
    ),
    "unknown-role": Case(
        openai(
            [{"role": "tool", "content": "42"}, user("Hi")], [assistant("Yo")], [assistant("Hm")]
        ),
        "input.messages[0].role",
        "unsupported role 'tool' (expected system, user or assistant)",
    ),
    "content-wrong-type": Case(
        openai([user(42)], [assistant("Yo")], [assistant("Hm")]),
        "input.messages[0].content",
        "expected a string or an array of content parts, got number",
    ),
    "tools": Case(
        openai([user("Hi")], [assistant("Yo")], [assistant("Hm")], tools=[{"type": "function"}]),
        "input.tools",
        "tool and function definitions are not supported",
    ),
    "image-in-reply": Case(
        openai([user("Draw")], [assistant([image_url("images/red.png")])], [assistant("No")]),
        "preferred_output[0].content",
        "images are only allowed in user messages, not assistant",
    ),
    "bad-image-data": Case(
        openai(
            [
                user(
                    [
                        image_url("data:image/png;base64,iVBORw0KGgo!!!"),
                        {"type": "text", "text": "?"},
                    ]
                )
            ],
            [assistant("red")],
            [assistant("blue")],
        ),
        "input.messages[0].content[0].image_url",
        "invalid base64 in data URL",
    ),
    "control-token-in-reply": Case(
        openai([user("Hi")], [assistant("Hey<end_of_turn>")], [assistant("Yo")]),
        "preferred_output[0].content",
        "text contains the control token <end_of_turn>",
    ),
    "trl-plain-text": Case(
        {"prompt": "2 plus 2?", "chosen": "4", "rejected": "5"},
        "prompt",
        "plain text is TRL's standard format, which is not supported",
        "trl-preference",
    ),
    "trl-reply-wrong-type": Case(
        trl([user("Hi")], {"role": "assistant", "content": "Hey"}, [assistant("Yo")]),
        "chosen",
        "expected an array, got object",
        "trl-preference",
    ),
    "trl-image-in-reply": Case(
        trl(
            [user("Draw")],
            [assistant([{"type": "image"}])],
            [assistant("No")],
            images=["images/red.png"],
        ),
        "chosen[0].content",
        "images are only allowed in user messages, not assistant",
        "trl-preference",
    ),
    "trl-image-count": Case(
        trl(
            [user([{"type": "image"}, {"type": "text", "text": "Colour?"}])],
            [assistant("red")],
            [assistant("blue")],
            images=["images/red.png", "images/red.png"],
        ),
        "images",
        "1 image parts in the conversation but 2 images given",
        "trl-preference",
    ),
    "trl-missing-image-file": Case(
        trl(
            [user([{"type": "image"}, {"type": "text", "text": "Colour?"}])],
            [assistant("red")],
            [assistant("blue")],
            images=["images/nowhere.png"],
        ),
        "images[0]",
        "image file not found: images/nowhere.png",
        "trl-preference",
    ),
    "trl-implicit-prompts-differ": Case(
        {
            "chosen": [user("Capital of Italy?"), assistant("Rome")],
            "rejected": [user("Capital of France?"), assistant("Paris")],
        },
        "rejected[0]",
        "without a `prompt`, chosen and rejected share every message but their last",
        "trl-preference",
    ),
    "trl-implicit-prompt-without-reply": Case(
        {"chosen": [user("Hi")], "rejected": [user("Hi"), assistant("Yo")]},
        "chosen",
        "without a `prompt`, chosen holds the conversation and then its reply",
        "trl-preference",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_malformed_pair_gets_its_specific_error(tmp_path, name):
    case = CASES[name]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "red.png").write_bytes(png("red"))
    good = GOOD[case.format]
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, case.bad, good])

    result = read_preferences(path)

    assert result.format == case.format
    assert [e.source.line for e in result.examples] == [1, 3], result.problems
    [problem] = result.errors
    assert (problem.source.file, problem.source.line) == (path, 2)
    assert problem.field == case.field
    assert case.message in problem.message, problem.message


def test_the_malformed_pairs_in_one_file_each_get_their_own_error(tmp_path):
    """All the cases of a format in one file, each bad pair between good ones: each is reported
    at its own line with its own field and message, every good pair is kept, and the cases are
    refused for at least ten different reasons."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "red.png").write_bytes(png("red"))
    reasons = set()
    for pair_format, good in GOOD.items():
        names = [name for name, case in CASES.items() if case.format == pair_format]
        records = [good]
        for name in names:
            records += [CASES[name].bad, good]
        result = read_preferences(write_jsonl(tmp_path / f"{pair_format}.jsonl", records))
        assert result.format == pair_format
        assert [e.source.line for e in result.examples] == list(range(1, len(records) + 1, 2))
        lines = [(p.source.line, p.field) for p in result.errors]
        assert lines == [(2 * i + 2, CASES[name].field) for i, name in enumerate(names)]
        for problem, name in zip(result.errors, names, strict=True):
            assert CASES[name].message in problem.message, (name, problem.message)
        reasons |= {(p.field, p.message) for p in result.errors}
    assert len(reasons) >= 10


def test_strict_stops_at_the_first_bad_pair(tmp_path):
    bad = CASES["identical-replies"].bad
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD["openai-preference"], bad, bad])
    with pytest.raises(DatasetError) as raised:
        read_preferences(path, options=ReadOptions(strict=True))
    assert raised.value.problem.source.line == 2


# --- token lengths ----------------------------------------------------------------------------


def long_pair(words: int, side: str) -> dict:
    replies = {"chosen": "Ahoy! 4.", "rejected": "4"}
    replies[side] = "word " * words
    return openai(
        [user("2 plus 2?")], [assistant(replies["chosen"])], [assistant(replies["rejected"])]
    )


def test_over_long_pairs_are_refused_or_dropped_never_cut(tmp_path, text_counter):
    good = GOOD["openai-preference"]
    path = write_jsonl(tmp_path / "p.jsonl", [good, long_pair(40, "rejected"), good])

    refused = validate_preferences(path, model=text_counter, max_length=30)
    assert not refused.ok and [e.source.line for e in refused.examples] == [1, 3]
    [error] = refused.errors
    assert error.source.line == 2
    assert (
        error.message.startswith("5")
        and "tokens (prompt + rejected), over the max length of 30" in error.message
    )

    dropped = validate_preferences(path, model=text_counter, max_length=30, overlong="drop")
    assert dropped.ok and [e.source.line for e in dropped.examples] == [1, 3]
    [warning] = dropped.warnings
    assert warning.source.line == 2 and warning.message.startswith("dropped: ")
    assert "(prompt + rejected)" in warning.message

    pair = dropped.examples[0]
    assert (
        dropped.token_lengths
        == [
            (text_counter.count(pair.chosen_example()), text_counter.count(pair.rejected_example()))
        ]
        * 2
    )
    assert dropped.length_stats().max == max(dropped.token_lengths[0])

    chosen_long = write_jsonl(tmp_path / "c.jsonl", [long_pair(40, "chosen")])
    [error] = validate_preferences(chosen_long, model=text_counter, max_length=30).errors
    assert "(prompt + chosen)" in error.message


def test_the_prompt_and_replies_are_tokenized_as_dpo_sees_them(tmp_path, text_counter):
    [pair] = read_preferences(write_jsonl(tmp_path / "p.jsonl", [GOOD["trl-preference"]])).examples
    tokens = encode_preference(text_counter, pair)
    decode = text_counter.tokenizer.decode
    assert decode(tokens.prompt) == (
        "<bos><start_of_turn>user\n2 plus 2?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert decode(tokens.chosen) == "Ahoy! 4.<end_of_turn>\n"
    assert decode(tokens.rejected) == "4<end_of_turn>\n"
    assert len(tokens.prompt) + len(tokens.chosen) == text_counter.count(pair.chosen_example())


# --- command line -----------------------------------------------------------------------------


def test_cli_validate_reports_pairs_and_problems(tmp_path, text_counter):
    good = GOOD["openai-preference"]
    identical = CASES["identical-replies"].bad
    path = write_jsonl(tmp_path / "p.jsonl", [good, identical, good])

    result = runner.invoke(app, ["data", "validate", str(path), "-m", "gemma-3-270m"])

    assert result.exit_code == 1
    table = " ".join(result.output.split())
    assert "(openai-preference)" in table
    assert "pairs 2 usable of 3 records (1 invalid, 0 over-long)" in table
    length = max(validate_preferences(path, model=text_counter).token_lengths[0])
    assert f"tokens min {length}, median {length}, p95 {length}, max {length}" in table
    assert "(prompt + longer reply, max length" in table
    assert (
        f"{path}:2: non_preferred_output: error: the rejected reply is the same as the chosen one"
        in result.output
    )

    clean = write_jsonl(tmp_path / "clean.jsonl", [good, good])
    passed = runner.invoke(app, ["data", "validate", str(clean)])
    assert passed.exit_code == 0, passed.output
    assert "not measured: pass --model" in passed.output


def test_cli_validate_with_a_named_format_and_over_long_drop(tmp_path, text_counter):
    path = write_jsonl(
        tmp_path / "p.jsonl", [GOOD["trl-preference"], {"chosen": [], "rejected": []}]
    )
    named = runner.invoke(app, ["data", "validate", str(path), "-f", "trl-preference"])
    assert named.exit_code == 1 and "(trl-preference)" in " ".join(named.output.split())
    assert f"{path}:2: chosen: error:" in named.output

    long = write_jsonl(tmp_path / "l.jsonl", [GOOD["openai-preference"], long_pair(40, "chosen")])
    args = ["data", "validate", str(long), "-m", "gemma-3-270m", "--max-length", "30"]
    assert runner.invoke(app, args).exit_code == 1
    dropped = runner.invoke(app, [*args, "--overlong", "drop"])
    assert dropped.exit_code == 0 and "warning: dropped:" in dropped.output


def test_cli_preview_shows_prompt_and_both_replies(tmp_path, text_counter):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD["openai-preference"]] * 3)

    result = runner.invoke(app, ["data", "preview", str(path), "-n", "2"])

    assert result.exit_code == 0, result.output
    out = result.output
    assert (
        out.count("<bos><start_of_turn>user\n2 plus 2?<end_of_turn>\n<start_of_turn>model\n") == 2
    )
    assert out.count("Ahoy! 4.<end_of_turn>") == 2 and out.count("\n4<end_of_turn>") == 2
    assert out.index("chosen") < out.index("Ahoy! 4.") < out.index("rejected")
    assert f"{path}:3" not in out


def test_cli_preview_of_image_pairs_with_a_multimodal_base(dataset_dir, tiny_mm_counter):
    path = write_format("trl-jsonl", dataset_dir)
    result = runner.invoke(app, ["data", "preview", str(path), "-m", "tiny-gemma-3-mm"])
    assert result.exit_code == 0, result.output
    assert result.output.count("<image_soft_token>" * 4) == 2  # two images, in the prompt only

    text_base = runner.invoke(app, ["data", "preview", str(path), "-m", "gemma-3-270m"])
    assert text_base.exit_code == 1 and "text-only base" in text_base.output
