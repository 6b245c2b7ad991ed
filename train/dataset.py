"""The run's data: the train and eval examples (chat examples for a supervised run, preference
pairs for DPO), validated by `data/` with the base's own processor, and their description for
MLflow."""

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
    ReadOptions,
    Source,
    TextPart,
    dataset_digest,
    is_preference_file,
    read_dataset,
    split_examples,
    validate_dataset,
    validate_preferences,
)
from gemlora.train.config import ConfigError, DataSection, Method

# MLflow stores a dataset digest in 36 characters; the full sha256 goes into the adapter's
# metadata and the run's tags.
MLFLOW_DIGEST_CHARS = 32
# The Trainer's length-grouped sampler reads token lengths from this column (group_by_length).
LENGTH_COLUMN = "length"


@dataclass
class TrainingData:
    # `Example`s for a supervised run, `PreferenceExample`s for DPO
    train: list[Example] | list[PreferenceExample]
    eval: list[Example] | list[PreferenceExample]
    # "train", and "eval" when read from its own file
    reports: dict[str, DatasetReport] | dict[str, PreferenceReport]

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
    settings: DataSection, base: str, method: Method = "supervised"
) -> TrainingData:
    """Read and validate the data for `base`: chat examples, or preference pairs for `dpo`.
    Raises `DatasetError` listing every error with its file and line (warnings, e.g. dropped
    over-long examples, are kept in the reports), and `ConfigError` naming the field when a
    file holds the other method's kind of data."""
    validate = validate_preferences if method == "dpo" else validate_dataset
    options = ReadOptions(
        max_images=settings.max_images,
        image_limits=ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        ),
    )

    def validated(path: Path) -> DatasetReport | PreferenceReport:
        report = validate(
            path,
            settings.format,
            options=options,
            model=base,
            max_length=settings.max_length,
            overlong=settings.overlong,
        )
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


def _check_kind(path: Path, field: str, method: Method) -> None:
    """A preference file for a supervised run, or a chat file for DPO, is a config mistake."""
    if method == "supervised":
        if is_preference_file(path):
            _wrong_kind(path, field, "a preference dataset", "supervised", "dpo")
        return
    if is_preference_file(path):
        return
    try:
        read_dataset(path, limit=1)  # a chat dataset reads as one; anything else is reported
    except DatasetError:  # by the preference reader, with its own reasons
        return
    _wrong_kind(path, field, "a chat dataset", "dpo", "supervised")


def _wrong_kind(path: Path, field: str, kind: str, method: str, other: str) -> None:
    raise ConfigError(
        [
            f"data.{field}: {path} is {kind}, which method {method!r} does not train: give "
            f"{'chat examples' if method == 'supervised' else 'preference pairs'}, or set "
            f"`method: {other}`"
        ]
    )


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
