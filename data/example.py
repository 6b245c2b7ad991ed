"""The canonical example every reader produces, and the problems readers report.

An `Example` is an ordered list of messages whose content parts are text or references to
the example's images. Whatever format a dataset came in, the same conversation gives an equal
`Example` with the same `digest()`: the source location is not part of equality, and images
compare by their decoded pixels, not by how they were encoded or where they were stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from gemlora.data.images import LoadedImage

Role = Literal["system", "user", "assistant"]
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    index: int  # into `Example.images`


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    role: Role
    content: tuple[Part, ...]
    # 1: the model is trained on this turn; 0: context only. Assistant turns default to 1
    # (OpenAI's `weight` can set 0); system and user turns are always 0.
    weight: Literal[0, 1] = 0

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


@dataclass(frozen=True)
class Source:
    """Where a record came from: a line (JSON Lines, JSON arrays) or a row (datasets, parquet)."""

    file: Path
    line: int | None = None  # 1-based, as editors count
    row: int | None = None  # 0-based, as `dataset[row]` indexes

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        if self.row is not None:
            return f"{self.file}[row {self.row}]"
        return str(self.file)


IN_MEMORY = Source(Path("<in memory>"))  # for examples built in code rather than read


@dataclass(frozen=True)
class Issue:
    """A problem found in one record, before it is tied to the record's location."""

    field: str
    message: str
    severity: Severity = "error"

    def at(self, source: Source) -> Problem:
        return Problem(source, self.field, self.message, self.severity)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset. `field` is a path into the record, e.g.
    `messages[2].content[0].image_url`; it is empty when the whole record or file is meant."""

    source: Source
    field: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else str(self.source)
        return f"{where}: {self.severity}: {self.message}"


class HasProblems:
    """Mixin for results that carry `problems`: the errors and the warnings among them."""

    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


class DatasetError(Exception):
    """A dataset that cannot be used at all (or, with `strict`, has any error)."""

    def __init__(self, problem: Problem, problems: Iterable[Problem] = ()):
        super().__init__(str(problem))
        self.problem = problem
        self.problems = [*problems] or [problem]


@dataclass(frozen=True)
class Example:
    messages: tuple[Message, ...]
    images: tuple[LoadedImage, ...] = ()
    source: Source | None = field(default=None, compare=False)

    def to_chat_messages(self) -> list[dict]:
        """HF-style messages that a Gemma 3 processor's chat template accepts."""
        return [chat_message(m) for m in self.messages]

    def pil_images(self) -> list[PILImage]:
        return [image.to_pil() for image in self.images]

    def canonical_json(self) -> str:
        """Everything that defines the example, images by pixel digest, as stable JSON."""
        document = {
            "messages": [canonical_message(m) for m in self.messages],
            "images": [image.pixel_sha256 for image in self.images],
        }
        return stable_json(document)

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


class Digestible(Protocol):
    """An example of any kind: SFT (`Example`) or preference (`PreferenceExample`)."""

    def digest(self) -> str: ...


def dataset_digest(examples: Iterable[Digestible]) -> str:
    """Digest of a dataset's content in order (what the training run logs as its input)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.digest().encode())
    return digest.hexdigest()


def chat_message(message: Message) -> dict:
    """One message as a Gemma 3 chat template (and TRL) takes it."""
    return {"role": message.role, "content": [_chat_part(part) for part in message.content]}


def canonical_message(message: Message) -> dict:
    """One message as it enters a digest."""
    return {
        "role": message.role,
        "weight": message.weight,
        "content": [_canonical_part(part) for part in message.content],
    }


def stable_json(document: object) -> str:
    return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _chat_part(part: Part) -> dict:
    if isinstance(part, ImagePart):
        return {"type": "image"}
    return {"type": "text", "text": part.text}


def _canonical_part(part: Part) -> dict:
    if isinstance(part, ImagePart):
        return {"type": "image", "index": part.index}
    return {"type": "text", "text": part.text}
