"""The run's data: the train and eval examples (chat examples for a supervised run, preference
pairs for DPO, prompts with their item fields for reinforcement), validated by `data/` with the
base's own processor, and their description for MLflow."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from gemlora.data import (
    DatasetError,
    DatasetReport,
    Example,
    ImageLimits,
    ImagePart,
    PreferenceExample,
    PreferenceReport,
    Problem,
    PromptExample,
    PromptReport,
    ReadOptions,
    Source,
    TextPart,
    dataset_digest,
    is_preference_file,
    is_prompt_file,
    read_dataset,
    split_examples,
    validate_dataset,
    validate_preferences,
    validate_prompts,
)
from gemlora.train.config import METHOD_DATA, ConfigError, DataSection, Method

# MLflow stores a dataset digest in 36 characters; the full sha256 goes into the adapter's
# metadata and the run's tags.
MLFLOW_DIGEST_CHARS = 32
# The Trainer's length-grouped sampler reads token lengths from this column (group_by_length).
LENGTH_COLUMN = "length"


@dataclass
class TrainingData:
    # `Example`s for a supervised run, `PreferenceExample`s for DPO, `PromptExample`s for
    # reinforcement
    train: list[Example] | list[PreferenceExample] | list[PromptExample]
    eval: list[Example] | list[PreferenceExample] | list[PromptExample]
    # "train", and "eval" when read from its own file
    reports: dict[str, DatasetReport] | dict[str, PreferenceReport] | dict[str, PromptReport]

    @property
    def train_lengths(self) -> list[int]:
        """The token length of each train example, as the validation measured it (a pair's:
        prompt + its longer reply)."""
        report = self.reports["train"]
        measured = dict(zip(map(id, report.examples), report.longest(), strict=True))
        return [measured[id(example)] for example in self.train]

    @property
    def digest(self) -> str:
        return dataset_digest(self.train)

    def summary(self) -> dict:
        """What `data-report.json` holds: counts, lengths and every problem, per file."""
        return {
            "train_examples": len(self.train),
            "eval_examples": len(self.eval),
            "train_digest": self.digest,
            "files": {side: _report_summary(report) for side, report in self.reports.items()},
        }


def load_training_data(
    settings: DataSection, base: str, method: Method = "supervised", completion_tokens: int = 0
) -> TrainingData:
    """Read and validate the data for `base`: chat examples, preference pairs for `dpo`, prompts
    for `reinforcement` (each with room for `completion_tokens` more). Raises `DatasetError`
    listing every error with its file and line (warnings, e.g. dropped over-long examples, are
    kept in the reports), and `ConfigError` naming the field when a file holds another method's
    kind of data."""
    options = ReadOptions(
        max_images=settings.max_images,
        image_limits=ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        ),
    )

    def validated(path: Path) -> DatasetReport | PreferenceReport | PromptReport:
        common = dict(
            options=options, model=base, max_length=settings.max_length, overlong=settings.overlong
        )
        if method == "reinforcement":
            report = validate_prompts(
                path, settings.format, completion_tokens=completion_tokens, **common
            )
        elif method == "dpo":
            report = validate_preferences(path, settings.format, **common)
        else:
            report = validate_dataset(path, settings.format, **common)
        if report.errors:
            raise DatasetError(report.errors[0], report.errors)
        if not report.examples:
            raise DatasetError(Problem(Source(path), "", "no usable examples"))
        return report

    _check_kind(settings.train_file, "train_file", method)
    if settings.eval_file is not None:  # both before the slow validation
        _check_kind(settings.eval_file, "eval_file", method)
    reports = {"train": validated(settings.train_file)}
    if settings.eval_file is not None:
        reports["eval"] = validated(settings.eval_file)
        return TrainingData(reports["train"].examples, reports["eval"].examples, reports)
    train, held_out = split_examples(reports["train"].examples, settings.eval_fraction)
    if not train:
        problem = Problem(
            Source(settings.train_file), "", "every example went to the eval split: lower "
            "data.eval_fraction or give data.eval_file",
        )  # fmt: skip
        raise DatasetError(problem)
    return TrainingData(train, held_out, reports)


# What each kind of data is called in an error, and the method that trains on it.
KIND_NAMES = {
    "chat": "a chat dataset",
    "preference": "a preference dataset",
    "prompt-only": "a prompt-only dataset",
}
KIND_WORDS = {"chat": "chat examples", "preference": "preference pairs", "prompt-only": "prompts"}
KIND_METHOD = {kind: method for method, (kind, _) in METHOD_DATA.items()}


def _check_kind(path: Path, field: str, method: Method) -> None:
    """A file of another method's kind of data (preference pairs for a supervised run, chats for
    DPO, ...) is a config mistake, named as one."""
    found, needed = data_kind(path), METHOD_DATA[method][0]
    if found is None or found == needed:
        return  # unreadable or unknown: the reader of `needed` reports why
    raise ConfigError(
        [
            f"data.{field}: {path} is {KIND_NAMES[found]}, which method {method!r} does not "
            f"train: give {KIND_WORDS[needed]}, or set `method: {KIND_METHOD[found]}`"
        ]
    )


def data_kind(path: Path) -> str | None:
    """`chat`, `preference` or `prompt-only`, by the first records that tell; None when none
    does."""
    if is_preference_file(path):
        return "preference"
    if is_prompt_file(path):
        return "prompt-only"
    try:
        read_dataset(path, limit=1)
    except DatasetError:
        return None
    return "chat"


def reply_examples(examples: list[Example] | list[PreferenceExample]) -> list[Example]:
    """Chat examples ending with the reply the adapter should give (a pair's chosen one): what
    the generation eval takes."""
    return [e.chosen_example() if isinstance(e, PreferenceExample) else e for e in examples]


def to_hf_dataset(examples: list[Example], multimodal: bool, lengths: list[int] | None = None):
    """The examples as a Hugging Face dataset of rows the collator takes (see
    `gemlora.train.collator`). Images keep their original bytes and decode when a row is read.
    With `lengths`, a `length` column holds each example's token length (for group_by_length)."""
    from datasets import Dataset, Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string"), "index": Value("int32")}
    message = {"role": Value("string"), "weight": Value("int8"), "content": List(part)}
    features = {"messages": List(message)}
    if multimodal:
        features["images"] = List(Image())
    rows = [example_row(example, multimodal) for example in examples]
    if lengths is not None:
        features[LENGTH_COLUMN] = Value("int32")
        rows = [row | {LENGTH_COLUMN: length} for row, length in zip(rows, lengths, strict=True)]
    return Dataset.from_list(rows, features=Features(features))


def example_row(example: Example, multimodal: bool = True) -> dict:
    messages = [
        {"role": m.role, "weight": m.weight, "content": [_part(p) for p in m.content]}
        for m in example.messages
    ]
    if not multimodal:
        return {"messages": messages}
    images = [{"bytes": image.data, "path": None} for image in example.images]
    return {"messages": messages, "images": images}


def _part(part: TextPart | ImagePart) -> dict:
    if isinstance(part, ImagePart):
        return {"type": "image", "text": None, "index": part.index}
    return {"type": "text", "text": part.text, "index": None}


def mlflow_dataset(examples: list[Example], source: Path, name: str):
    """An MLflow dataset for `mlflow.log_input`: one row per example (its canonical JSON, images
    by pixel digest), named, with the dataset's digest and source file."""
    import mlflow.data
    import pandas as pd

    frame = pd.DataFrame({"example": [example.canonical_json() for example in examples]})
    digest = dataset_digest(examples)[:MLFLOW_DIGEST_CHARS]
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source")
        return mlflow.data.from_pandas(frame, source=str(source), name=name, digest=digest)


def _report_summary(report: DatasetReport) -> dict:
    stats = report.length_stats()
    return {
        "path": str(report.read.path),
        "format": report.read.format,
        "records": report.read.records,
        "examples": len(report.examples),
        "token_lengths": None if stats is None else asdict(stats),
        "max_length": report.max_length,
        "images_per_example": report.images_per_example(),
        "problems": [str(problem) for problem in report.problems],
    }


def write_report(data: TrainingData, path: Path) -> None:
    path.write_text(json.dumps(data.summary(), indent=2) + "\n")
