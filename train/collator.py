"""The Gemma 3 collator: dataset rows -> a padded batch with labels for the assistant turns.

The base's chat template wraps every assistant reply (its `<end_of_turn>` included, so the model
learns to stop) in `{% generation %}` markers; transformers turns them into an assistant-token
mask, image placeholders already expanded. The loss is on the tokens of assistant turns with
weight 1 and nowhere else: labels are -100 on padding, on system and user text, on assistant
turns with weight 0, and on the image tokens `<start_of_image>`, `<image_soft_token>` and
`<end_of_image>`. A multimodal processor also returns `token_type_ids` (1 on image tokens: Gemma 3
attends bidirectionally within an image) and, for batches with images, `pixel_values`.

Padding-free batches (text-only bases): the examples of a batch are laid end to end in one row,
with no padding and `position_ids` restarting at 0 for each example. transformers builds a
block-diagonal attention mask from those position ids, so no example sees another, and no compute
goes to padding. The loss is the same as on the padded batch; multimodal batches stay padded
(`token_type_ids` and image features are per row).

Rows are TRL's conversational format plus each message's weight (see `gemlora.train.dataset`):

    {"messages": [{"role": "user", "weight": 0,
                   "content": [{"type": "image", "index": 0}, {"type": "text", "text": "..."}]},
                  {"role": "assistant", "weight": 1, "content": [{"type": "text", ...}]}],
     "images": [PIL.Image, ...]}          # multimodal bases only
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100
IMAGE_TOKENS = ("<start_of_image>", "<image_soft_token>", "<end_of_image>")


class Gemma3ChatCollator:
    """`collator(rows)` for the Trainer. `processor` is a Gemma 3 processor (multimodal bases) or
    tokenizer (text-only bases) whose chat template has `{% generation %}` markers, as every
    gemlora base does."""

    def __init__(self, processor: Any, padding_free: bool = False) -> None:
        self.processor = processor
        self.multimodal = hasattr(processor, "image_processor")
        if padding_free and self.multimodal:
            raise ValueError("padding-free batches are for text-only bases; multimodal stay padded")
        self.padding_free = padding_free
        tokenizer = processor.tokenizer if self.multimodal else processor
        vocab = tokenizer.get_vocab()
        self.image_token_ids = [vocab[token] for token in IMAGE_TOKENS if token in vocab]
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer has no pad token; Gemma 3 tokenizers use <pad>")

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        # Right padding: every example's tokens keep the positions they have unpadded.
        padding = {"padding": True, "padding_side": "right"}
        if self.multimodal:
            kwargs: dict[str, Any] = {"processor_kwargs": padding}
        else:
            kwargs = {"padding": True, "tokenizer_kwargs": {"padding_side": "right"}}
        batch = self.processor.apply_chat_template(
            [chat_messages(row) for row in rows],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
            **kwargs,
        )
        assistant_masks = batch.pop("assistant_masks")
        batch["labels"] = self.labels(rows, batch["input_ids"], assistant_masks)
        batch["labels"][batch["attention_mask"] == 0] = IGNORE_INDEX
        return flatten(batch) if self.padding_free else dict(batch)

    def labels(self, rows: list[dict], input_ids, assistant_masks):
        """The input ids on the assistant turns that train (weight 1), -100 everywhere else."""
        import torch

        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row_index, row in enumerate(rows):
            replies = [m for m in row["messages"] if m["role"] == "assistant"]
            spans = assistant_spans(assistant_masks[row_index].tolist())
            if len(spans) != len(replies):
                raise ValueError(
                    f"the chat template marked {len(spans)} assistant spans for {len(replies)} "
                    "assistant turns: the base's chat template must wrap each reply in "
                    "{% generation %} markers"
                )
            for (start, end), reply in zip(spans, replies, strict=True):
                if reply["weight"] == 1:
                    labels[row_index, start:end] = input_ids[row_index, start:end]
        if self.image_token_ids:
            labels[torch.isin(input_ids, torch.tensor(self.image_token_ids))] = IGNORE_INDEX
        return labels


def flatten(batch) -> dict[str, Any]:
    """A right-padded batch as one padding-free row: the examples' tokens end to end, position
    ids restarting at each example. The first token of every example gets no label, so that the
    last token of the example before it is never trained to predict it."""
    import torch

    real = batch["attention_mask"].bool()
    labels = batch["labels"].clone()
    labels[:, 0] = IGNORE_INDEX
    lengths = real.sum(dim=1).tolist()
    positions = torch.cat([torch.arange(length) for length in lengths])
    return {
        "input_ids": batch["input_ids"][real].unsqueeze(0),
        "labels": labels[real].unsqueeze(0),
        "position_ids": positions.unsqueeze(0),
    }


def assistant_spans(mask: list[int]) -> list[tuple[int, int]]:
    """The runs of 1s in an assistant mask as [start, end) pairs: one per assistant turn, in
    order (a user turn always separates two replies)."""
    spans: list[tuple[int, int]] = []
    start = None
    for position, flag in enumerate([*mask, 0]):
        if flag and start is None:
            start = position
        elif not flag and start is not None:
            spans.append((start, position))
            start = None
    return spans


def chat_messages(row: dict, upto: int | None = None) -> list[dict]:
    """The row's messages (or the first `upto`) as the chat template takes them: image parts
    carry their PIL image."""
    images = row.get("images") or []
    return [
        {"role": message["role"], "content": [_part(p, images) for p in message["content"]]}
        for message in row["messages"][:upto]
    ]


def message_text(message: dict) -> str:
    return "".join(part["text"] for part in message["content"] if part["type"] == "text")


def _part(part: dict, images: list) -> dict:
    if part["type"] == "image":
        return {"type": "image", "image": images[part["index"]]}
    return {"type": "text", "text": part["text"]}
