"""The canonical reinforcement prompt (RFT data): a conversation for the model to answer, and
the item its grader reads.

A `PromptExample` is the prompt (system, user and assistant turns ending with a user turn), the
prompt's images, and the record's other fields as they were read (`item`, what a grader reads as
`{{item.answer}}`). As with `Example`, the same prompt read from any file is equal and has the
same `digest()`: the source location is not part of equality, images compare by their decoded
pixels. Every prompt turn carries weight 0: the model is trained on its own sampled replies,
never on the prompt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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


# `item` is a dict, so hashing a `PromptExample` raises TypeError; equality compares content.
# Treat `item` as read-only: it is part of the digest.
@dataclass(frozen=True, unsafe_hash=False)
class PromptExample:
    prompt: tuple[Message, ...]
    images: tuple[LoadedImage, ...] = ()  # referenced by the prompt's `ImagePart` indexes
    item: dict[str, Any] = field(default_factory=dict)  # JSON values, as the record gave them
    source: Source | None = field(default=None, compare=False)

    def prompt_example(self) -> Example:
        """The prompt alone, for rendering with the generation prompt."""
        return Example(self.prompt, self.images, self.source)

    def to_trl_row(self) -> dict:
        """A row of TRL's conversational prompt-only format, as `GRPOTrainer` takes it, with the
        item as a JSON string: an HF `Dataset` then has one column type whatever fields the
        records have. The `images` key (PIL images) only when the prompt has images."""
        row: dict = {
            "prompt": [chat_message(m) for m in self.prompt],
            "item": json.dumps(self.item, sort_keys=True),
        }
        if self.images:
            row["images"] = [image.to_pil() for image in self.images]
        return row

    def canonical_json(self) -> str:
        """Everything that defines the prompt and its item, images by pixel digest, as stable
        JSON."""
        return stable_json(
            {
                "prompt": [canonical_message(m) for m in self.prompt],
                "item": self.item,
                "images": [image.pixel_sha256 for image in self.images],
            }
        )

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def prompt_digest(examples: Iterable[PromptExample]) -> str:
    """Digest of a prompt dataset's content in order (what a training run logs)."""
    return dataset_digest(examples)
