"""The generation eval: base and adapter answer the same held-out prompts, greedily.

Each held-out example is cut before its last assistant turn; that turn is the reference. An
answer scores `exact` when it equals the reference and `contains` when it contains it, both
compared case-insensitively with whitespace collapsed and surrounding punctuation ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from gemlora.train.collator import chat_messages, message_text


@dataclass
class Generation:
    prompt: str  # the last user turn's text
    reference: str
    base: str
    adapter: str


@dataclass
class GenerationEval:
    generations: list[Generation] = field(default_factory=list)

    def scores(self) -> dict[str, float]:
        """`base_exact`, `base_contains`, `exact`, `contains` (the adapter's), in [0, 1]."""
        if not self.generations:
            return {}
        count = len(self.generations)
        scores = {}
        for who, prefix in (("base", "base_"), ("adapter", "")):
            answers = [(getattr(g, who), g.reference) for g in self.generations]
            scores[f"{prefix}exact"] = sum(exact_match(a, r) for a, r in answers) / count
            scores[f"{prefix}contains"] = sum(contains_match(a, r) for a, r in answers) / count
        return scores

    def table(self) -> dict[str, list[str]]:
        """Side by side, column by column, for `mlflow.log_table`."""
        rows = [asdict(g) for g in self.generations]
        return {column: [row[column] for row in rows] for column in Generation.__annotations__}


def normalize(text: str) -> str:
    text = re.sub(r"\s+", " ", text.casefold()).strip()
    return text.strip(" .,!?;:'\"")


def exact_match(answer: str, reference: str) -> bool:
    return normalize(answer) == normalize(reference)


def contains_match(answer: str, reference: str) -> bool:
    return normalize(reference) in normalize(answer)


def generation_eval(
    model,
    processor,
    rows: list[dict],
    max_new_tokens: int,
    on_example: Callable[[int], None] = lambda done: None,
) -> GenerationEval:
    """Answer every row's prompt (see `gemlora.train.collator`) with the base (adapter disabled) and
    the adapter."""
    import torch

    result = GenerationEval()
    model.eval()
    with torch.no_grad():
        for done, row in enumerate(rows, start=1):
            prompt = prompt_inputs(processor, row, upto=len(row["messages"]) - 1).to(model.device)
            with model.disable_adapter():
                base = generate_greedy(model, processor, prompt, max_new_tokens)
            adapter = generate_greedy(model, processor, prompt, max_new_tokens)
            *context, reference = row["messages"]
            last_user = next(m for m in reversed(context) if m["role"] == "user")
            result.generations.append(
                Generation(message_text(last_user), message_text(reference), base, adapter)
            )
            on_example(done)
    return result


def prompt_inputs(processor, row: dict, upto: int | None = None):
    """The row's conversation (its first `upto` turns), ready for the model to answer."""
    return processor.apply_chat_template(
        chat_messages(row, upto=upto),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )


def generate_greedy(model, processor, prompt, max_new_tokens: int) -> str:
    tokenizer = getattr(processor, "tokenizer", processor)
    output = model.generate(
        **prompt,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        # A chat turn ends with <end_of_turn>, whatever the generation config says.
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[0, prompt["input_ids"].shape[1] :]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
