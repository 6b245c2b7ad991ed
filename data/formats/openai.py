"""OpenAI chat fine-tuning JSONL: `{"messages": [{"role", "content", "weight"?}, ...]}`.

Content is a string or a list of `{"type": "text", "text"}` and
`{"type": "image_url", "image_url": {"url"}}` parts; the URL is https, a `data:` URL or a path
relative to the dataset file. `weight` (0 or 1) on an assistant turn says whether to train on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gemlora.data.example import Example, ImagePart, Part, Role
from gemlora.data.formats.common import (
    MISSING,
    Draft,
    RecordError,
    content_parts,
    require_dict,
    require_list,
    require_str,
    text_parts,
)
from gemlora.data.images import ImageRef

ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
UNSUPPORTED_RECORD_KEYS = ("tools", "functions")
UNSUPPORTED_MESSAGE_KEYS = ("tool_calls", "function_call")


def convert(record: dict) -> Draft:
    refuse_tools(record, "")
    messages = require_list(record.get("messages", MISSING), "messages")
    draft = Draft()
    for index, raw in enumerate(messages):
        add_message(draft, require_dict(raw, f"messages[{index}]"), f"messages[{index}]")
    return draft


def refuse_tools(record: dict, prefix: str) -> None:
    """Tool definitions at `prefix` (e.g. `input.`) are refused: Gemma 3 has no tool turns."""
    for key in UNSUPPORTED_RECORD_KEYS:
        if record.get(key):
            raise RecordError(prefix + key, "tool and function definitions are not supported")


def unweighted_draft(messages: object, container: str, why: str) -> Draft:
    """The array of messages at `container` as a draft, for data where `weight` means nothing
    (preference and reinforcement prompts): a weight is ignored with a warning saying `why`,
    rather than refused, so that chat fine-tuning files can be reused as they are."""
    draft = Draft(container=container)
    for index, raw in enumerate(require_list(messages, container)):
        field = f"{container}[{index}]"
        message = require_dict(raw, field)
        if message.get("weight") is not None:
            draft.warn(f"{field}.weight", f"ignored: {why}")
            message = {key: value for key, value in message.items() if key != "weight"}
        add_message(draft, message, field)
    return draft


def add_message(draft: Draft, message: dict, field: str) -> None:
    """One message object at `field` onto the draft (shared with the preference and
    reinforcement formats)."""
    role = _role(message, field)
    for key in UNSUPPORTED_MESSAGE_KEYS:
        if message.get(key):
            raise RecordError(f"{field}.{key}", "tool and function calls are not supported")
    if message.get("name") is not None:
        draft.warn(f"{field}.name", "ignored: the Gemma 3 chat template has no speaker names")
    content = _content(draft, message.get("content", MISSING), f"{field}.content")
    draft.add_message(role, content, _weight(message, role, field))


def _role(message: dict, field: str) -> Role:
    role = require_str(message.get("role", MISSING), f"{field}.role")
    if role not in ROLES:
        raise RecordError(
            f"{field}.role", f"unsupported role {role!r} (expected system, user or assistant)"
        )
    return ROLES[role]


def _weight(message: dict, role: Role, field: str) -> int | None:
    weight = message.get("weight")
    if weight is None:
        return None
    if role != "assistant":
        raise RecordError(f"{field}.weight", "weight is only allowed on assistant messages")
    if isinstance(weight, bool) or weight not in (0, 1):
        raise RecordError(f"{field}.weight", f"weight must be 0 or 1, got {weight!r}")
    return int(weight)


def _content(draft: Draft, content: object, field: str) -> list[Part]:
    return content_parts(draft, content, field, _part)


def _part(draft: Draft, part: dict, field: str) -> list[Part]:
    kind = require_str(part.get("type", MISSING), f"{field}.type")
    if kind == "text":
        return text_parts(require_str(part.get("text", MISSING), f"{field}.text"))
    if kind == "image_url":
        image = require_dict(part.get("image_url", MISSING), f"{field}.image_url")
        url = require_str(image.get("url", MISSING), f"{field}.image_url.url")
        draft.images.append(ImageRef(f"{field}.image_url", url))
        return [draft.image_part()]
    raise RecordError(f"{field}.type", f"unsupported content part type {kind!r}")


def openai_record(example: Example, image_url: Callable[[int], str]) -> dict[str, Any]:
    """The example as one line of this format; `image_url(i)` gives image i's URL (a path
    relative to the file, or a data URL). Text-only messages get string content."""
    messages = []
    for message in example.messages:
        if any(isinstance(part, ImagePart) for part in message.content):
            content: str | list = [_record_part(part, image_url) for part in message.content]
        else:
            content = message.text
        record: dict[str, Any] = {"role": message.role, "content": content}
        if message.role == "assistant" and message.weight == 0:
            record["weight"] = 0  # context only; assistant turns are trained on by default
        messages.append(record)
    return {"messages": messages}


def _record_part(part: Part, image_url: Callable[[int], str]) -> dict[str, Any]:
    if isinstance(part, ImagePart):
        return {"type": "image_url", "image_url": {"url": image_url(part.index)}}
    return {"type": "text", "text": part.text}
