"""OpenAI preference (DPO) fine-tuning JSONL:
`{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": "..."}],
"non_preferred_output": [{"role": "assistant", "content": "..."}]}`.

`input.messages` are read exactly as the messages of OpenAI chat fine-tuning (`openai`): text and
`image_url` parts, roles system/developer/user/assistant. Each output is one assistant message.
`weight` means nothing here (the prompt is context, both replies are compared), so it is ignored
with a warning; tool definitions are refused as in chat fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gemlora.data.example import Example
from gemlora.data.formats.common import MISSING, Draft, PreferenceDraft, require_dict
from gemlora.data.formats.openai import openai_record, refuse_tools, unweighted_draft

if TYPE_CHECKING:
    from gemlora.data.preference import PreferenceExample

WEIGHT_MEANS_NOTHING = "in preference data the prompt is context and both replies are compared"


def convert(record: dict) -> PreferenceDraft:
    conversation = require_dict(record.get("input", MISSING), "input")
    refuse_tools(conversation, "input.")
    return PreferenceDraft(
        prompt=_draft(conversation.get("messages", MISSING), "input.messages"),
        chosen=_draft(record.get("preferred_output", MISSING), "preferred_output"),
        rejected=_draft(record.get("non_preferred_output", MISSING), "non_preferred_output"),
    )


def _draft(messages: object, container: str) -> Draft:
    return unweighted_draft(messages, container, WEIGHT_MEANS_NOTHING)


def openai_preference_record(
    pair: PreferenceExample, image_url: Callable[[int], str]
) -> dict[str, Any]:
    """The pair as one line of this format; `image_url(i)` gives image i's URL (a path relative
    to the file, or a data URL)."""
    prompt = openai_record(Example(pair.prompt, pair.images), image_url)["messages"]
    return {
        "input": {"messages": prompt},
        "preferred_output": [{"role": "assistant", "content": pair.chosen.text}],
        "non_preferred_output": [{"role": "assistant", "content": pair.rejected.text}],
    }
