"""TRL's conversational preference rows (what `DPOTrainer` takes):
`{"prompt": [messages], "chosen": [messages], "rejected": [messages], "images"?: [...]}`.

Messages are read exactly as in the `hf` format (string content, or text and `{"type": "image"}`
parts) and so are the images: an `images` (or `image`) column in the order the image parts
appear, as paths, URLs or `{bytes, path}` structs from a saved dataset or parquet file.

Without `prompt` (TRL's implicit prompt), `chosen` and `rejected` each hold the whole
conversation: all their messages but the last must be equal, and are the prompt. TRL's standard
(plain-text) rows are refused: no chat template would be applied to them.
"""

from __future__ import annotations

from gemlora.data.example import ImagePart
from gemlora.data.formats.common import (
    MISSING,
    Draft,
    PreferenceDraft,
    RecordError,
    check_image_count,
)
from gemlora.data.formats.hf import add_images, add_messages, images_field


def convert(record: dict) -> PreferenceDraft:
    if "prompt" in record:
        draft = PreferenceDraft(
            prompt=_draft(record["prompt"], "prompt"),
            chosen=_draft(record.get("chosen", MISSING), "chosen"),
            rejected=_draft(record.get("rejected", MISSING), "rejected"),
        )
    else:
        draft = _implicit_prompt(record)
    add_images(draft.prompt, record)
    # Image parts anywhere count against the images given; one in a reply is then refused by
    # `check_preference` with its own message.
    parts = sum(
        isinstance(part, ImagePart)
        for side in (draft.prompt, draft.chosen, draft.rejected)
        for message in side.messages
        for part in message.content
    )
    check_image_count(draft.prompt, "image parts", images_field(record), parts)
    return draft


def _draft(messages: object, container: str) -> Draft:
    if isinstance(messages, str):
        raise RecordError(
            container,
            "plain text is TRL's standard format, which is not supported: give a list of "
            "messages (TRL's conversational format), so that the chat template applies",
        )
    draft = Draft(container=container)
    add_messages(draft, messages)
    return draft


def _implicit_prompt(record: dict) -> PreferenceDraft:
    chosen = _draft(record.get("chosen", MISSING), "chosen")
    rejected = _draft(record.get("rejected", MISSING), "rejected")
    if len(chosen.messages) < 2:
        raise RecordError(
            "chosen",
            "without a `prompt`, chosen holds the conversation and then its reply (TRL's "
            f"implicit prompt), got {len(chosen.messages)} message(s)",
        )
    shared = len(chosen.messages) - 1
    if rejected.messages[:-1] != chosen.messages[:shared]:
        differs = _first_difference(rejected.messages[:-1], chosen.messages[:shared])
        raise RecordError(
            f"rejected[{differs}]",
            "without a `prompt`, chosen and rejected share every message but their last (TRL's "
            f"implicit prompt); they differ at message {differs}",
        )
    return PreferenceDraft(
        prompt=_part_of(chosen, 0, shared),
        chosen=_part_of(chosen, shared, None),
        rejected=_part_of(rejected, shared, None),
    )


def _part_of(draft: Draft, start: int, stop: int | None) -> Draft:
    """Messages [start:stop] of a draft, with their fields."""
    return Draft(
        messages=draft.messages[start:stop],
        message_fields=draft.message_fields[start:stop],
        container=draft.container,
    )


def _first_difference(a: list, b: list) -> int:
    pairs = zip(a, b, strict=False)
    return next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))
