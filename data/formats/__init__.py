"""Dataset formats: one converter per format, record (dict) -> `Draft` (a `PreferenceDraft` for
preference formats, a `PromptDraft` for reinforcement prompts), and format detection."""

from collections.abc import Callable

from gemlora.data.formats import (
    hf,
    openai,
    openai_preference,
    openai_reinforcement,
    sharegpt,
    trl_preference,
)
from gemlora.data.formats.common import (
    FORMATS,
    PREFERENCE_FORMATS,
    PROMPT_FORMATS,
    DatasetFormat,
    Draft,
    PreferenceDraft,
    PreferenceFormat,
    PromptDraft,
    PromptFormat,
    RecordError,
)

CONVERTERS: dict[DatasetFormat, Callable[[dict], Draft]] = {
    "openai": openai.convert,
    "hf": hf.convert,
    "sharegpt": sharegpt.convert,
}
PREFERENCE_CONVERTERS: dict[PreferenceFormat, Callable[[dict], PreferenceDraft]] = {
    "openai-preference": openai_preference.convert,
    "trl-preference": trl_preference.convert,
}
PROMPT_CONVERTERS: dict[PromptFormat, Callable[[dict], PromptDraft]] = {
    "openai-reinforcement": openai_reinforcement.convert,
}


def classify(record: object) -> DatasetFormat | None:
    """The format one record is evidently in, or None when it does not tell.

    Text-only `messages` rows read the same as OpenAI or HF, so they are called OpenAI.
    """
    if not isinstance(record, dict):
        return None
    if "conversations" in record:
        return "sharegpt"
    messages = record.get("messages")
    if not isinstance(messages, list):
        return None
    if "images" in record or "image" in record:
        return "hf"
    part_types = {
        part.get("type")
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict)
    }
    return "hf" if "image" in part_types else "openai"


def classify_preference(record: object) -> PreferenceFormat | None:
    """The preference format one record is evidently in, or None (an SFT record, or one that
    does not tell)."""
    if not isinstance(record, dict):
        return None
    if "preferred_output" in record or "non_preferred_output" in record:
        return "openai-preference"
    if "chosen" in record and "rejected" in record:
        return "trl-preference"
    return None


def classify_prompt(record: object) -> PromptFormat | None:
    """The prompt format one record is evidently in, or None. A reinforcement prompt is a chat
    record whose conversation ends with a user turn (the model writes the reply); a chat record
    that ends so is malformed, so one record alone does not tell a prompt file (see
    `reader.is_prompt_file`)."""
    if not isinstance(record, dict) or classify_preference(record):
        return None
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    return "openai-reinforcement" if isinstance(last, dict) and last.get("role") == "user" else None


__all__ = [
    "CONVERTERS",
    "FORMATS",
    "PREFERENCE_CONVERTERS",
    "PREFERENCE_FORMATS",
    "PROMPT_CONVERTERS",
    "PROMPT_FORMATS",
    "DatasetFormat",
    "Draft",
    "PreferenceDraft",
    "PreferenceFormat",
    "PromptDraft",
    "PromptFormat",
    "RecordError",
    "classify",
    "classify_preference",
    "classify_prompt",
]
