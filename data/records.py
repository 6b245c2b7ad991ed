"""Raw records out of dataset files, each with its location: JSON Lines, a JSON array, parquet,
or a directory written by `datasets.save_to_disk`.

A record that cannot be parsed (a bad line) is yielded as a `Problem` and reading goes on;
a file that cannot be read at all raises `DatasetError`. JSON Lines are read line by line under
a byte limit, so an oversized line is refused without ever being held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gemlora.data.example import DatasetError, Problem, Source
from gemlora.data.formats.common import type_name

MB = 1_000_000
ARROW_BATCH = 64


@dataclass(frozen=True)
class Record:
    source: Source
    value: dict


def iter_records(path: Path, max_line_bytes: int = 10 * MB) -> Iterator[Record | Problem]:
    if path.is_dir():
        yield from _iter_saved_dataset(path)
    elif not path.is_file():
        raise DatasetError(Problem(Source(path), "", "no such file or directory"))
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path)
    elif _first_byte(path) == b"[":
        yield from _iter_json_array(path)
    else:
        yield from _iter_json_lines(path, max_line_bytes)


def is_json_lines(path: Path) -> bool:
    """Whether `iter_records` reads this file as JSON Lines (one record per line)."""
    return path.is_file() and path.suffix != ".parquet" and _first_byte(path) != b"["


def _first_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head[:1]


# --- JSON Lines ------------------------------------------------------------------------------


def _iter_json_lines(path: Path, max_line_bytes: int) -> Iterator[Record | Problem]:
    with path.open("rb") as f:
        number = 0
        while True:
            line, size = _read_line(f, max_line_bytes)
            if not size:
                return
            number += 1
            source = Source(path, line=number)
            if line is None:
                yield Problem(
                    source,
                    "",
                    f"line is {size:,} bytes, over the limit of {max_line_bytes:,} bytes",
                )
                continue
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if line.strip():
                yield _parse_line(line, source)


def _read_line(f, limit: int) -> tuple[bytes | None, int]:
    """The next line and its size; the line is None (and skipped over) when over `limit`."""
    line = f.readline(limit + 1)
    if len(line) <= limit or line.endswith(b"\n"):
        return line, len(line)
    size = len(line)
    while chunk := f.readline(1 << 20):
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return None, size


def _parse_line(line: bytes, source: Source) -> Record | Problem:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return Problem(
            source,
            "",
            f"not valid UTF-8: byte 0x{line[error.start]:02x} at column {error.start + 1}",
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return Problem(source, "", f"invalid JSON: {error.msg} at column {error.colno}")
    if not isinstance(value, dict):
        return Problem(source, "", f"expected a JSON object, got {type_name(value)}")
    return Record(source, value)


# --- JSON array ------------------------------------------------------------------------------


def _iter_json_array(path: Path) -> Iterator[Record | Problem]:
    """A top-level JSON array (ShareGPT/LLaVA files), each element tagged with its line."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DatasetError(
            Problem(Source(path, line=line), "", f"not valid UTF-8: byte 0x{data[error.start]:02x}")
        ) from None
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0) + 1  # past '['
    line, counted = 1, 0
    while True:
        position = _skip_space(text, position)
        if text.startswith("]", position):
            return
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DatasetError(
                Problem(Source(path, line=error.lineno), "", f"invalid JSON: {error.msg}")
            ) from None
        line += text.count("\n", counted, position)
        counted = position
        source = Source(path, line=line)
        if isinstance(value, dict):
            yield Record(source, value)
        else:
            yield Problem(source, "", f"expected a JSON object, got {type_name(value)}")
        position = _skip_space(text, end)
        if text.startswith(",", position):
            position += 1
        elif not text.startswith("]", position):
            line += text.count("\n", counted, position)
            raise DatasetError(
                Problem(Source(path, line=line), "", "invalid JSON: expected ',' or ']'")
            )


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


# --- parquet and saved datasets --------------------------------------------------------------


def _iter_parquet(path: Path) -> Iterator[Record | Problem]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=ARROW_BATCH)
    except (pyarrow.ArrowException, OSError) as error:
        problem = Problem(Source(path), "", f"not a readable parquet file: {error}")
        raise DatasetError(problem) from None
    yield from _rows(path, (batch.to_pylist() for batch in batches))


def _iter_saved_dataset(path: Path) -> Iterator[Record | Problem]:
    import datasets

    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / marker).is_file() for marker in markers):
        raise DatasetError(
            Problem(Source(path), "", "not a dataset directory (written by save_to_disk)")
        )
    loaded = datasets.load_from_disk(str(path))
    source_path = path
    if isinstance(loaded, datasets.DatasetDict):
        split = _pick_split(path, list(loaded))
        loaded, source_path = loaded[split], path / split
    batches = loaded.with_format("arrow").iter(batch_size=ARROW_BATCH)
    yield from _rows(source_path, (batch.to_pylist() for batch in batches))


def _pick_split(path: Path, splits: list[str]) -> str:
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise DatasetError(
        Problem(
            Source(path),
            "",
            f"the dataset has splits {', '.join(splits)} and none is `train`: "
            "pass the split's directory",
        )
    )


def _rows(path: Path, batches: Iterator[list[dict]]) -> Iterator[Record]:
    row = 0
    for batch in batches:
        for value in batch:
            yield Record(Source(path, row=row), value)
            row += 1
