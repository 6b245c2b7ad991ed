"""Datasets in, canonical examples out: readers for chat (SFT), preference (DPO) and
reinforcement prompt (RFT) datasets, validation, image loading, token lengths, the train/eval
split, and the SSRF-safe image fetcher that serving shares.

    result = read_dataset("train.jsonl")                  # OpenAI, HF or ShareGPT, detected
    report = validate_dataset("train.jsonl", model="gemma-3-270m", overlong="drop")
    train, eval = split_examples(report.examples, 0.1)

    pairs = read_preferences("dpo.jsonl")                 # OpenAI or TRL preference, detected
    report = validate_preferences("dpo.jsonl", model="gemma-3-270m")
    rows = [pair.to_trl_row() for pair in report.examples]   # what DPOTrainer takes

    prompts = read_prompts("rft.jsonl")                   # OpenAI reinforcement JSONL
    report = validate_prompts("rft.jsonl", model="gemma-3-270m", completion_tokens=256)
    rows = [prompt.to_trl_row() for prompt in report.examples]  # prompt + item (JSON), for GRPO

Nothing here imports torch or transformers at import time.
"""

from gemlora.data.conversation_rules import check_messages, check_preference, check_prompt
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
from gemlora.data.formats import (
    FORMATS,
    PREFERENCE_FORMATS,
    PROMPT_FORMATS,
    DatasetFormat,
    PreferenceFormat,
    PromptFormat,
)
from gemlora.data.images import ImageError, ImageLimits, LoadedImage, decode_image
from gemlora.data.preference import PreferenceExample, preference_digest
from gemlora.data.prompts import PromptExample, prompt_digest
from gemlora.data.reader import (
    PreferenceReadResult,
    PromptReadResult,
    ReadOptions,
    ReadResult,
    is_preference_file,
    is_prompt_file,
    read_dataset,
    read_preferences,
    read_prompts,
)
from gemlora.data.safe_fetch import FetchPolicy, ImageFetcher, ImageFetchError
from gemlora.data.split import Split, is_eval, split_examples
from gemlora.data.tokens import (
    OverlongPolicy,
    PreferenceTokens,
    TokenCounter,
    apply_length_policy,
    apply_preference_length_policy,
    apply_prompt_length_policy,
    encode_preference,
    load_token_counter,
    measure_preference_tokens,
    measure_prompt_tokens,
    measure_tokens,
)
from gemlora.data.validation import (
    DatasetReport,
    LengthStats,
    PreferenceReport,
    PromptReport,
    validate_dataset,
    validate_preferences,
    validate_prompts,
)

__all__ = [
    "FORMATS",
    "PREFERENCE_FORMATS",
    "PROMPT_FORMATS",
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
    "PromptExample",
    "PromptFormat",
    "PromptReadResult",
    "PromptReport",
    "ReadOptions",
    "ReadResult",
    "Role",
    "Source",
    "Split",
    "TextPart",
    "TokenCounter",
    "apply_length_policy",
    "apply_preference_length_policy",
    "apply_prompt_length_policy",
    "check_messages",
    "check_preference",
    "check_prompt",
    "dataset_digest",
    "decode_image",
    "encode_preference",
    "is_eval",
    "is_preference_file",
    "is_prompt_file",
    "load_token_counter",
    "measure_preference_tokens",
    "measure_prompt_tokens",
    "measure_tokens",
    "preference_digest",
    "prompt_digest",
    "read_dataset",
    "read_preferences",
    "read_prompts",
    "split_examples",
    "validate_dataset",
    "validate_preferences",
    "validate_prompts",
]
