"""Uploaded fine-tuning files: checked with `data/` on arrival, stored in one normal form.

An upload in any dataset format `data/` reads (OpenAI chat JSONL, a ShareGPT/LLaVA JSON array,
a Hugging Face parquet file; for DPO, OpenAI preference JSONL or TRL preference rows; for
reinforcement, OpenAI's prompt-only JSONL with item fields) is validated as `gemlora data
validate` would: roles, content, replies, image count, and every image loaded under the byte and
pixel limits. The summary's `kind` (`chat`, `preference` or `prompt`) says which training method
the file can feed. Image URLs are fetched by
the gateway's SSRF-safe fetcher under its image policy; a relative path cannot be resolved in an
upload and is refused. Any error refuses the whole file, naming each bad line and field.

What is stored is OpenAI chat (preference, prompt) JSONL with every image inline as a `data:` URL,
so a training job needs nothing but the file: no path, no network.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gemlora.data import (
    DatasetError,
    Example,
    PreferenceExample,
    Problem,
    PromptExample,
    ReadOptions,
    Source,
    is_preference_file,
    is_prompt_file,
    validate_dataset,
    validate_preferences,
    validate_prompts,
)
from gemlora.data.formats.openai import openai_record as data_openai_record
from gemlora.data.formats.openai_preference import openai_preference_record
from gemlora.data.formats.openai_reinforcement import openai_reinforcement_record
from gemlora.data.images import data_url
from gemlora.data.safe_fetch import ImageFetcher

# The formats `data/` tells apart by content, plus parquet, which it tells by the suffix.
UPLOAD_SUFFIXES = (".jsonl", ".json", ".parquet")
PROBLEMS_SHOWN = 20  # in an error message; the count says how many there were in all


class UploadRejected(ValueError):
    """The file cannot be used: `problems` names each bad line (file:line: field: message)."""

    def __init__(self, summary: str, problems: list[str]) -> None:
        self.summary = summary
        self.problems = problems
        shown = problems[:PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        lines = [summary, *shown] + ([f"... and {more} more"] if more > 0 else [])
        super().__init__("\n".join(lines))


def upload_suffix(filename: str) -> str:
    """The suffix the upload is stored under while it is read (it tells parquet apart)."""
    suffix = Path(filename).suffix.lower()
    return suffix if suffix in UPLOAD_SUFFIXES else ".jsonl"


def ingest(upload: Path, filename: str, destination: Path, fetcher: ImageFetcher | None) -> dict:
    """Validate the uploaded file at `upload` and write its normal form to `destination`.
    Returns the file's summary (kind, examples, images, format, digest, warnings); raises
    `UploadRejected` with every problem when any example has an error."""
    options = ReadOptions(fetcher=fetcher)
    kind = file_kind(upload)
    validate = VALIDATORS[kind]
    try:
        report = validate(upload, options=options)
    except DatasetError as error:
        problems = [_named(p, filename) for p in error.problems]
        raise UploadRejected(f"{filename} cannot be read as a {kind} dataset:", problems) from None
    errors = [_named(p, filename) for p in report.errors]
    if errors:
        raise UploadRejected(
            f"{filename} has {len(errors)} error(s); fix them (check locally with `gemlora data "
            "validate`) and upload again. Images must be data: URLs or https URLs the gateway "
            "may fetch; relative paths cannot be resolved in an upload.",
            errors,
        )
    if not report.examples:
        raise UploadRejected(f"{filename} has no examples", [])
    write_jsonl(report.examples, destination)
    return {
        "kind": kind,
        "format": report.read.format,
        "examples": len(report.examples),
        "images": sum(len(example.images) for example in report.examples),
        "digest": report.read.digest(),
        "warnings": [_named(p, filename) for p in report.warnings],
    }


VALIDATORS = {
    "chat": validate_dataset,
    "preference": validate_preferences,
    "prompt": validate_prompts,
}


def file_kind(upload: Path) -> str:
    """`preference`, `prompt` (reinforcement) or `chat`, by the first records that tell."""
    if is_preference_file(upload):
        return "preference"
    return "prompt" if is_prompt_file(upload) else "chat"


def _named(problem: Problem, filename: str) -> str:
    """The problem located in the file the client uploaded, not in the gateway's temp copy."""
    where = Source(Path(filename), problem.source.line, problem.source.row)
    return str(dataclasses.replace(problem, source=where))


# --- the normal form ---------------------------------------------------------------------------


def write_jsonl(
    examples: list[Example] | list[PreferenceExample] | list[PromptExample], destination: Path
) -> None:
    """OpenAI chat (preference, prompt) JSONL with images as data URLs, written to a temp file
    and renamed."""
    partial = destination.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(openai_record(example), ensure_ascii=False) + "\n")
    partial.replace(destination)


def openai_record(example: Example | PreferenceExample | PromptExample) -> dict[str, Any]:
    """The example as a stored line: OpenAI chat, preference or prompt JSONL with its images
    inline."""

    def image_url(index: int) -> str:
        return data_url(example.images[index])

    if isinstance(example, PreferenceExample):
        return openai_preference_record(example, image_url)
    if isinstance(example, PromptExample):
        return openai_reinforcement_record(example, image_url)
    return data_openai_record(example, image_url)
