"""`read_dataset`: a dataset file in any supported format -> canonical examples + problems.

Each record goes through the same steps: convert (format-specific structure and types),
check the conversation rules, check the image count, then load every image under the limits.
A record with an error is left out and its problems reported; reading goes on, unless
`strict`, where the first error raises `DatasetError`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gemlora.data.example import (
    DatasetError,
    Example,
    HasProblems,
    Issue,
    Problem,
    Source,
    dataset_digest,
)
from gemlora.data.formats import CONVERTERS, DatasetFormat, Draft, RecordError, classify
from gemlora.data.images import ImageError, ImageLimits, ImageLoader
from gemlora.data.records import MB, Record, iter_records
from gemlora.data.remote import ImageFetcher
from gemlora.data.validate import check_messages

DETECTION_RECORDS = 50  # records looked at to tell the format
Converter = Callable[[dict], Draft]


@dataclass(frozen=True)
class ReadOptions:
    max_images: int = 8
    max_line_bytes: int = 10 * MB
    image_limits: ImageLimits = field(default_factory=ImageLimits)  # for local and data: images
    fetcher: ImageFetcher | None = None  # None: remote image URLs are refused
    require_assistant_last: bool = True
    strict: bool = False


@dataclass
class ReadResult(HasProblems):
    path: Path
    format: DatasetFormat
    records: int  # records seen, valid or not
    examples: list[Example]
    problems: list[Problem]

    def digest(self) -> str:
        return dataset_digest(self.examples)


def read_dataset(
    path: str | Path,
    format: DatasetFormat | None = None,
    *,
    options: ReadOptions | None = None,
    limit: int | None = None,
) -> ReadResult:
    """Read every record of a dataset (or until `limit` valid examples). Raises `DatasetError`
    when the file cannot be read at all, its format cannot be told, or (with `options.strict`)
    on the first error."""
    options = options or ReadOptions()
    path = Path(path)
    records = iter_records(path, options.max_line_bytes)
    if format is None:
        format, records = _detect(path, records)
    convert = CONVERTERS[format]
    fetch = options.fetcher.fetch_image if options.fetcher else None
    loader = ImageLoader(path if path.is_dir() else path.parent, options.image_limits, fetch)
    result = ReadResult(path, format, 0, [], [])
    for item in records:
        result.records += 1
        if isinstance(item, Record):
            example, problems = _read_record(item, convert, loader, options)
        else:
            example, problems = None, [item]
        _add(result, example, problems, options.strict)
        if limit is not None and len(result.examples) >= limit:
            break
    if result.records == 0:
        raise DatasetError(Problem(Source(path), "", "the dataset has no records"))
    return result


def _add(
    result: ReadResult, example: Example | None, problems: list[Problem], strict: bool
) -> None:
    result.problems += problems
    if example is not None:
        result.examples.append(example)
    errors = [p for p in problems if p.severity == "error"]
    if strict and errors:
        raise DatasetError(errors[0], result.problems)


def _detect(path: Path, records: Iterator) -> tuple[DatasetFormat, Iterator]:
    """Look at the first records to tell the format, then hand back all records."""
    seen = []
    for item in records:
        seen.append(item)
        if isinstance(item, Record) and (found := classify(item.value)):
            return found, itertools.chain(seen, records)
        if len(seen) >= DETECTION_RECORDS:
            break
    if not seen:
        raise DatasetError(Problem(Source(path), "", "the dataset has no records"))
    unknown = Problem(
        Source(path),
        "",
        "cannot tell the dataset format: no record has `messages` or `conversations` "
        "(pass --format openai, hf or sharegpt)",
    )
    unreadable = [item for item in seen if isinstance(item, Problem)]
    raise DatasetError(unknown, [*unreadable, unknown])


def _read_record(
    record: Record, convert: Converter, loader: ImageLoader, options: ReadOptions
) -> tuple[Example | None, list[Problem]]:
    example, issues = _build(record, convert, loader, options)
    return example, [issue.at(record.source) for issue in issues]


def _build(
    record: Record, convert: Converter, loader: ImageLoader, options: ReadOptions
) -> tuple[Example | None, list[Issue]]:
    try:
        draft = convert(record.value)
    except RecordError as error:
        return None, [Issue(error.field, error.message)]
    issues = draft.warnings + check_messages(
        draft.messages,
        draft.message_fields,
        require_assistant_last=options.require_assistant_last,
        container=draft.container,
    )
    if len(draft.images) > options.max_images:
        issues.append(
            Issue(
                draft.images[options.max_images].field,
                f"{len(draft.images)} images, over the limit of {options.max_images} "
                "per example (--max-images)",
            )
        )
    if _has_error(issues):
        return None, issues
    images = []
    for ref in draft.images:
        try:
            images.append(loader.load(ref))
        except ImageError as error:
            issues.append(Issue(ref.field, str(error)))
    if _has_error(issues):
        return None, issues
    return Example(tuple(draft.messages), tuple(images), record.source), issues


def _has_error(issues: list[Issue]) -> bool:
    return any(issue.severity == "error" for issue in issues)
