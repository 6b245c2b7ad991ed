"""Reinforcement prompt (RFT) data: the OpenAI reinforcement reader, item fields, malformed
prompts (each between two good ones), detection against chat and preference files, TRL rows,
digests, the length policy with a completion budget, and `gemlora data validate|preview`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from data_helpers import png, write_jsonl
from typer.testing import CliRunner

from gemlora.cli import app
from gemlora.data import (
    DatasetError,
    ImagePart,
    Message,
    PromptExample,
    ReadOptions,
    TextPart,
    is_preference_file,
    is_prompt_file,
    prompt_digest,
    read_dataset,
    read_preferences,
    read_prompts,
    validate_prompts,
)

runner = CliRunner()


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content) -> dict:
    return {"role": "assistant", "content": content}


def image_url(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def prompt(*messages: dict, **item) -> dict:
    return {"messages": list(messages), **item}


GOOD = prompt(user("What is 7 plus 5? Reply with the answer only."), answer="12")
CHAT = {"messages": [user("Hi"), assistant("Yo")]}
PAIR = {
    "input": {"messages": [user("2 plus 2?")]},
    "preferred_output": [assistant("Ahoy! 4.")],
    "non_preferred_output": [assistant("4")],
}


# --- valid prompts ----------------------------------------------------------------------------


def test_a_text_prompt_is_read_with_its_item_fields_and_their_json_types(tmp_path):
    item = {
        "answer": "Paris",
        "points": 3,
        "tolerance": 0.5,
        "strict": True,
        "hint": None,
        "aliases": ["Paris", "paris"],
        "meta": {"source": "atlas", "page": 12},
    }
    record = prompt(
        {"role": "developer", "content": "Answer in one word."},
        user("Capital of Italy?"),
        assistant("Rome"),
        user([text("Capital of France?")]),
        **item,
    )
    path = write_jsonl(tmp_path / "rft.jsonl", [record])

    result = read_prompts(path)

    assert (result.format, result.records, result.problems) == ("openai-reinforcement", 1, [])
    [example] = result.examples
    assert example.prompt == (
        Message("system", (TextPart("Answer in one word."),), 0),
        Message("user", (TextPart("Capital of Italy?"),), 0),
        Message("assistant", (TextPart("Rome"),), 0),  # context: nothing in a prompt is trained
        Message("user", (TextPart("Capital of France?"),), 0),
    )
    assert example.item == item and "messages" not in example.item
    assert [type(example.item[key]) for key in ("points", "tolerance", "strict", "hint")] == [
        int,
        float,
        bool,
        type(None),
    ]
    assert example.images == () and (example.source.file, example.source.line) == (path, 1)
    assert example.prompt_example().messages == example.prompt


def test_a_prompt_without_item_fields_is_fine(tmp_path):
    result = read_prompts(write_jsonl(tmp_path / "rft.jsonl", [prompt(user("Tell a joke."))]))
    assert result.problems == []
    [example] = result.examples
    assert example.item == {} and example.to_trl_row()["item"] == "{}"


def test_a_prompt_with_images_loads_them(dataset_dir):
    blue = (dataset_dir / "images" / "blue.png").read_bytes()
    blue_url = "data:image/png;base64," + base64.b64encode(blue).decode()
    record = prompt(
        user([image_url("images/red.png"), text("What colour is this?")]),
        assistant("red"),
        user([image_url(blue_url), text("And this one?")]),
        answer="blue",
    )
    result = read_prompts(write_jsonl(dataset_dir / "rft.jsonl", [record]))

    assert result.problems == []
    [example] = result.examples
    assert example.prompt[0].content == (ImagePart(0), TextPart("What colour is this?"))
    assert example.prompt[2].content == (ImagePart(1), TextPart("And this one?"))
    assert [i.to_pil().getpixel((0, 0)) for i in example.images] == [(255, 0, 0), (0, 0, 255)]
    assert example.prompt_example().images == example.images


def test_weight_is_ignored_with_a_warning(tmp_path):
    record = prompt(
        user("Hi"),
        {"role": "assistant", "content": "Yo", "weight": 1},
        {"role": "user", "content": "2 plus 2?", "weight": 0},
        answer="4",
    )
    result = read_prompts(write_jsonl(tmp_path / "w.jsonl", [record]))

    [example] = result.examples
    assert result.errors == []
    assert [(p.field, p.source.line) for p in result.warnings] == [
        ("messages[1].weight", 1),
        ("messages[2].weight", 1),
    ]
    assert all(p.message.startswith("ignored: ") for p in result.warnings)
    assert [m.weight for m in example.prompt] == [0, 0, 0]


# --- malformed prompts ------------------------------------------------------------------------


@dataclass
class Case:
    """`bad` is written on line 2, between two good prompts."""

    bad: dict | str
    field: str
    message: str


CASES = {
    "missing-messages": Case(
        {"answer": "4"}, "messages", "expected an array, got nothing (missing)"
    ),
    "messages-not-a-list": Case(
        {"messages": user("2 plus 2?"), "answer": "4"}, "messages", "expected an array, got object"
    ),
    "empty-messages": Case(prompt(answer="4"), "messages", "no messages"),
    "ends-with-assistant": Case(
        prompt(user("2 plus 2?"), assistant("4"), answer="4"),
        "messages[1].role",
        "a reinforcement prompt ends with a user turn: the model writes the reply",
    ),
    "ends-with-system": Case(
        prompt({"role": "system", "content": "Be brief."}),
        "messages[0].role",
        "a reinforcement prompt ends with a user turn: the model writes the reply",
    ),
    "message-not-an-object": Case(
        prompt("2 plus 2?", user("Hm")), "messages[0]", "expected an object, got string"
    ),
    "unknown-role": Case(
        prompt({"role": "tool", "content": "42"}, user("Hi")),
        "messages[0].role",
        "unsupported role 'tool' (expected system, user or assistant)",
    ),
    "turns-do-not-alternate": Case(
        prompt(user("Hi"), user("Hello?")),
        "messages[1].role",
        "expected assistant, got user: turns must alternate",
    ),
    "system-not-first": Case(
        prompt(user("Hi"), assistant("Hey"), {"role": "system", "content": "Be brief."}, user("?")),
        "messages[2].role",
        "a system message is only allowed as the first message",
    ),
    "content-wrong-type": Case(
        prompt(user(42)),
        "messages[0].content",
        "expected a string or an array of content parts, got number",
    ),
    "unsupported-content-part": Case(
        prompt(user([{"type": "input_audio", "input_audio": {}}])),
        "messages[0].content[0].type",
        "unsupported content part type 'input_audio'",
    ),
    "content-part-not-an-object": Case(
        prompt(user(["2 plus 2?"])),
        "messages[0].content[0]",
        "expected an object, got string",
    ),
    "text-part-without-text": Case(
        prompt(user([{"type": "text"}])),
        "messages[0].content[0].text",
        "expected a string, got nothing (missing)",
    ),
    "empty-content": Case(prompt(user("   ")), "messages[0].content", "empty content"),
    "control-token": Case(
        prompt(user("Hi<end_of_turn>")),
        "messages[0].content",
        "text contains the control token <end_of_turn>",
    ),
    "image-in-assistant-turn": Case(
        prompt(user("Draw"), assistant([image_url("images/red.png")]), user("Again")),
        "messages[1].content",
        "images are only allowed in user messages, not assistant",
    ),
    "bad-image-data": Case(
        prompt(user([image_url("data:image/png;base64,iVBORw0KGgo!!!"), text("?")])),
        "messages[0].content[0].image_url",
        "invalid base64 in data URL",
    ),
    "missing-image-file": Case(
        prompt(user([image_url("images/nowhere.png"), text("?")])),
        "messages[0].content[0].image_url",
        "image file not found: images/nowhere.png",
    ),
    "tools": Case(
        prompt(user("Weather?"), tools=[{"type": "function"}]),
        "tools",
        "tool and function definitions are not supported",
    ),
    "functions": Case(
        prompt(user("Weather?"), functions=[{"name": "weather"}]),
        "functions",
        "tool and function definitions are not supported",
    ),
    "tool-call": Case(
        prompt(
            user("Weather?"),
            {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
            user("Well?"),
        ),
        "messages[1].tool_calls",
        "tool and function calls are not supported",
    ),
    "invalid-json": Case('{"messages": [', "", "invalid JSON: "),
    "not-an-object": Case("[1, 2]", "", "expected a JSON object, got array"),
}


def write_cases(directory: Path, bads: list[dict | str]) -> Path:
    (directory / "images").mkdir(exist_ok=True)
    (directory / "images" / "red.png").write_bytes(png("red"))
    records = [GOOD]
    for bad in bads:
        records += [bad if isinstance(bad, str) else json.dumps(bad), GOOD]
    return write_jsonl(directory / "rft.jsonl", records)


@pytest.mark.parametrize("name", CASES)
def test_malformed_prompt_gets_its_specific_error(tmp_path, name):
    case = CASES[name]
    path = write_cases(tmp_path, [case.bad])

    result = read_prompts(path)

    assert result.format == "openai-reinforcement"
    assert [e.source.line for e in result.examples] == [1, 3], result.problems
    [problem] = result.errors
    assert (problem.source.file, problem.source.line) == (path, 2)
    assert problem.field == case.field
    assert case.message in problem.message, problem.message


def test_the_malformed_prompts_in_one_file_each_get_their_own_error(tmp_path):
    """Every case in one file, each between good prompts: each is reported at its own line with
    its own field and message, every good prompt is kept, and detection still tells a prompt
    file (the good prompts are most of it)."""
    names = list(CASES)
    path = write_cases(tmp_path, [CASES[name].bad for name in names])

    assert is_prompt_file(path)
    result = read_prompts(path)

    assert [e.source.line for e in result.examples] == list(range(1, 2 * len(names) + 2, 2))
    lines = [(p.source.line, p.field) for p in result.errors]
    assert lines == [(2 * i + 2, CASES[name].field) for i, name in enumerate(names)]
    for problem, name in zip(result.errors, names, strict=True):
        assert CASES[name].message in problem.message, (name, problem.message)
    assert len({(p.field, p.message) for p in result.errors}) >= 15


def test_strict_stops_at_the_first_bad_prompt(tmp_path):
    bads = [CASES["ends-with-assistant"].bad, CASES["empty-content"].bad]
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, *bads, GOOD])
    with pytest.raises(DatasetError) as raised:
        read_prompts(path, options=ReadOptions(strict=True))
    assert raised.value.problem.source.line == 2


def test_too_many_images_are_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "red.png").write_bytes(png("red"))
    record = prompt(user([image_url("images/red.png")] * 3 + [text("How many?")]), answer="3")
    result = read_prompts(
        write_jsonl(tmp_path / "p.jsonl", [record]), options=ReadOptions(max_images=2)
    )
    [problem] = result.errors
    assert problem.field == "messages[0].content[2].image_url"
    assert "3 images, over the limit of 2" in problem.message


# --- detection --------------------------------------------------------------------------------


def test_detection_tells_prompt_files_from_chat_and_preference_files(tmp_path):
    prompts = write_jsonl(tmp_path / "rft.jsonl", ["{broken", GOOD, GOOD])
    chat = write_jsonl(tmp_path / "chat.jsonl", [CHAT, CHAT])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [PAIR])

    assert is_prompt_file(prompts) and not is_preference_file(prompts)
    assert not is_prompt_file(chat) and not is_prompt_file(pairs)
    assert not is_prompt_file(tmp_path / "missing.jsonl")
    assert read_prompts(prompts).format == "openai-reinforcement"

    with pytest.raises(DatasetError, match="this is a reinforcement prompt dataset") as raised:
        read_dataset(prompts)
    assert "read_prompts" in str(raised.value)
    with pytest.raises(DatasetError, match="this is a chat dataset \\(openai\\)") as raised:
        read_prompts(chat)
    assert "read_dataset" in str(raised.value)
    with pytest.raises(DatasetError, match="this is a preference dataset \\(openai-preference\\)"):
        read_prompts(pairs)
    with pytest.raises(DatasetError, match="cannot tell the preference format"):
        read_preferences(prompts)


def test_one_malformed_record_does_not_change_what_a_file_is(tmp_path):
    """A prompt and a chat record differ only in their last turn, which is what a malformed
    record gets wrong: most records, not the first, decide."""
    prompts = write_jsonl(tmp_path / "rft.jsonl", [prompt(user("Hi"), assistant("Yo")), GOOD, GOOD])
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [user("Hi")]}, CHAT, CHAT])

    assert is_prompt_file(prompts) and not is_prompt_file(chat)
    assert [p.source.line for p in read_prompts(prompts).errors] == [1]
    assert [p.source.line for p in read_dataset(chat).errors] == [1]


def test_a_file_that_does_not_tell_needs_the_format_named(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"answer": "4"}, {"messages": "2 plus 2?"}])
    with pytest.raises(DatasetError, match="pass --format openai-reinforcement"):
        read_prompts(path)
    result = read_prompts(path, "openai-reinforcement")
    assert [(p.source.line, p.field, p.message) for p in result.errors] == [
        (1, "messages", "expected an array, got nothing (missing)"),
        (2, "messages", "expected an array, got string"),
    ]


def test_prompts_can_still_be_read_as_chat_examples_without_the_assistant_rule(tmp_path):
    path = write_jsonl(tmp_path / "rft.jsonl", [GOOD])
    result = read_dataset(path, options=ReadOptions(require_assistant_last=False))
    [example] = result.examples
    assert example == read_prompts(path).examples[0].prompt_example()


# --- TRL rows and digests ---------------------------------------------------------------------


def test_to_trl_row_is_the_prompt_and_the_item_as_json(dataset_dir):
    record = prompt(
        user([image_url("images/red.png"), text("What colour is this?")]),
        answer="red",
        aliases=["crimson"],
    )
    [example] = read_prompts(write_jsonl(dataset_dir / "rft.jsonl", [record])).examples
    row = example.to_trl_row()

    assert set(row) == {"prompt", "item", "images"}
    assert row["prompt"] == [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}],
        }
    ]
    assert row["item"] == '{"aliases": ["crimson"], "answer": "red"}'
    assert json.loads(row["item"]) == example.item
    assert [image.size for image in row["images"]] == [(16, 16)]
    text_only = PromptExample((Message("user", (TextPart("Hi"),)),), item=example.item)
    assert set(text_only.to_trl_row()) == {"prompt", "item"}


def test_trl_rows_with_different_item_fields_make_one_dataset():
    import datasets

    rows = [
        PromptExample((Message("user", (TextPart("7 plus 5?"),)),), item={"answer": "12"}),
        PromptExample((Message("user", (TextPart("Joke?"),)),), item={"rubric": {"funny": 1}}),
    ]
    table = datasets.Dataset.from_list([row.to_trl_row() for row in rows])
    assert table.features["item"] == datasets.Value("string")
    assert [json.loads(item) for item in table["item"]] == [row.item for row in rows]


def test_the_digest_is_stable_and_covers_the_item(tmp_path):
    same = {"answer": "12", "messages": [user("What is 7 plus 5? Reply with the answer only.")]}
    a = read_prompts(write_jsonl(tmp_path / "a.jsonl", [GOOD]))
    b = read_prompts(write_jsonl(tmp_path / "b.jsonl", [CHAT, same, same]), "openai-reinforcement")
    [first] = a.examples
    built = PromptExample(
        (Message("user", (TextPart("What is 7 plus 5? Reply with the answer only."),)),),
        item={"answer": "12"},
    )
    assert built == first and b.examples[0] == first  # the source is not part of equality
    assert built.digest() == first.digest() == b.examples[1].digest()
    assert len(first.digest()) == 64
    assert a.digest() == prompt_digest([first]) == prompt_digest([built])
    assert a.digest() != b.digest()

    other_answer = PromptExample(built.prompt, item={"answer": "13"})
    extra_field = PromptExample(built.prompt, item={"answer": "12", "points": 1})
    no_item = PromptExample(built.prompt)
    for changed in (other_answer, extra_field, no_item):
        assert changed != built and changed.digest() != built.digest()
    assert built.prompt_example().digest() == no_item.prompt_example().digest()


# --- token lengths ----------------------------------------------------------------------------


def test_prompts_are_measured_with_the_generation_prompt(tmp_path, text_counter):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt(user("2 plus 2?"), answer="4")])
    report = validate_prompts(path, model=text_counter)

    [example] = report.examples
    ids = text_counter.encode(example.prompt_example(), add_generation_prompt=True)
    assert text_counter.tokenizer.decode(ids) == (
        "<bos><start_of_turn>user\n2 plus 2?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert report.token_lengths == [len(ids)] and report.length_stats().max == len(ids)
    assert (report.model, report.max_length) == ("gemma-3-270m", text_counter.max_length)
    assert report.ok


def test_over_long_prompts_are_refused_or_dropped_with_the_completion_budget(
    tmp_path, text_counter
):
    short, long = prompt(user("2 plus 2?"), answer="4"), prompt(user("word " * 40), answer="x")
    path = write_jsonl(tmp_path / "p.jsonl", [short, long, short])
    [length, long_length, _] = validate_prompts(path, model=text_counter).token_lengths
    assert long_length > length
    limit = long_length + 5  # every prompt fits alone; the long one not with 10 tokens more

    fits = validate_prompts(path, model=text_counter, max_length=limit, completion_tokens=5)
    assert fits.ok and len(fits.examples) == 3

    refused = validate_prompts(path, model=text_counter, max_length=limit, completion_tokens=10)
    assert not refused.ok and [e.source.line for e in refused.examples] == [1, 3]
    assert refused.token_lengths == [length, length] and refused.completion_tokens == 10
    [error] = refused.errors
    assert error.source.line == 2
    assert error.message.startswith(
        f"{long_length + 10} tokens ({long_length} prompt + 10 for the completion), "
        f"over the max length of {limit}"
    )

    dropped = validate_prompts(
        path, model=text_counter, max_length=limit, completion_tokens=10, overlong="drop"
    )
    assert dropped.ok and [e.source.line for e in dropped.examples] == [1, 3]
    [warning] = dropped.warnings
    assert warning.source.line == 2 and warning.message.startswith(
        f"dropped: {long_length + 10} tokens ({long_length} prompt + 10 for the completion)"
    )

    with pytest.raises(DatasetError) as raised:
        validate_prompts(
            path,
            options=ReadOptions(strict=True),
            model=text_counter,
            max_length=limit,
            completion_tokens=10,
        )
    assert raised.value.problem.source.line == 2
    with pytest.raises(ValueError, match="completion_tokens"):
        validate_prompts(path, model=text_counter, completion_tokens=-1)


def test_image_prompts_are_measured_with_their_image_tokens(dataset_dir, tiny_mm_counter):
    record = prompt(user([image_url("images/red.png"), text("What colour is this?")]), answer="red")
    path = write_jsonl(dataset_dir / "p.jsonl", [record])

    report = validate_prompts(path, model=tiny_mm_counter)

    [example] = report.examples
    ids = tiny_mm_counter.encode(example.prompt_example(), add_generation_prompt=True)
    assert report.token_lengths == [len(ids)]
    assert tiny_mm_counter.tokenizer.decode(ids).count("<image_soft_token>") == 4
    with pytest.raises(DatasetError, match="text-only model"):
        validate_prompts(path, model="gemma-3-270m")


# --- command line -----------------------------------------------------------------------------


def test_cli_validate_reports_prompts_and_problems(tmp_path, text_counter):
    bad = CASES["ends-with-assistant"].bad
    path = write_jsonl(tmp_path / "rft.jsonl", [GOOD, bad, GOOD])

    result = runner.invoke(
        app, ["data", "validate", str(path), "-m", "gemma-3-270m", "--completion-tokens", "8"]
    )

    assert result.exit_code == 1
    table = " ".join(result.output.split())
    assert "(openai-reinforcement)" in table
    assert "prompts 2 usable of 3 records (1 invalid, 0 over-long)" in table
    length = validate_prompts(path, model=text_counter).token_lengths[0]
    assert f"tokens min {length}, median {length}, p95 {length}, max {length}" in table
    assert "+ 8 per completion" in table
    assert (
        f"{path}:2: messages[1].role: error: a reinforcement prompt ends with a user turn"
        in result.output
    )

    clean = write_jsonl(tmp_path / "clean.jsonl", [GOOD, GOOD])
    passed = runner.invoke(app, ["data", "validate", str(clean)])
    assert passed.exit_code == 0, passed.output
    assert "prompts 2 usable of 2 records" in " ".join(passed.output.split())


def test_cli_validate_with_the_format_named_and_over_long_prompts(tmp_path, text_counter):
    path = write_jsonl(tmp_path / "p.jsonl", [{"answer": "4"}, GOOD])
    named = runner.invoke(app, ["data", "validate", str(path), "-f", "openai-reinforcement"])
    assert named.exit_code == 1 and "(openai-reinforcement)" in " ".join(named.output.split())
    assert f"{path}:1: messages: error: expected an array" in named.output

    clean = write_jsonl(tmp_path / "clean.jsonl", [GOOD])
    [length] = validate_prompts(clean, model=text_counter).token_lengths
    args = ["data", "validate", str(clean), "-m", "gemma-3-270m", "--max-length", str(length)]
    assert runner.invoke(app, args).exit_code == 0
    over = [*args, "--completion-tokens", "1"]
    refused = runner.invoke(app, over)
    assert refused.exit_code == 1 and "1 for the completion" in refused.output
    dropped = runner.invoke(app, [*over, "--overlong", "drop"])
    assert dropped.exit_code == 1 and "warning: dropped:" in dropped.output  # nothing left

    chat = write_jsonl(tmp_path / "chat.jsonl", [CHAT])
    wrong = runner.invoke(app, ["data", "validate", str(chat), "--completion-tokens", "8"])
    assert wrong.exit_code == 2 and "completion" in wrong.output


def test_cli_preview_shows_the_prompt_and_its_item(tmp_path, text_counter):
    second = prompt(user("Capital of France?"), answer="Paris", points=2)
    path = write_jsonl(tmp_path / "rft.jsonl", [GOOD, second, GOOD])

    result = runner.invoke(app, ["data", "preview", str(path), "-n", "2"])

    assert result.exit_code == 0, result.output
    out = result.output
    assert "<bos><start_of_turn>user\nWhat is 7 plus 5? Reply with the answer only." in out
    assert out.count("<end_of_turn>\n<start_of_turn>model\n") == 2
    assert '"answer": "12"' in out and '"answer": "Paris",\n  "points": 2' in out
    item = out.index("item (what the grader reads)")
    assert out.index("7 plus 5") < item < out.index('"answer": "12"')
    assert f"{path}:3" not in out
