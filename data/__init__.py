"""Chat datasets in, canonical examples out: readers, validation, image loading, token lengths,
the train/eval split, and the SSRF-safe image fetcher that serving shares.

    result = read_dataset("train.jsonl")                  # OpenAI, HF or ShareGPT, detected
    report = validate_dataset("train.jsonl", model="gemma-3-270m", overlong="drop")
    train, eval = split_examples(report.examples, 0.1)

Nothing here imports torch or transformers at import time.
"""

from gemlora.data.example import (
    DatasetError,
    Example,
    ImagePart,
    Message,
    Part,
    Problem,
    Role,
    Source,
    TextPart,
    dataset_digest,
)
from gemlora.data.formats import FORMATS, DatasetFormat
from gemlora.data.images import ImageError, ImageLimits, LoadedImage, decode_image
from gemlora.data.reader import ReadOptions, ReadResult, read_dataset
from gemlora.data.remote import FetchPolicy, ImageFetcher, ImageFetchError
from gemlora.data.report import DatasetReport, LengthStats, validate_dataset
from gemlora.data.split import Split, is_eval, split_examples
from gemlora.data.tokens import (
    OverlongPolicy,
    TokenCounter,
    apply_length_policy,
    load_token_counter,
    measure_tokens,
)
from gemlora.data.validate import check_messages

__all__ = [
    "FORMATS",
    "DatasetError",
    "DatasetFormat",
    "DatasetReport",
    "Example",
    "FetchPolicy",
    "ImageError",
    "ImageFetchError",
    "ImageFetcher",
    "ImageLimits",
    "ImagePart",
    "LengthStats",
    "LoadedImage",
    "Message",
    "OverlongPolicy",
    "Part",
    "Problem",
    "ReadOptions",
    "ReadResult",
    "Role",
    "Source",
    "Split",
    "TextPart",
    "TokenCounter",
    "apply_length_policy",
    "check_messages",
    "dataset_digest",
    "decode_image",
    "is_eval",
    "load_token_counter",
    "measure_tokens",
    "read_dataset",
    "split_examples",
    "validate_dataset",
]
