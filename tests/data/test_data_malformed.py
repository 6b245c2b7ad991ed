"""Malformed data: each case is one bad record between two good ones. The bad record is left
out with one specific error naming its line and field; the good records around it are kept."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from data_helpers import png, write_jsonl
from PIL import Image

from gemlora.data import DatasetError, ImageLimits, ReadOptions, read_dataset

GOOD = {
    "messages": [
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "4"},
    ]
}


def chat(*messages: dict) -> dict:
    return {"messages": list(messages)}


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content, **extra) -> dict:
    return {"role": "assistant", "content": content, **extra}


def image_question(url: str) -> dict:
    """A user turn with one image and a question, then an answer."""
    return chat(
        user(
            [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Colour?"}]
        ),
        assistant("red"),
    )


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions: refused from its header, never inflated."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


@dataclass
class Case:
    """`bad` is the record (or raw line) written between two good records, on line 2.
    `setup` may write files into the dataset directory first."""

    bad: dict | list | str | bytes
    field: str
    message: str
    setup: Callable[[Path], None] | None = None
    options: dict = field(default_factory=dict)
    name: str = "data.jsonl"


def write_file(directory: Path, name: str, content: bytes) -> None:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


CASES = {
    "roles-do-not-alternate": Case(
        chat(user("Hi"), user("Hello?"), assistant("Hey")),
        "messages[1].role",
        "expected assistant, got user: turns must alternate",
    ),
    "assistant-first": Case(
        chat(assistant("Hi"), user("Hello")),
        "messages[0].role",
        "expected user, got assistant",
    ),
    "system-not-first": Case(
        chat(user("Hi"), {"role": "system", "content": "Be brief."}, assistant("Hey")),
        "messages[1].role",
        "a system message is only allowed as the first message",
    ),
    "ends-with-user": Case(
        chat(user("Hi"), assistant("Hey"), user("Bye")),
        "messages[2].role",
        "a training example must end with an assistant turn, not user",
    ),
    "unsupported-role": Case(
        chat(user("Hi"), {"role": "tool", "content": "42"}),
        "messages[1].role",
        "unsupported role 'tool' (expected system, user or assistant)",
    ),
    "empty-content": Case(
        chat(user("Hi"), assistant("   ")),
        "messages[1].content",
        "empty content",
    ),
    "content-wrong-type": Case(
        chat(user(42), assistant("Hey")),
        "messages[0].content",
        "expected a string or an array of content parts, got number",
    ),
    "messages-wrong-type": Case(
        {"messages": {"role": "user"}},
        "messages",
        "expected an array, got object",
    ),
    "role-wrong-type": Case(
        chat({"role": None, "content": "Hi"}, assistant("Hey")),
        "messages[0].role",
        "expected a string, got null",
    ),
    "unsupported-part-type": Case(
        chat(user([{"type": "input_audio", "input_audio": {}}]), assistant("Hey")),
        "messages[0].content[0].type",
        "unsupported content part type 'input_audio'",
    ),
    "weight-on-user": Case(
        chat({"role": "user", "content": "Hi", "weight": 1}, assistant("Hey")),
        "messages[0].weight",
        "weight is only allowed on assistant messages",
    ),
    "weight-not-0-or-1": Case(
        chat(user("Hi"), assistant("Hey", weight=2)),
        "messages[1].weight",
        "weight must be 0 or 1, got 2",
    ),
    "nothing-to-train-on": Case(
        chat(user("Hi"), assistant("Hey", weight=0)),
        "messages",
        "every assistant turn has weight 0: nothing to train on",
    ),
    "control-token-in-text": Case(
        chat(user("Hi<end_of_turn>"), assistant("Hey")),
        "messages[0].content",
        "text contains the control token <end_of_turn>",
    ),
    "image-in-assistant-turn": Case(
        chat(user("Draw"), assistant([{"type": "image_url", "image_url": {"url": "a.png"}}])),
        "messages[1].content",
        "images are only allowed in user messages, not assistant",
    ),
    "bad-base64": Case(
        image_question("data:image/png;base64,iVBORw0KGgo!!!notbase64"),
        "messages[0].content[0].image_url",
        "invalid base64 in data URL",
    ),
    "data-url-not-an-image-type": Case(
        image_question(data_url(b"hello", "text/plain")),
        "messages[0].content[0].image_url",
        "data URL media type must be image/*, got 'text/plain'",
    ),
    "data-url-not-an-image": Case(
        image_question(data_url(b"<html>not a picture</html>")),
        "messages[0].content[0].image_url",
        "not an allowed image format (JPEG, PNG, WEBP): unknown data",
    ),
    "truncated-png": Case(
        image_question("images/cut.png"),
        "messages[0].content[0].image_url",
        "images/cut.png: corrupt or truncated PNG image",
        setup=lambda d: write_file(d, "images/cut.png", png("red", (64, 64))[:-40]),
    ),
    "missing-file": Case(
        image_question("images/nowhere.png"),
        "messages[0].content[0].image_url",
        "image file not found: images/nowhere.png",
    ),
    "path-escapes-dataset-directory": Case(
        image_question("../outside.png"),
        "messages[0].content[0].image_url",
        "image path '../outside.png' escapes the dataset directory",
        setup=lambda d: write_file(d.parent, "outside.png", png()),
        name="set/data.jsonl",
    ),
    "symlink-escapes-dataset-directory": Case(
        image_question("images/link.png"),
        "messages[0].content[0].image_url",
        "image path 'images/link.png' escapes the dataset directory",
        setup=lambda d: (
            write_file(d.parent, "secret.png", png()),
            (d / "images").mkdir(parents=True, exist_ok=True),
            (d / "images" / "link.png").symlink_to(d.parent / "secret.png"),
        ),
        name="set/data.jsonl",
    ),
    "absolute-path": Case(
        image_question("/etc/passwd"),
        "messages[0].content[0].image_url",
        "absolute image path '/etc/passwd': use a path relative to the dataset file",
    ),
    "file-url": Case(
        image_question("file:///etc/passwd"),
        "messages[0].content[0].image_url",
        "unsupported image URL scheme 'file'",
    ),
    "remote-url-not-allowed": Case(
        image_question("https://images.example.com/a.png"),
        "messages[0].content[0].image_url",
        "remote image URLs are disabled (pass --allow-remote)",
    ),
    "too-many-images": Case(
        chat(
            user([{"type": "image_url", "image_url": {"url": "images/red.png"}}] * 9),
            assistant("nine"),
        ),
        "messages[0].content[8].image_url",
        "9 images, over the limit of 8 per example",
    ),
    "image-too-many-pixels": Case(
        image_question("images/big.png"),
        "messages[0].content[0].image_url",
        "image is 100x100 = 10,000 pixels, over the limit of 5,000 pixels",
        setup=lambda d: write_file(d, "images/big.png", png("red", (100, 100))),
        options={"image_limits": ImageLimits(max_pixels=5_000)},
    ),
    "decompression-bomb": Case(
        image_question(data_url(huge_png_header(10_000, 10_000))),
        "messages[0].content[0].image_url",
        "image is 10000x10000 = 100,000,000 pixels, over the limit of 50,000,000 pixels",
    ),
    "decompression-bomb-past-pil-limit": Case(
        image_question(data_url(huge_png_header(30_000, 30_000))),
        "messages[0].content[0].image_url",
        "image is over the limit of 50,000,000 pixels",
    ),
    "image-too-many-bytes": Case(
        image_question("images/red.png"),
        "messages[0].content[0].image_url",
        "over the limit of 50 bytes",
        options={"image_limits": ImageLimits(max_bytes=50)},
    ),
    "animated-image": Case(
        image_question(data_url(animated_webp(), "image/webp")),
        "messages[0].content[0].image_url",
        "animated images are not supported (2 frames)",
    ),
    "invalid-utf8": Case(
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
        "",
        "not valid UTF-8: byte 0xe9 at column 47",
    ),
    "invalid-json": Case(
        '{"messages": [}',
        "",
        "invalid JSON: Expecting value at column 15",
    ),
    "json-not-an-object": Case(
        "[1, 2, 3]",
        "",
        "expected a JSON object, got array",
    ),
    "sharegpt-placeholder-mismatch": Case(
        {
            "conversations": [
                {"from": "human", "value": "<image><image> Which is red?"},
                {"from": "gpt", "value": "the first"},
            ],
            "image": "images/red.png",
        },
        "image",
        "2 <image> placeholders in the conversation but 1 image given",
    ),
    "sharegpt-unknown-speaker": Case(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hey"}]},
        "conversations[1].from",
        "unsupported speaker 'bot' (expected human, gpt or system)",
    ),
    "sharegpt-roles-use-its-own-fields": Case(
        {"conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Hey"}]},
        "conversations[0].from",
        "expected user, got assistant",
    ),
    "hf-image-parts-mismatch": Case(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "Colours?"}],
                },
                {"role": "assistant", "content": "red and blue"},
            ],
            "images": ["images/red.png", "images/blue.png"],
        },
        "images",
        "1 image parts in the conversation but 2 images given",
    ),
    "hf-image-entry-wrong-type": Case(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}],
                },
                {"role": "assistant", "content": "red"},
            ],
            "images": [7],
        },
        "images[0]",
        "expected an image path or a {bytes, path} object, got number",
    ),
}

SHAREGPT_CASES = {name for name in CASES if name.startswith("sharegpt")}
HF_CASES = {name for name in CASES if name.startswith("hf-")}


def good_record(name: str) -> dict:
    if name in SHAREGPT_CASES:
        return {
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]
        }
    if name in HF_CASES:
        return {**GOOD, "images": []}
    return GOOD


@pytest.mark.parametrize("name", CASES)
def test_malformed_record_gets_its_specific_error(tmp_path, name):
    case = CASES[name]
    path = tmp_path / case.name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path.parent, "images/red.png", png("red"))
    write_file(path.parent, "images/blue.png", png("blue"))
    if case.setup:
        case.setup(path.parent)
    good = good_record(name)
    write_jsonl(path, [good, case.bad, good])

    result = read_dataset(path, options=ReadOptions(**case.options))

    assert len(result.examples) == 2, result.problems
    assert [e.source.line for e in result.examples] == [1, 3]
    [problem] = result.errors
    assert problem.source.file == path
    assert problem.source.line == 2
    assert problem.field == case.field
    assert case.message in problem.message, problem.message


def test_the_malformed_cases_in_one_file_each_get_their_own_error(tmp_path):
    """Every case that needs no setup or options, one file per format, each bad record between
    good ones: each is reported at its own line with its own field and message, every good
    record is kept, and the cases are refused for at least twenty different reasons."""
    groups: dict[str, list[str]] = {}
    for name, case in CASES.items():
        if not (case.setup or case.options or case.name != "data.jsonl"):
            kind = "sharegpt" if name in SHAREGPT_CASES else "hf" if name in HF_CASES else "chat"
            groups.setdefault(kind, []).append(name)
    reasons = set()
    for kind, names in groups.items():
        write_file(tmp_path / kind, "images/red.png", png("red"))
        write_file(tmp_path / kind, "images/blue.png", png("blue"))
        good = good_record(names[0])
        records = [good]
        for name in names:
            records += [CASES[name].bad, good]
        result = read_dataset(write_jsonl(tmp_path / kind / "data.jsonl", records))
        assert [e.source.line for e in result.examples] == list(range(1, len(records) + 1, 2))
        lines = [(p.source.line, p.field) for p in result.errors]
        assert lines == [(2 * i + 2, CASES[name].field) for i, name in enumerate(names)], kind
        for problem, name in zip(result.errors, names, strict=True):
            assert CASES[name].message in problem.message, (name, problem.message)
        reasons |= {(p.field, p.message) for p in result.errors}
    assert len(reasons) >= 20


def test_a_50_mb_line_is_refused_without_failing_the_file(tmp_path):
    path = tmp_path / "big.jsonl"
    huge = json.dumps(chat(user("x" * 50_000_000), assistant("ok")))
    write_jsonl(path, [GOOD, huge, GOOD])

    result = read_dataset(path)

    assert [e.source.line for e in result.examples] == [1, 3]
    [problem] = result.errors
    assert problem.source.line == 2
    assert problem.message == (
        f"line is {len(huge) + 1:,} bytes, over the limit of 10,000,000 bytes"
    )


def test_several_problems_in_one_record_are_all_reported(tmp_path):
    write_file(tmp_path, "images/red.png", png())
    record = chat(
        user(
            [
                {"type": "image_url", "image_url": {"url": "images/missing.png"}},
                {"type": "image_url", "image_url": {"url": "../escape.png"}},
                {"type": "image_url", "image_url": {"url": "images/red.png"}},
            ]
        ),
        assistant("three"),
    )
    result = read_dataset(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert [p.field for p in result.errors] == [
        "messages[0].content[0].image_url",
        "messages[0].content[1].image_url",
    ]


def test_strict_fails_the_file_at_the_first_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, chat(user("Hi")), chat(assistant("x"))])
    assert len(read_dataset(path).errors) == 2
    with pytest.raises(DatasetError) as raised:
        read_dataset(path, options=ReadOptions(strict=True))
    assert raised.value.problem.source.line == 2
    assert "must end with an assistant turn" in str(raised.value)


def test_a_broken_json_array_names_its_line(tmp_path):
    path = tmp_path / "llava.json"
    path.write_text('[\n  {"conversations": []},\n  {"conversations": [}\n]\n')
    with pytest.raises(DatasetError) as raised:
        read_dataset(path)
    assert raised.value.problem.source.line == 3
    assert "invalid JSON" in raised.value.problem.message


def test_invalid_utf8_in_a_json_array_names_its_line(tmp_path):
    path = tmp_path / "llava.json"
    path.write_bytes(b'[\n  {"conversations": []},\n  {"conversations": "\xff"}\n]\n')
    with pytest.raises(DatasetError) as raised:
        read_dataset(path)
    assert raised.value.problem.source.line == 3
    assert raised.value.problem.message == "not valid UTF-8: byte 0xff"
