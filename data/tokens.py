"""Token lengths measured the way the model will see the examples: the base's own chat template,
tokenized by its own tokenizer, images expanded by its own processor.

The rendered template already starts with `<bos>`, so it is tokenized with
`add_special_tokens=False`: adding them again would double the `<bos>`.
Over-long examples are dropped or refused, by policy; they are never truncated. A preference
pair is as long as its prompt plus its longer reply; a reinforcement prompt, as its prompt (up
to the opening of the model's turn) plus the tokens its completions may take.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal, NamedTuple, TypeVar

from gemlora.bases import resolve_base
from gemlora.data.example import IN_MEMORY, DatasetError, Example, Problem
from gemlora.data.preference import PreferenceExample
from gemlora.data.prompts import PromptExample

OverlongPolicy = Literal["drop", "refuse"]
E = TypeVar("E", Example, PreferenceExample, PromptExample)
L = TypeVar("L", int, tuple[int, int])  # a length: of an example, or of a pair's two sides


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

    def render(self, example: Example, add_generation_prompt: bool = False) -> str:
        """The chat template's text, with one `<start_of_image>` per image; with
        `add_generation_prompt`, followed by the opening of the model's turn."""
        return self.processor.apply_chat_template(
            example.to_chat_messages(), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, example: Example, add_generation_prompt: bool = False) -> list[int]:
        text = self.render(example, add_generation_prompt)
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


class PreferenceTokens(NamedTuple):
    """A pair's token ids: the prompt up to the opening of the model's turn, then each reply."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def encode_preference(counter: TokenCounter, example: PreferenceExample) -> PreferenceTokens:
    """The pair as DPO sees it: the prompt rendered with the generation prompt, each reply the
    tokens that follow it in prompt + reply."""
    prompt = counter.encode(example.prompt_example(), add_generation_prompt=True)
    replies = []
    for conversation in (example.chosen_example(), example.rejected_example()):
        ids = counter.encode(conversation)
        if ids[: len(prompt)] != prompt:
            raise ValueError(
                f"{counter.name}'s chat template does not render the prompt as the start of "
                "prompt + reply"
            )
        replies.append(ids[len(prompt) :])
    return PreferenceTokens(prompt, *replies)


@functools.cache
def load_token_counter(model: str) -> TokenCounter:
    """One `TokenCounter` per base for the life of the process (loading takes seconds)."""
    return TokenCounter(model)


def measure_tokens(examples: Sequence[Example], model: str | TokenCounter) -> list[int]:
    counter = _counter(model, examples)
    return [counter.count(example) for example in examples]


def measure_preference_tokens(
    examples: Sequence[PreferenceExample], model: str | TokenCounter
) -> list[tuple[int, int]]:
    """(prompt + chosen, prompt + rejected) tokens of each pair, counted as SFT examples are."""
    counter = _counter(model, examples)
    return [
        (counter.count(example.chosen_example()), counter.count(example.rejected_example()))
        for example in examples
    ]


def measure_prompt_tokens(
    examples: Sequence[PromptExample], model: str | TokenCounter
) -> list[int]:
    """Each prompt's tokens rendered with the generation prompt: what the model reads before it
    writes a completion."""
    counter = _counter(model, examples)
    return [
        len(counter.encode(example.prompt_example(), add_generation_prompt=True))
        for example in examples
    ]


def _counter(model: str | TokenCounter, examples: Sequence[E]) -> TokenCounter:
    """The counter for `model`, once it is known to take the examples' images."""
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
    return counter


def apply_length_policy(
    examples: Sequence[Example],
    lengths: Sequence[int],
    max_length: int,
    policy: OverlongPolicy = "refuse",
) -> tuple[list[Example], list[int], list[Problem]]:
    """Keep the examples within `max_length` tokens. Longer ones are left out either way; with
    `drop` that is a warning, with `refuse` an error."""
    return _apply(examples, lengths, [(length, "") for length in lengths], max_length, policy)


def apply_preference_length_policy(
    examples: Sequence[PreferenceExample],
    lengths: Sequence[tuple[int, int]],
    max_length: int,
    policy: OverlongPolicy = "refuse",
) -> tuple[list[PreferenceExample], list[tuple[int, int]], list[Problem]]:
    """`apply_length_policy` for pairs: a pair is kept when prompt + chosen and prompt +
    rejected are both within `max_length` tokens (`lengths` as `measure_preference_tokens`
    gives them)."""
    # A pair names its longer side: the reply that would have been cut.
    longer = [
        (chosen, " (prompt + chosen)") if chosen >= rejected else (rejected, " (prompt + rejected)")
        for chosen, rejected in lengths
    ]
    return _apply(examples, lengths, longer, max_length, policy)


def apply_prompt_length_policy(
    examples: Sequence[PromptExample],
    lengths: Sequence[int],
    max_length: int,
    policy: OverlongPolicy = "refuse",
    completion_tokens: int = 0,
) -> tuple[list[PromptExample], list[int], list[Problem]]:
    """`apply_length_policy` for reinforcement prompts: a prompt is kept when its tokens
    (`lengths` as `measure_prompt_tokens` gives them) plus `completion_tokens`, the room each
    completion needs, are within `max_length`. A prompt that leaves too little room would have
    its completions cut short and graded as if the model had stopped there."""
    if completion_tokens < 0:
        raise ValueError(f"completion_tokens must be 0 or more, got {completion_tokens}")
    measured = [
        (length + completion_tokens, f" ({length} prompt + {completion_tokens} for the completion)")
        for length in lengths
    ]
    return _apply(examples, lengths, measured, max_length, policy)


def _apply(
    examples: Sequence[E],
    lengths: Sequence[L],
    measured: Sequence[tuple[int, str]],
    max_length: int,
    policy: OverlongPolicy,
) -> tuple[list[E], list[L], list[Problem]]:
    """`measured[i]`: the tokens that decide example i, and what they are, for messages."""
    kept, kept_lengths, problems = [], [], []
    for example, length, (tokens, what) in zip(examples, lengths, measured, strict=True):
        if tokens <= max_length:
            kept.append(example)
            kept_lengths.append(length)
            continue
        source = example.source or IN_MEMORY
        if policy == "drop":
            message = f"dropped: {tokens} tokens{what}, over the max length of {max_length}"
            problems.append(Problem(source, "", message, "warning"))
        else:
            message = (
                f"{tokens} tokens{what}, over the max length of {max_length} "
                "(raise --max-length, or pass --overlong drop to leave such examples out)"
            )
            problems.append(Problem(source, "", message))
    return kept, kept_lengths, problems
