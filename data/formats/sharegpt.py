"""ShareGPT / LLaVA: `{"conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
{"from": "gpt", "value": "..."}], "image": "a.png"}` (or `"images": [...]`).

Each `<image>` placeholder marks where the next image goes; their count must equal the number
of images. Image paths are relative to the dataset file. An optional record-level `system`
string becomes the system message.
"""

from __future__ import annotations

from gemlora.data.conversation_rules import MessageFields
from gemlora.data.example import Part, Role
from gemlora.data.formats.common import (
    MISSING,
    Draft,
    RecordError,
    check_image_count,
    require_dict,
    require_list,
    require_str,
    text_parts,
)
from gemlora.data.images import ImageRef

PLACEHOLDER = "<image>"
ROLES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


def convert(record: dict) -> Draft:
    draft = Draft(container="conversations")
    system = record.get("system")
    if system is not None:
        fields = MessageFields("system", "system")
        draft.add_message("system", text_parts(require_str(system, "system")), fields=fields)
    turns = require_list(record.get("conversations", MISSING), "conversations")
    for index, raw in enumerate(turns):
        field = f"conversations[{index}]"
        turn = require_dict(raw, field)
        role = _role(turn, field)
        if role == "system" and system is not None:
            raise RecordError(f"{field}.from", "a system turn and a `system` field: give one")
        value = require_str(turn.get("value", MISSING), f"{field}.value")
        fields = MessageFields(f"{field}.from", f"{field}.value")
        draft.add_message(role, _parts(draft, value), fields=fields)
    _add_images(draft, record)
    images_field = "image" if record.get("image") is not None else "images"
    check_image_count(draft, f"{PLACEHOLDER} placeholders", images_field)
    return draft


def _role(turn: dict, field: str) -> Role:
    speaker = require_str(turn.get("from", MISSING), f"{field}.from")
    if speaker not in ROLES:
        raise RecordError(
            f"{field}.from", f"unsupported speaker {speaker!r} (expected human, gpt or system)"
        )
    return ROLES[speaker]


def _parts(draft: Draft, value: str) -> list[Part]:
    pieces = value.split(PLACEHOLDER)
    parts: list[Part] = text_parts(pieces[0])
    for piece in pieces[1:]:
        parts.append(draft.image_part())
        parts += text_parts(piece)
    return parts


def _add_images(draft: Draft, record: dict) -> None:
    images, image = record.get("images"), record.get("image")
    if images is not None and image is not None:
        raise RecordError("image", "a record has either `images` or `image`, not both")
    if image is not None:
        draft.images.append(ImageRef("image", require_str(image, "image")))
        return
    for index, entry in enumerate(require_list(images or [], "images")):
        draft.images.append(ImageRef(f"images[{index}]", require_str(entry, f"images[{index}]")))
