"""Decoding images under limits, and resolving the ways a dataset refers to one.

A reference is a file path relative to the dataset (never escaping its directory), a `data:`
URL, an http(s) URL (fetched by `gemlora.data.safe_fetch` under the SSRF policy) or bytes
embedded in a dataset. Every image is decoded and fully loaded here, so truncated or corrupt
files are refused while reading, not in the middle of training.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MB = 1_000_000
_URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


class ImageLimits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bytes: int = Field(default=20 * MB, description="Encoded size of one image, at most.")
    max_pixels: int = Field(default=50_000_000, description="Width x height, at most.")
    formats: frozenset[str] = Field(
        default=frozenset({"PNG", "JPEG", "WEBP"}),  # "GIF" may be added
        description="Formats accepted, by content (sniffed), not by name.",
    )


class ImageError(ValueError):
    """An image that cannot be used; the message says exactly why."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded, verified image. Equal images have equal pixels, however they were encoded."""

    data: bytes = field(repr=False, compare=False)
    format: str = field(compare=False)
    width: int
    height: int
    mode: str
    pixel_sha256: str
    origin: str = field(default="", compare=False)  # path, URL or "data URL", for messages

    def to_pil(self) -> PILImage:
        from PIL import Image

        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image


def sniff_format(data: bytes) -> str | None:
    """The format from the file's magic bytes; a declared Content-Type or suffix is not trusted."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def decode_image(data: bytes, limits: ImageLimits, origin: str = "") -> LoadedImage:
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"image is {len(data):,} bytes, over the limit of {limits.max_bytes:,} bytes"
        )
    image_format = sniff_format(data)
    if image_format not in limits.formats:
        allowed = ", ".join(sorted(limits.formats))
        found = image_format or f"unknown data (first bytes {data[:8].hex()})"
        raise ImageError(f"not an allowed image format ({allowed}): {found}")
    return _decode(data, image_format, limits, origin)


def _decode(data: bytes, image_format: str, limits: ImageLimits, origin: str) -> LoadedImage:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # PIL warns about large images; the limit below is ours to enforce.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
        with header:
            # The size comes from the header, before any pixel is decoded: a decompression bomb
            # is refused without inflating it.
            _check_header(header, limits)
            header.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            pixels = image.tobytes()
            mode, (width, height) = image.mode, image.size
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        # PIL refuses to even open images over twice its own limit (about 179 MP).
        raise ImageError(
            f"image is over the limit of {limits.max_pixels:,} pixels: {error}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"corrupt or truncated {image_format} image: {error}") from None
    digest = hashlib.sha256(f"{mode}:{width}x{height}:".encode() + pixels).hexdigest()
    return LoadedImage(data, image_format, width, height, mode, digest, origin)


def _check_header(image, limits: ImageLimits) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels, "
            f"over the limit of {limits.max_pixels:,} pixels"
        )
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ImageError(f"animated images are not supported ({frames} frames)")


def data_url(image: LoadedImage) -> str:
    """The image as a `data:` URL (what the engine and stored fine-tune files carry)."""
    encoded = base64.b64encode(image.data).decode("ascii")
    return f"data:image/{image.format.lower()};base64,{encoded}"


def decode_data_url(url: str, limits: ImageLimits) -> LoadedImage:
    """`data:image/png;base64,...` -> image. The media type must be an image type; the actual
    format is still taken from the bytes."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise ImageError("malformed data URL: no ',' between header and data")
    media_type, *params = header[len("data:") :].split(";")
    if not media_type.lower().startswith("image/"):
        raise ImageError(f"data URL media type must be image/*, got {media_type or 'none'!r}")
    if "base64" not in (p.lower() for p in params):
        raise ImageError("data URL must be base64-encoded (';base64,')")
    if len(payload) > limits.max_bytes * 4 // 3 + 4:
        raise ImageError(f"data URL is over the limit of {limits.max_bytes:,} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageError(f"invalid base64 in data URL: {error}") from None
    return decode_image(data, limits, origin="data URL")


RemoteLoader = Callable[[str], LoadedImage]


@dataclass(frozen=True)
class ImageRef:
    """How a record refers to one image, and the field that holds the reference."""

    field: str
    value: str | bytes  # a path, data URL or http(s) URL; or bytes embedded in the dataset
    name: str = ""  # the file name stored next to embedded bytes, for messages


class ImageLoader:
    """Resolves `ImageRef`s for one dataset: paths are relative to `base_dir`; remote URLs go
    through `fetch_remote` (None: remote images are refused)."""

    def __init__(
        self, base_dir: Path, limits: ImageLimits, fetch_remote: RemoteLoader | None = None
    ):
        self.base_dir = base_dir.resolve()
        self.limits = limits
        self.fetch_remote = fetch_remote
        self._remote_cache: dict[str, LoadedImage] = {}

    def load(self, ref: ImageRef) -> LoadedImage:
        if isinstance(ref.value, bytes):
            return decode_image(ref.value, self.limits, origin=ref.name or "embedded image")
        value = ref.value.strip()
        scheme = _URL_SCHEME.match(value)
        if scheme is None:
            return self._load_file(value)
        name = scheme.group(1).lower()
        if name == "data":
            return decode_data_url(value, self.limits)
        if name in ("http", "https"):
            return self._load_remote(value)
        raise ImageError(f"unsupported image URL scheme {name!r}: use https, data: or a path")

    def _load_file(self, relative: str) -> LoadedImage:
        if not relative:
            raise ImageError("empty image path")
        path = Path(relative)
        if path.is_absolute():
            raise ImageError(
                f"absolute image path {relative!r}: use a path relative to the dataset file"
            )
        # resolve() follows symlinks, so a link pointing outside the directory is caught too.
        resolved = (self.base_dir / path).resolve()
        if not resolved.is_relative_to(self.base_dir):
            raise ImageError(f"image path {relative!r} escapes the dataset directory")
        if not resolved.is_file():
            raise ImageError(f"image file not found: {relative}")
        size = resolved.stat().st_size
        if size > self.limits.max_bytes:
            raise ImageError(
                f"image file {relative} is {size:,} bytes, "
                f"over the limit of {self.limits.max_bytes:,} bytes"
            )
        try:
            return decode_image(resolved.read_bytes(), self.limits, origin=relative)
        except ImageError as error:
            raise ImageError(f"{relative}: {error}") from None

    def _load_remote(self, url: str) -> LoadedImage:
        if self.fetch_remote is None:
            raise ImageError(f"remote image URLs are disabled (pass --allow-remote): {url}")
        if url not in self._remote_cache:
            self._remote_cache[url] = self.fetch_remote(url)
        return self._remote_cache[url]
