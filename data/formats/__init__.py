"""Dataset formats: one converter per format, record (dict) -> `Draft`, and format detection."""

from collections.abc import Callable

from gemlora.data.formats import hf, openai, sharegpt
from gemlora.data.formats.common import FORMATS, DatasetFormat, Draft, RecordError

CONVERTERS: dict[DatasetFormat, Callable[[dict], Draft]] = {
    "openai": openai.convert,
    "hf": hf.convert,
    "sharegpt": sharegpt.convert,
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


__all__ = ["CONVERTERS", "FORMATS", "DatasetFormat", "Draft", "RecordError", "classify"]
