"""`read_dataset`: a dataset file in any supported format -> canonical examples + problems;
`read_preferences`: the same for preference (DPO) datasets; `read_prompts`: the same for
reinforcement prompts (RFT), each with the item its grader reads.

Each record goes through the same steps: convert (format-specific structure and types),
check the conversation rules, check the image count, then load every image under the limits.
A record with an error is left out and its problems reported; reading goes on, unless
`strict`, where the first error raises `DatasetError`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, NoReturn, TypeVar

from gemlora.data.conversation_rules import check_messages, check_preference, check_prompt
from gemlora.data.example import (
    DatasetError,
    Example,
    HasProblems,
    Issue,
    Problem,
    Source,
    dataset_digest,
)
from gemlora.data.formats import (
    CONVERTERS,
    PREFERENCE_CONVERTERS,
    PROMPT_CONVERTERS,
    DatasetFormat,
    Draft,
    PreferenceDraft,
    PreferenceFormat,
    PromptDraft,
    PromptFormat,
    RecordError,
    classify,
    classify_preference,
    classify_prompt,
)
from gemlora.data.images import ImageError, ImageLimits, ImageLoader, ImageRef, LoadedImage
from gemlora.data.preference import PreferenceExample, preference_digest
from gemlora.data.prompts import PromptExample, prompt_digest
from gemlora.data.records import MB, Record, iter_records
from gemlora.data.safe_fetch import ImageFetcher

DETECTION_RECORDS = 50  # records looked at to tell the format
Converter = Callable[[dict], Draft]
PreferenceConverter = Callable[[dict], PreferenceDraft]
PromptConverter = Callable[[dict], PromptDraft]
E = TypeVar("E", Example, PreferenceExample, PromptExample)
F = TypeVar("F", DatasetFormat, PreferenceFormat, PromptFormat)


@dataclass(frozen=True)
class ReadOptions:
    max_images: int = 8
    max_line_bytes: int = 10 * MB
    image_limits: ImageLimits = field(default_factory=ImageLimits)  # for local and data: images
    fetcher: ImageFetcher | None = None  # None: remote image URLs are refused
    # SFT only (a preference or reinforcement prompt always ends with user); False also lets
    # `read_dataset` read a file of prompts as chat examples
    require_assistant_last: bool = True
    strict: bool = False


@dataclass
class _Read(HasProblems, Generic[E, F]):
    path: Path
    format: F
    records: int  # records seen, valid or not
    examples: list[E]
    problems: list[Problem]


@dataclass
class ReadResult(_Read[Example, DatasetFormat]):
    def digest(self) -> str:
        return dataset_digest(self.examples)


@dataclass
class PreferenceReadResult(_Read[PreferenceExample, PreferenceFormat]):
    def digest(self) -> str:
        return preference_digest(self.examples)


@dataclass
class PromptReadResult(_Read[PromptExample, PromptFormat]):
    def digest(self) -> str:
        return prompt_digest(self.examples)


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

    def detect(path: Path, records: Iterator) -> tuple[DatasetFormat, Iterator]:
        return _detect(path, records, options.require_assistant_last)

    return _read(ReadResult, path, format, options, limit, detect, CONVERTERS, _build)


def read_preferences(
    path: str | Path,
    format: PreferenceFormat | None = None,
    *,
    options: ReadOptions | None = None,
    limit: int | None = None,
) -> PreferenceReadResult:
    """`read_dataset` for preference datasets (OpenAI preference JSONL, TRL preference rows):
    every record, or until `limit` valid pairs."""
    return _read(
        PreferenceReadResult,
        path,
        format,
        options or ReadOptions(),
        limit,
        _detect_preference,
        PREFERENCE_CONVERTERS,
        _build_preference,
    )


def read_prompts(
    path: str | Path,
    format: PromptFormat | None = None,
    *,
    options: ReadOptions | None = None,
    limit: int | None = None,
) -> PromptReadResult:
    """`read_dataset` for reinforcement prompt datasets (OpenAI reinforcement JSONL): every
    record, or until `limit` valid prompts."""
    return _read(
        PromptReadResult,
        path,
        format,
        options or ReadOptions(),
        limit,
        _detect_prompt,
        PROMPT_CONVERTERS,
        _build_prompt,
    )


R = TypeVar("R", ReadResult, PreferenceReadResult, PromptReadResult)


def _read(
    result_type: type[R],
    path: str | Path,
    format: str | None,
    options: ReadOptions,
    limit: int | None,
    detect: Callable[[Path, Iterator], tuple[str, Iterator]],
    converters: dict,
    build: Callable,
) -> R:
    """What every reader does: detect the format (unless given), then convert, check and load
    each record with `build`."""
    path = Path(path)
    records = iter_records(path, options.max_line_bytes)
    if format is None:
        format, records = detect(path, records)
    convert = converters[format]
    loader = _loader(path, options)
    result = result_type(path, format, 0, [], [])
    _read_all(
        result, records, lambda record: build(record, convert, loader, options), options, limit
    )
    return result


def is_preference_file(path: str | Path, max_line_bytes: int = 10 * MB) -> bool:
    """Whether the first record that tells a format is a preference record. False for SFT
    datasets and for files that cannot be read (reading them as SFT reports why)."""
    try:
        records = iter_records(Path(path), max_line_bytes)
        with contextlib.closing(records):
            for item in itertools.islice(records, DETECTION_RECORDS):
                if not isinstance(item, Record):
                    continue
                if classify_preference(item.value):
                    return True
                if classify(item.value):
                    return False
    except DatasetError:
        return False
    return False


def is_prompt_file(path: str | Path, max_line_bytes: int = 10 * MB) -> bool:
    """Whether the file holds reinforcement prompts: most of its first records that tell a kind
    are prompts. False for chat and preference datasets and for files that cannot be read
    (reading them as SFT reports why)."""
    try:
        records = iter_records(Path(path), max_line_bytes)
        with contextlib.closing(records):
            return _mostly_prompts(itertools.islice(records, DETECTION_RECORDS))
    except DatasetError:
        return False


def _mostly_prompts(seen: Iterable[Record | Problem]) -> bool:
    """Whether more of the records that tell a kind are prompts than chat or preference records.
    A prompt and a chat record differ only in their last turn, which is just what a malformed
    record gets wrong, so the first record alone would send a chat file with one bad record on
    its first line down the wrong reader (and every good record after it would be an error)."""
    prompts = others = 0
    for item in seen:
        if not isinstance(item, Record):
            continue
        if classify_prompt(item.value):
            prompts += 1
        elif classify_preference(item.value) or classify(item.value):
            others += 1
    return prompts > others


def _loader(path: Path, options: ReadOptions) -> ImageLoader:
    fetch = options.fetcher.fetch_image if options.fetcher else None
    return ImageLoader(path if path.is_dir() else path.parent, options.image_limits, fetch)


def _read_all(
    result: _Read[E, F],
    records: Iterator[Record | Problem],
    build: Callable[[Record], tuple[E | None, list[Issue]]],
    options: ReadOptions,
    limit: int | None = None,
) -> None:
    for item in records:
        result.records += 1
        if isinstance(item, Record):
            example, issues = build(item)
            problems = [issue.at(item.source) for issue in issues]
        else:
            example, problems = None, [item]
        result.problems += problems
        if example is not None:
            result.examples.append(example)
        errors = [p for p in problems if p.severity == "error"]
        if options.strict and errors:
            raise DatasetError(errors[0], result.problems)
        if limit is not None and len(result.examples) >= limit:
            break
    if result.records == 0:
        raise DatasetError(Problem(Source(result.path), "", "the dataset has no records"))


def _detect(
    path: Path, records: Iterator, refuse_prompts: bool = True
) -> tuple[DatasetFormat, Iterator]:
    """Look at the first records to tell the format, then hand back all records. A file of
    reinforcement prompts is refused as a whole (`refuse_prompts`), rather than each of its
    records for not ending with an assistant turn."""
    seen, records = _peek(records)
    if refuse_prompts and _mostly_prompts(seen):
        _unknown(
            path,
            seen,
            "this is a reinforcement prompt dataset (openai-reinforcement): its conversations end "
            "with a user turn, where a chat dataset is expected (prompt data is read by "
            "read_prompts)",
        )
    found, records, seen = _first_match(path, records, classify)
    if found:
        return found, records
    kinds = (classify_preference(item.value) for item in seen if isinstance(item, Record))
    preference = next((kind for kind in kinds if kind), None)
    if preference:
        message = (
            f"this is a preference dataset ({preference}), where a chat dataset is expected "
            "(preference data is read by read_preferences)"
        )
    else:
        message = (
            "cannot tell the dataset format: no record has `messages` or `conversations` "
            "(pass --format openai, hf or sharegpt)"
        )
    _unknown(path, seen, message)


def _detect_preference(path: Path, records: Iterator) -> tuple[PreferenceFormat, Iterator]:
    found, records, seen = _first_match(path, records, classify_preference)
    if found:
        return found, records
    _unknown(
        path,
        seen,
        "cannot tell the preference format: no record has `preferred_output` (OpenAI) or "
        "`chosen` and `rejected` (TRL) (pass --format openai-preference or trl-preference)",
    )


def _detect_prompt(path: Path, records: Iterator) -> tuple[PromptFormat, Iterator]:
    seen, records = _peek(records)
    if not seen:
        raise DatasetError(Problem(Source(path), "", "the dataset has no records"))
    if _mostly_prompts(seen):
        return "openai-reinforcement", records
    values = [item.value for item in seen if isinstance(item, Record)]
    preference = next((kind for value in values if (kind := classify_preference(value))), None)
    chat = next((kind for value in values if (kind := classify(value))), None)
    if preference:
        message = (
            f"this is a preference dataset ({preference}), where a reinforcement prompt dataset "
            "is expected (preference data is read by read_preferences)"
        )
    elif chat:
        message = (
            f"this is a chat dataset ({chat}): its conversations end with an assistant turn, "
            "where a reinforcement prompt dataset is expected (chat data is read by read_dataset)"
        )
    else:
        message = (
            "cannot tell the prompt format: no record has `messages` ending with a user turn "
            "(pass --format openai-reinforcement)"
        )
    _unknown(path, seen, message)


def _peek(records: Iterator) -> tuple[list, Iterator]:
    """The first records (as many as detection looks at), and all records to read."""
    seen = list(itertools.islice(records, DETECTION_RECORDS))
    return seen, itertools.chain(seen, records)


def _first_match(
    path: Path, records: Iterator, tell: Callable[[object], F | None]
) -> tuple[F | None, Iterator, list]:
    """The format of the first record that tells one, and all records to read; or None and the
    records looked at."""
    seen = []
    for item in records:
        seen.append(item)
        if isinstance(item, Record) and (found := tell(item.value)):
            return found, itertools.chain(seen, records), seen
        if len(seen) >= DETECTION_RECORDS:
            break
    if not seen:
        raise DatasetError(Problem(Source(path), "", "the dataset has no records"))
    return None, records, seen


def _unknown(path: Path, seen: list, message: str) -> NoReturn:
    unknown = Problem(Source(path), "", message)
    unreadable = [item for item in seen if isinstance(item, Problem)]
    raise DatasetError(unknown, [*unreadable, unknown])


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
    images = _load_images(draft.images, loader, options, issues)
    if images is None:
        return None, issues
    return Example(tuple(draft.messages), images, record.source), issues


def _build_preference(
    record: Record, convert: PreferenceConverter, loader: ImageLoader, options: ReadOptions
) -> tuple[PreferenceExample | None, list[Issue]]:
    try:
        draft = convert(record.value)
    except RecordError as error:
        return None, [Issue(error.field, error.message)]
    issues = draft.warnings + check_preference(draft)
    images = _load_images(draft.prompt.images, loader, options, issues)
    if images is None:
        return None, issues
    # The prompt is context and both replies are what DPO compares, whatever the source said.
    prompt = tuple(replace(message, weight=0) for message in draft.prompt.messages)
    chosen = replace(draft.chosen.messages[0], weight=1)
    rejected = replace(draft.rejected.messages[0], weight=1)
    return PreferenceExample(prompt, chosen, rejected, images, record.source), issues


def _build_prompt(
    record: Record, convert: PromptConverter, loader: ImageLoader, options: ReadOptions
) -> tuple[PromptExample | None, list[Issue]]:
    try:
        draft = convert(record.value)
    except RecordError as error:
        return None, [Issue(error.field, error.message)]
    issues = draft.warnings + check_prompt(draft.prompt)
    images = _load_images(draft.prompt.images, loader, options, issues)
    if images is None:
        return None, issues
    # Nothing in a prompt is trained on: the model learns from its own graded replies.
    prompt = tuple(replace(message, weight=0) for message in draft.prompt.messages)
    return PromptExample(prompt, images, draft.item, record.source), issues


def _load_images(
    refs: Sequence[ImageRef], loader: ImageLoader, options: ReadOptions, issues: list[Issue]
) -> tuple[LoadedImage, ...] | None:
    """The record's images, loaded once `issues` (added to here) has no error; None if it has."""
    if len(refs) > options.max_images:
        issues.append(
            Issue(
                refs[options.max_images].field,
                f"{len(refs)} images, over the limit of {options.max_images} "
                "per example (--max-images)",
            )
        )
    if _has_error(issues):
        return None
    images = []
    for ref in refs:
        try:
            images.append(loader.load(ref))
        except ImageError as error:
            issues.append(Issue(ref.field, str(error)))
    return None if _has_error(issues) else tuple(images)


def _has_error(issues: list[Issue]) -> bool:
    return any(issue.severity == "error" for issue in issues)
