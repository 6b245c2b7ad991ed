"""Images in a chat request become data URLs before the engine sees them.

- `data:` URLs are decoded and checked (format, bytes, pixels) and passed on as they are;
- http(s) URLs are fetched here by `gemlora.data.safe_fetch.ImageFetcher` under the
  deployment's SSRF policy and passed on as data URLs, so the engine never opens a connection
  for an image;
- any other scheme (`file:`, `ftp:`, ...) is refused;
- the hosted reference's inline form, `<img src="data:image/png;base64,..." />` inside a user
  message's text, is first turned into an image part.

A bad image is a 400 naming where it is: `messages[2].content[1].image_url`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from gemlora.data.images import ImageError, data_url, decode_data_url
from gemlora.data.safe_fetch import ImageFetcher, Resolver, system_resolver
from gemlora.serve.errors import GatewayError
from gemlora.serve.gateway.config import ImagePolicy
from gemlora.serve.gateway.schema import ContentPart, Message

INLINE_IMAGE = re.compile(r"""<img\s+src\s*=\s*["']([^"']*)["']\s*/?>""", re.IGNORECASE)


@dataclass
class _ImageSlot:
    """One image of the request and the field it came from, for error messages."""

    part: ContentPart
    param: str
    label: str


class ImageConverter:
    """Rewrites the images of a request's messages into checked data URLs, in place."""

    def __init__(self, policy: ImagePolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self.fetcher = ImageFetcher(policy.fetch, resolver=resolver or system_resolver)

    async def convert(self, messages: list[Message]) -> int:
        """Convert every image; returns how many there were."""
        slots = list(self._slots(messages))
        if not slots:
            return 0
        if len(slots) > self.policy.max_per_request:
            raise GatewayError(
                400,
                f"messages: {len(slots)} images, more than this deployment's limit of "
                f"{self.policy.max_per_request} per request",
                param="messages",
                code="too_many_images",
            )
        await asyncio.gather(*(asyncio.to_thread(self._convert_one, slot) for slot in slots))
        return len(slots)

    def _slots(self, messages: list[Message]):
        for i, message in enumerate(messages):
            if message.role == "user" and isinstance(message.content, str):
                parts = split_inline_images(message.content)
                if parts is None:
                    continue
                message.content = parts
                images = (p for p in parts if p.type == "image_url")
                for n, part in enumerate(images, start=1):
                    label = f"messages[{i}].content (inline <img> number {n})"
                    yield _ImageSlot(part, f"messages[{i}].content", label)
            elif isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    if part.type == "image_url":
                        param = f"messages[{i}].content[{j}].image_url"
                        yield _ImageSlot(part, param, param)

    def _convert_one(self, slot: _ImageSlot) -> None:
        url = slot.part.image_url.url.strip()
        scheme = url.partition(":")[0].lower() if ":" in url else ""
        try:
            if scheme == "data":
                decode_data_url(url, self.policy.fetch.limits)
                return
            if scheme not in ("http", "https"):
                raise ImageError(
                    f"unsupported image URL scheme {scheme or 'none'!r}: use https or a data: URL"
                )
            image = self.fetcher.fetch_image(url)
        except ImageError as error:
            raise GatewayError(
                400, f"{slot.label}: {error}", param=slot.param, code="invalid_image"
            ) from None
        slot.part.image_url.url = data_url(image)


def split_inline_images(text: str) -> list[ContentPart] | None:
    """Text with `<img src="..." />` tags -> text and image parts; None when there are none."""
    if "<img" not in text.lower():
        return None
    parts: list[ContentPart] = []
    position = 0
    for match in INLINE_IMAGE.finditer(text):
        before = text[position : match.start()]
        if before.strip():
            parts.append(ContentPart.of_text(before))
        parts.append(ContentPart.of_image(match.group(1)))
        position = match.end()
    if not parts:
        return None
    rest = text[position:]
    if rest.strip():
        parts.append(ContentPart.of_text(rest))
    return parts
