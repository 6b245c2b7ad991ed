"""Dataset formats: one converter per format, record (dict) -> `Draft` (a `PreferenceDraft` for
preference formats), and format detection."""

from collections.abc import Callable

from gemlora.data.formats import hf, openai, openai_preference, sharegpt, trl_preference
from gemlora.data.formats.common import (
    FORMATS,
    PREFERENCE_FORMATS,
    DatasetFormat,
    Draft,
    PreferenceDraft,
    PreferenceFormat,
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


__all__ = [
    "CONVERTERS",
    "FORMATS",
    "PREFERENCE_CONVERTERS",
    "PREFERENCE_FORMATS",
    "DatasetFormat",
    "Draft",
    "PreferenceDraft",
    "PreferenceFormat",
    "RecordError",
    "classify",
    "classify_preference",
]
