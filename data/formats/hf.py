"""Hugging Face datasets style: a `messages` column whose content is a string or a list of
`{"type": "text", "text"}` / `{"type": "image"}` parts, plus an `images` column (or a single
`image` column) holding the images in the order the image parts appear.

Rows come from a saved dataset directory or a parquet file (images as `{"bytes", "path"}`
structs, as the `datasets` Image feature stores them) or from JSON Lines (images as paths or
URLs). Arrow gives every struct the union of all keys, so keys whose value is null are ignored.
"""

from __future__ import annotations

from gemlora.data.example import Part, Role
from gemlora.data.formats.common import (
    MISSING,
    Draft,
    RecordError,
    check_image_count,
    content_parts,
    require_dict,
    require_list,
    require_str,
    text_parts,
    type_name,
)
from gemlora.data.images import ImageRef

ROLES: tuple[Role, ...] = ("system", "user", "assistant")


def convert(record: dict) -> Draft:
    draft = Draft()
    add_messages(draft, record.get("messages", MISSING))
    add_images(draft, record)
    check_image_count(draft, "image parts", images_field(record))
    return draft


def add_messages(draft: Draft, messages: object) -> None:
    """A list of message objects, at `draft.container`, onto the draft (shared with
    `trl_preference`)."""
    for index, raw in enumerate(require_list(messages, draft.container)):
        field = f"{draft.container}[{index}]"
        message = require_dict(raw, field)
        role = require_str(message.get("role", MISSING), f"{field}.role")
        if role not in ROLES:
            raise RecordError(
                f"{field}.role", f"unsupported role {role!r} (expected system, user or assistant)"
            )
        content = _content(draft, message.get("content", MISSING), f"{field}.content")
        draft.add_message(role, content)


def _content(draft: Draft, content: object, field: str) -> list[Part]:
    return content_parts(draft, content, field, _part)


def _part(draft: Draft, part: dict, part_field: str) -> list[Part]:
    kind = require_str(part.get("type", MISSING), f"{part_field}.type")
    if kind == "text":
        return text_parts(require_str(part.get("text", MISSING), f"{part_field}.text"))
    if kind == "image":
        if any(part.get(key) is not None for key in ("image", "url", "path")):
            raise RecordError(
                part_field, "inline image data is not supported: put images in `images`"
            )
        return [draft.image_part()]
    raise RecordError(f"{part_field}.type", f"unsupported content part type {kind!r}")


def add_images(draft: Draft, record: dict) -> None:
    """The row's `images` (or `image`) column onto the draft, in order."""
    images, image = record.get("images"), record.get("image")
    if images is not None and image is not None:
        raise RecordError("image", "a row has either an `images` or an `image` column, not both")
    if image is not None:
        draft.images.append(_image_ref(image, "image"))
        return
    for index, entry in enumerate(require_list(images or [], "images")):
        draft.images.append(_image_ref(entry, f"images[{index}]"))


def _image_ref(entry: object, field: str) -> ImageRef:
    if isinstance(entry, str):
        return ImageRef(field, entry)
    if isinstance(entry, bytes):
        return ImageRef(field, entry)
    if isinstance(entry, dict):
        data, path = entry.get("bytes"), entry.get("path")
        if isinstance(data, bytes) and data:
            return ImageRef(field, data, name=path or "")
        if isinstance(path, str) and path:
            return ImageRef(field, path)
        raise RecordError(field, "image has neither bytes nor a path")
    raise RecordError(
        field, f"expected an image path or a {{bytes, path}} object, got {type_name(entry)}"
    )


def images_field(record: dict) -> str:
    return "image" if record.get("image") is not None else "images"
