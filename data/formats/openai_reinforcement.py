"""OpenAI reinforcement fine-tuning (RFT) JSONL: `{"messages": [...], "<field>": <any JSON>, ...}`.

`messages` is the prompt: read exactly as the messages of OpenAI chat fine-tuning (`openai`),
text and `image_url` parts, roles system/developer/user/assistant, but without the final
assistant turn: the model writes it, and a grader scores it. Every other top-level field is the
record's item, kept with its JSON types, which a grader reads as `{{item.<field>}}` (e.g. the
reference answer). A record with no item fields is fine: a grader may read only the sample.
`weight` means nothing here (nothing in the prompt is trained on), so it is ignored with a
warning; tool definitions are refused as in chat fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gemlora.data.example import Example
from gemlora.data.formats.common import MISSING, PromptDraft
from gemlora.data.formats.openai import (
    UNSUPPORTED_RECORD_KEYS,
    openai_record,
    refuse_tools,
    unweighted_draft,
)

if TYPE_CHECKING:
    from gemlora.data.prompts import PromptExample

MESSAGES = "messages"
# Tool definitions are refused when given; an empty one is not a field a grader reads either.
NOT_ITEM_FIELDS = (MESSAGES, *UNSUPPORTED_RECORD_KEYS)
WEIGHT_MEANS_NOTHING = "a reinforcement prompt is context: the model is trained on its own replies"


def convert(record: dict) -> PromptDraft:
    refuse_tools(record, "")
    prompt = unweighted_draft(record.get(MESSAGES, MISSING), MESSAGES, WEIGHT_MEANS_NOTHING)
    item = {key: value for key, value in record.items() if key not in NOT_ITEM_FIELDS}
    return PromptDraft(prompt, item)


def openai_reinforcement_record(
    example: PromptExample, image_url: Callable[[int], str]
) -> dict[str, Any]:
    """The prompt as one line of this format, its item fields after `messages`; `image_url(i)`
    gives image i's URL (a path relative to the file, or a data URL)."""
    clashing = [key for key in example.item if key in NOT_ITEM_FIELDS]
    if clashing:
        raise ValueError(f"item field {clashing[0]!r} would be read back as part of the record")
    prompt = openai_record(Example(example.prompt, example.images), image_url)[MESSAGES]
    return {MESSAGES: prompt, **example.item}
