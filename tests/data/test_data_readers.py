"""Every reader on good files, and the same conversation giving the same canonical example in
every format."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from data_helpers import png, write_jsonl

from gemlora.data import (
    DatasetError,
    Example,
    ImagePart,
    Message,
    TextPart,
    dataset_digest,
    read_dataset,
)

SYSTEM = "Answer in one word."
EXPECTED_MESSAGES = (
    Message("system", (TextPart(SYSTEM),), 0),
    Message("user", (ImagePart(0), TextPart("What colour is this?")), 0),
    Message("assistant", (TextPart("red"),), 1),
    Message("user", (ImagePart(1), TextPart("And this one?")), 0),
    Message("assistant", (TextPart("blue"),), 1),
)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def openai_record(blue_url: str = "images/blue.png") -> dict:
    return {
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
            {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
        ]
    }


def hf_messages() -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this one?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
    ]


def sharegpt_record() -> dict:
    return {
        "id": "colours-1",
        "system": SYSTEM,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this?"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "<image>\nAnd this one?"},
            {"from": "gpt", "value": "blue"},
        ],
        "images": ["images/red.png", "images/blue.png"],
    }


def hf_dataset(directory: Path):
    import datasets

    rows = {"messages": [hf_messages()], "images": [["images/red.png", "images/blue.png"]]}
    table = datasets.Dataset.from_dict(rows)
    # Image() reads paths relative to the working directory; give it absolute ones to embed.
    table = table.map(lambda row: {"images": [str(directory / p) for p in row["images"]]})
    return table.cast_column("images", datasets.List(datasets.Image()))


def write_format(kind: str, directory: Path) -> Path:
    blue = (directory / "images" / "blue.png").read_bytes()
    if kind == "openai-paths":
        return write_jsonl(directory / "openai.jsonl", [openai_record()])
    if kind == "openai-data-url":
        return write_jsonl(directory / "openai.jsonl", [openai_record(data_url(blue))])
    if kind == "hf-jsonl":
        record = {"messages": hf_messages(), "images": ["images/red.png", "images/blue.png"]}
        return write_jsonl(directory / "hf.jsonl", [record])
    if kind == "hf-saved":
        hf_dataset(directory).save_to_disk(str(directory / "saved"))
        return directory / "saved"
    if kind == "hf-parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        images = [{"bytes": None, "path": "images/red.png"}, {"bytes": blue, "path": "blue.png"}]
        table = pa.Table.from_pylist([{"messages": hf_messages(), "images": images}])
        pq.write_table(table, directory / "hf.parquet")
        return directory / "hf.parquet"
    if kind == "sharegpt-json":
        (directory / "llava.json").write_text(json.dumps([sharegpt_record()], indent=2))
        return directory / "llava.json"
    if kind == "sharegpt-jsonl":
        record = sharegpt_record()
        del record["system"]
        record["conversations"].insert(0, {"from": "system", "value": SYSTEM})
        return write_jsonl(directory / "sharegpt.jsonl", [record])
    raise AssertionError(kind)


KINDS = [
    ("openai-paths", "openai"),
    ("openai-data-url", "openai"),
    ("hf-jsonl", "hf"),
    ("hf-saved", "hf"),
    ("hf-parquet", "hf"),
    ("sharegpt-json", "sharegpt"),
    ("sharegpt-jsonl", "sharegpt"),
]


@pytest.mark.parametrize(("kind", "expected_format"), KINDS)
def test_reader_gives_the_canonical_example(dataset_dir, kind, expected_format):
    result = read_dataset(write_format(kind, dataset_dir))

    assert result.format == expected_format
    assert result.problems == []
    assert result.records == 1
    [example] = result.examples
    assert example.messages == EXPECTED_MESSAGES
    assert [(i.width, i.height) for i in example.images] == [(16, 16), (24, 12)]
    assert [i.to_pil().getpixel((0, 0)) for i in example.images] == [(255, 0, 0), (0, 0, 255)]


def test_the_same_conversation_is_identical_in_every_format(dataset_dir):
    examples = {
        kind: read_dataset(write_format(kind, dataset_dir)).examples[0] for kind, _ in KINDS
    }

    first = examples["openai-paths"]
    for kind, example in examples.items():
        assert example == first, kind
        assert example.digest() == first.digest(), kind
        assert example.canonical_json() == first.canonical_json(), kind


def test_detected_format_can_be_overridden(dataset_dir):
    # A text-only `messages` file reads the same whether called OpenAI or HF.
    path = write_jsonl(
        dataset_dir / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            }
        ],
    )
    detected = read_dataset(path)
    named = read_dataset(path, "hf")
    assert (detected.format, named.format) == ("openai", "hf")
    assert detected.examples == named.examples


def test_openai_weight_is_honoured(dataset_dir):
    record = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Bad reply", "weight": 0},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Good reply", "weight": 1},
        ]
    }
    [example] = read_dataset(write_jsonl(dataset_dir / "w.jsonl", [record])).examples
    assert [m.weight for m in example.messages] == [0, 0, 0, 1]


def test_openai_name_is_a_warning_not_an_error(dataset_dir):
    record = {
        "messages": [
            {"role": "user", "content": "Hi", "name": "ann"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    result = read_dataset(write_jsonl(dataset_dir / "n.jsonl", [record]))
    assert len(result.examples) == 1
    [warning] = result.problems
    assert (warning.severity, warning.field) == ("warning", "messages[0].name")


def test_hf_single_image_column_and_text_content(dataset_dir):
    record = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "text": None}, {"type": "text", "text": "Colour?"}],
            },
            {"role": "assistant", "content": "red"},
        ],
        "image": "images/red.png",
    }
    [example] = read_dataset(write_jsonl(dataset_dir / "one.jsonl", [record])).examples
    assert example.messages[0].content == (ImagePart(0), TextPart("Colour?"))
    assert len(example.images) == 1


def test_hf_dataset_dict_reads_the_train_split_with_row_numbers(dataset_dir):
    import datasets

    table = hf_dataset(dataset_dir)
    datasets.DatasetDict(
        {"train": datasets.concatenate_datasets([table, table]), "test": table}
    ).save_to_disk(str(dataset_dir / "dict"))
    result = read_dataset(dataset_dir / "dict")
    assert [str(e.source) for e in result.examples] == [
        f"{dataset_dir / 'dict' / 'train'}[row 0]",
        f"{dataset_dir / 'dict' / 'train'}[row 1]",
    ]


def test_sharegpt_placeholder_in_the_middle_of_text(dataset_dir):
    record = {
        "conversations": [
            {"from": "human", "value": "Look at this <image> and say its colour."},
            {"from": "gpt", "value": "red"},
        ],
        "image": "images/red.png",
    }
    [example] = read_dataset(write_jsonl(dataset_dir / "mid.jsonl", [record])).examples
    assert example.messages[0].content == (
        TextPart("Look at this"),
        ImagePart(0),
        TextPart("and say its colour."),
    )


def test_json_array_records_carry_their_line(dataset_dir):
    path = write_format("sharegpt-json", dataset_dir)
    records = [sharegpt_record(), sharegpt_record()]
    path.write_text(json.dumps(records, indent=2))
    result = read_dataset(path)
    first_lines = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line == "  {"]
    assert [e.source.line for e in result.examples] == first_lines


def test_to_chat_messages_is_what_a_chat_template_takes(dataset_dir):
    [example] = read_dataset(write_format("openai-paths", dataset_dir)).examples
    assert example.to_chat_messages()[:3] == [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]


def test_digest_is_stable_and_content_addressed(dataset_dir):
    [a] = read_dataset(write_format("openai-paths", dataset_dir)).examples
    (dataset_dir / "images" / "blue.png").write_bytes(png("green", (24, 12)))
    [b] = read_dataset(write_format("openai-paths", dataset_dir)).examples
    assert a.messages == b.messages
    assert a != b and a.digest() != b.digest()
    assert dataset_digest([a, b]) != dataset_digest([b, a])
    assert len(a.digest()) == 64


def test_examples_built_in_code_equal_read_ones(dataset_dir):
    [read] = read_dataset(write_format("hf-jsonl", dataset_dir)).examples
    built = Example(EXPECTED_MESSAGES, read.images)
    assert built == read and built.digest() == read.digest()


def test_unreadable_files_raise(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "missing.jsonl")
    path = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "x", "completion": "y"}])
    with pytest.raises(DatasetError, match="cannot tell the dataset format"):
        read_dataset(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a dataset directory"):
        read_dataset(tmp_path / "empty")
    for format in (None, "openai"):
        with pytest.raises(DatasetError, match="the dataset has no records"):
            read_dataset(write_jsonl(tmp_path / "blank.jsonl", ["", "  "]), format)


def test_a_file_of_unreadable_lines_reports_them(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", ["{oops", b"\xff"])
    with pytest.raises(DatasetError) as raised:
        read_dataset(path)
    assert [(p.source.line, p.message[:12]) for p in raised.value.problems] == [
        (1, "invalid JSON"),
        (2, "not valid UT"),
        (None, "cannot tell "),
    ]
