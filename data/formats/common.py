"""What every format converter shares: the draft it builds and strict little type checks that
name the field at fault."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gemlora.data.conversation_rules import MessageFields
from gemlora.data.example import ImagePart, Issue, Message, Part, Role, TextPart
from gemlora.data.images import ImageRef

DatasetFormat = Literal["openai", "hf", "sharegpt"]
FORMATS: tuple[DatasetFormat, ...] = ("openai", "hf", "sharegpt")
PreferenceFormat = Literal["openai-preference", "trl-preference"]
PREFERENCE_FORMATS: tuple[PreferenceFormat, ...] = ("openai-preference", "trl-preference")
PromptFormat = Literal["openai-reinforcement"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("openai-reinforcement",)
AnyFormat = Literal[DatasetFormat, PreferenceFormat, PromptFormat]  # one flat Literal of all six
MISSING = object()  # a key that is absent, as opposed to present with null


class RecordError(Exception):
    """A record that cannot be converted; `field` is where the fault is."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass
class Draft:
    """A converted record whose images are references, not yet loaded."""

    messages: list[Message] = field(default_factory=list)
    message_fields: list[MessageFields] = field(default_factory=list)
    images: list[ImageRef] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    container: str = "messages"  # the record's field holding the turns
    image_parts: int = 0  # image parts seen so far, in order: the next part's index

    def image_part(self) -> ImagePart:
        part = ImagePart(self.image_parts)
        self.image_parts += 1
        return part

    def add_message(
        self,
        role: Role,
        content: list[Part],
        weight: int | None = None,
        fields: MessageFields | None = None,
    ) -> None:
        default = 1 if role == "assistant" else 0
        self.messages.append(Message(role, tuple(content), default if weight is None else weight))
        index = len(self.message_fields)
        self.message_fields.append(fields or MessageFields.of(index, self.container))

    def warn(self, field: str, message: str) -> None:
        self.warnings.append(Issue(field, message, "warning"))


@dataclass
class PreferenceDraft:
    """A converted preference record: the prompt and each reply as their own draft, so that every
    message keeps the field it came from. Only the prompt's images are loaded; an image in a
    reply is refused by `check_preference` before anything is loaded."""

    prompt: Draft
    chosen: Draft
    rejected: Draft

    @property
    def warnings(self) -> list[Issue]:
        return self.prompt.warnings + self.chosen.warnings + self.rejected.warnings


@dataclass
class PromptDraft:
    """A converted reinforcement prompt record: the prompt's turns, and the record's other fields
    as they were (the item a grader reads)."""

    prompt: Draft
    item: dict

    @property
    def warnings(self) -> list[Issue]:
        return self.prompt.warnings


def text_parts(text: str) -> list[Part]:
    """A text part, trimmed as the chat template trims it; nothing for blank text."""
    stripped = text.strip()
    return [TextPart(stripped)] if stripped else []


def type_name(value: object) -> str:
    """JSON's name for a value's type, for messages that a dataset author recognises."""
    if value is MISSING:
        return "nothing (missing)"
    names = {
        type(None): "null",
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        bytes: "bytes",
    }
    return names.get(type(value), type(value).__name__)


def require_dict(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise RecordError(field, f"expected an object, got {type_name(value)}")
    return value


def require_list(value: object, field: str) -> list:
    if not isinstance(value, list):
        raise RecordError(field, f"expected an array, got {type_name(value)}")
    return value


def require_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError(field, f"expected a string, got {type_name(value)}")
    return value


def check_image_count(draft: Draft, what: str, field: str, parts: int | None = None) -> None:
    """The placeholders (or image parts) in the text must match the images given; `parts`
    counts them when they are spread over several drafts (default: the draft's own)."""
    parts = draft.image_parts if parts is None else parts
    if parts != len(draft.images):
        raise RecordError(
            field,
            f"{parts} {what} in the conversation but {len(draft.images)} "
            f"image{'s' if len(draft.images) != 1 else ''} given",
        )


def content_parts(
    draft: Draft, content: object, field: str, read_part: Callable[[Draft, dict, str], list[Part]]
) -> list[Part]:
    """A message's content: a string, or an array of part objects each read by `read_part`."""
    if isinstance(content, str):
        return text_parts(content)
    if not isinstance(content, list):
        raise RecordError(
            field, f"expected a string or an array of content parts, got {type_name(content)}"
        )
    parts: list[Part] = []
    for index, raw in enumerate(content):
        part_field = f"{field}[{index}]"
        parts += read_part(draft, require_dict(raw, part_field), part_field)
    return parts
