"""Token lengths measured the way the model will see the examples: the base's own chat template,
tokenized by its own tokenizer, images expanded by its own processor.

The rendered template already starts with `<bos>`, so it is tokenized with
`add_special_tokens=False`: adding them again would double the `<bos>`.
Over-long examples are dropped or refused, by policy; they are never truncated.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

from gemlora.bases import resolve_base
from gemlora.data.example import IN_MEMORY, DatasetError, Example, Problem

OverlongPolicy = Literal["drop", "refuse"]


class TokenCounter:
    """A base model's processor (multimodal) or tokenizer (text-only), loaded once."""

    def __init__(self, model: str):
        from transformers import AutoProcessor

        self.spec = resolve_base(model)
        self.name = self.spec.name
        # For a text-only base AutoProcessor hands back the tokenizer itself.
        self.processor = AutoProcessor.from_pretrained(
            self.spec.location, revision=self.spec.revision
        )
        self.multimodal = hasattr(self.processor, "image_processor")
        self.tokenizer = self.processor.tokenizer if self.multimodal else self.processor

    @property
    def max_length(self) -> int:
        return self.spec.max_model_len

    def render(self, example: Example) -> str:
        """The chat template's text, with one `<start_of_image>` per image."""
        return self.processor.apply_chat_template(example.to_chat_messages(), tokenize=False)

    def encode(self, example: Example) -> list[int]:
        text = self.render(example)
        if not self.multimodal:
            if example.images:
                raise ValueError(f"{self.name} is a text-only model and the example has images")
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        images = example.pil_images() or None
        encoded = self.processor(text=text, images=images, add_special_tokens=False)
        return list(encoded["input_ids"][0])

    def count(self, example: Example) -> int:
        return len(self.encode(example))

    def model_view(self, example: Example) -> str:
        """Exactly the text the model reads: the token ids decoded back, images expanded."""
        return self.tokenizer.decode(self.encode(example), skip_special_tokens=False)


@functools.cache
def load_token_counter(model: str) -> TokenCounter:
    """One `TokenCounter` per base for the life of the process (loading takes seconds)."""
    return TokenCounter(model)


def measure_tokens(examples: Sequence[Example], model: str | TokenCounter) -> list[int]:
    counter = model if isinstance(model, TokenCounter) else load_token_counter(model)
    with_images = sum(1 for example in examples if example.images)
    if with_images and not counter.multimodal:
        first = next(example for example in examples if example.images)
        raise DatasetError(
            Problem(
                first.source or IN_MEMORY,
                "",
                f"{counter.name} is a text-only model but {with_images} examples have images: "
                "use a multimodal base",
            )
        )
    return [counter.count(example) for example in examples]


def apply_length_policy(
    examples: Sequence[Example],
    lengths: Sequence[int],
    max_length: int,
    policy: OverlongPolicy = "refuse",
) -> tuple[list[Example], list[int], list[Problem]]:
    """Keep the examples within `max_length` tokens. Longer ones are left out either way; with
    `drop` that is a warning, with `refuse` an error."""
    kept, kept_lengths, problems = [], [], []
    for example, length in zip(examples, lengths, strict=True):
        if length <= max_length:
            kept.append(example)
            kept_lengths.append(length)
            continue
        source = example.source or IN_MEMORY
        if policy == "drop":
            message = f"dropped: {length} tokens, over the max length of {max_length}"
            problems.append(Problem(source, "", message, "warning"))
        else:
            message = (
                f"{length} tokens, over the max length of {max_length} "
                "(raise --max-length, or pass --overlong drop to leave such examples out)"
            )
            problems.append(Problem(source, "", message))
    return kept, kept_lengths, problems
