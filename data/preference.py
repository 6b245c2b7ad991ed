"""The canonical preference example (DPO data): one conversation, two replies, one preferred.

A `PreferenceExample` is the shared prompt (system, user and assistant turns ending with a user
turn), the chosen and the rejected assistant reply, and the prompt's images. As with `Example`,
the same pair read from any format is equal and has the same `digest()`: the source location is
not part of equality, images compare by their decoded pixels. Prompt turns carry weight 0 (they
are context) and both replies weight 1, whatever the source said.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gemlora.data.example import (
    Example,
    Message,
    Source,
    canonical_message,
    chat_message,
    dataset_digest,
    stable_json,
)

if TYPE_CHECKING:
    from gemlora.data.images import LoadedImage


@dataclass(frozen=True)
class PreferenceExample:
    prompt: tuple[Message, ...]
    chosen: Message
    rejected: Message
    images: tuple[LoadedImage, ...] = ()  # referenced by the prompt's `ImagePart` indexes
    source: Source | None = field(default=None, compare=False)

    def prompt_example(self) -> Example:
        """The prompt alone (no reply), for rendering with the generation prompt."""
        return Example(self.prompt, self.images, self.source)

    def chosen_example(self) -> Example:
        """The prompt and the chosen reply as an SFT example: what SFT-style generation eval and
        token counting take."""
        return Example((*self.prompt, self.chosen), self.images, self.source)

    def rejected_example(self) -> Example:
        """The prompt and the rejected reply, shaped as `chosen_example`."""
        return Example((*self.prompt, self.rejected), self.images, self.source)

    def to_trl_row(self) -> dict:
        """A row of TRL's conversational preference format, as `DPOTrainer` takes it; the
        `images` key (PIL images) only when the prompt has images."""
        row: dict = {
            "prompt": [chat_message(m) for m in self.prompt],
            "chosen": [chat_message(self.chosen)],
            "rejected": [chat_message(self.rejected)],
        }
        if self.images:
            row["images"] = [image.to_pil() for image in self.images]
        return row

    def canonical_json(self) -> str:
        """Everything that defines the pair, images by pixel digest, as stable JSON."""
        return stable_json(
            {
                "prompt": [canonical_message(m) for m in self.prompt],
                "chosen": canonical_message(self.chosen),
                "rejected": canonical_message(self.rejected),
                "images": [image.pixel_sha256 for image in self.images],
            }
        )

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def preference_digest(examples: Iterable[PreferenceExample]) -> str:
    """Digest of a preference dataset's content in order (what a training run logs)."""
    return dataset_digest(examples)
