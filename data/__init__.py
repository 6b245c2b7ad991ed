"""Chat datasets in, canonical examples out: readers, validation, image loading, token lengths,
the train/eval split, and the SSRF-safe image fetcher that serving shares.

    result = read_dataset("train.jsonl")                  # OpenAI, HF or ShareGPT, detected
    report = validate_dataset("train.jsonl", model="gemma-3-270m", overlong="drop")
    train, eval = split_examples(report.examples, 0.1)

    pairs = read_preferences("dpo.jsonl")                 # OpenAI or TRL preference, detected
    report = validate_preferences("dpo.jsonl", model="gemma-3-270m")
    rows = [pair.to_trl_row() for pair in report.examples]   # what DPOTrainer takes

Nothing here imports torch or transformers at import time.
"""

from gemlora.data.conversation_rules import check_messages, check_preference
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
from gemlora.data.formats import FORMATS, PREFERENCE_FORMATS, DatasetFormat, PreferenceFormat
from gemlora.data.images import ImageError, ImageLimits, LoadedImage, decode_image
from gemlora.data.preference import PreferenceExample, preference_digest
from gemlora.data.reader import (
    PreferenceReadResult,
    ReadOptions,
    ReadResult,
    is_preference_file,
    read_dataset,
    read_preferences,
)
from gemlora.data.safe_fetch import FetchPolicy, ImageFetcher, ImageFetchError
from gemlora.data.split import Split, is_eval, split_examples
from gemlora.data.tokens import (
    OverlongPolicy,
    PreferenceTokens,
    TokenCounter,
    apply_length_policy,
    apply_preference_length_policy,
    encode_preference,
    load_token_counter,
    measure_preference_tokens,
    measure_tokens,
)
from gemlora.data.validation import (
    DatasetReport,
    LengthStats,
    PreferenceReport,
    validate_dataset,
    validate_preferences,
)

__all__ = [
    "FORMATS",
    "PREFERENCE_FORMATS",
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
    "PreferenceExample",
    "PreferenceFormat",
    "PreferenceReadResult",
    "PreferenceReport",
    "PreferenceTokens",
    "Problem",
    "ReadOptions",
    "ReadResult",
    "Role",
    "Source",
    "Split",
    "TextPart",
    "TokenCounter",
    "apply_length_policy",
    "apply_preference_length_policy",
    "check_messages",
    "check_preference",
    "dataset_digest",
    "decode_image",
    "encode_preference",
    "is_eval",
    "is_preference_file",
    "load_token_counter",
    "measure_preference_tokens",
    "measure_tokens",
    "preference_digest",
    "read_dataset",
    "read_preferences",
    "split_examples",
    "validate_dataset",
    "validate_preferences",
]
