"""What an adapter version records: its files, their content digest and gemlora's metadata.

An adapter version is a plain PEFT directory. Only the files PEFT and vLLM read are registered
(`ADAPTER_FILES`); training leftovers next to them (optimizer state, checkpoints) are not.
Metadata lives in MLflow model-version tags under `gemlora.`, one tag per field, so it is
readable in the MLflow UI and searchable.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# A tokenizer travels with the adapter only when training changed it.
ADAPTER_FILES = (
    CONFIG_FILE,
    WEIGHTS_FILE,
    "README.md",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)

TAG_PREFIX = "gemlora."
KIND_TAG = "gemlora.kind"
KIND = "lora-adapter"
DIGEST_TAG = "gemlora.digest"
SIZE_TAG = "gemlora.size_bytes"
_EVAL_PREFIX = "gemlora.eval."
_EXTRA_PREFIX = "gemlora.extra."
_SCALAR_FIELDS = (
    "base",
    "base_family",
    "base_quantization",
    "base_revision",
    "rank",
    "alpha",
    "chat_template_hash",
    "dataset_digest",
    "method",
    "parent",
    "checkpoint_step",
)


class AdapterMetadata(BaseModel):
    """gemlora's record of how an adapter was made. Only `base` is required; `register()` fills
    the base fields from the catalogue and rank, alpha and targets from `adapter_config.json`."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="Base trained on: catalogue name, model directory or hub id.")
    base_family: str | None = None
    base_quantization: str | None = Field(
        default=None, description="Quantization trained on, e.g. none, bnb-nf4."
    )
    base_revision: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | str | None = None
    chat_template_hash: str | None = None
    dataset_digest: str | None = None
    method: str | None = Field(
        default=None, description="How it was trained: `supervised` or `dpo`."
    )
    parent: str | None = Field(
        default=None, description="The version it was trained from (`NAME/VERSION`), if any."
    )
    checkpoint_step: int | None = Field(
        default=None,
        description="A checkpoint's training step: registered while the run trains, never given "
        "the run's alias. None: the run's final adapter.",
    )
    eval_scores: dict[str, float] = Field(default_factory=dict)
    extra: dict[str, str] = Field(default_factory=dict, description="Free-form, stored as is.")

    def to_tags(self) -> dict[str, str]:
        tags = {
            TAG_PREFIX + field: str(value)
            for field in _SCALAR_FIELDS
            if (value := getattr(self, field)) is not None
        }
        if self.target_modules is not None:
            tags[TAG_PREFIX + "target_modules"] = json.dumps(self.target_modules)
        tags |= {_EVAL_PREFIX + k: repr(float(v)) for k, v in self.eval_scores.items()}
        tags |= {_EXTRA_PREFIX + k: v for k, v in self.extra.items()}
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> AdapterMetadata | None:
        """None when the tags carry no gemlora metadata (no `gemlora.base`)."""
        if TAG_PREFIX + "base" not in tags:
            return None
        fields: dict[str, Any] = {
            field: tags[TAG_PREFIX + field]
            for field in _SCALAR_FIELDS
            if TAG_PREFIX + field in tags
        }
        if TAG_PREFIX + "target_modules" in tags:
            fields["target_modules"] = json.loads(tags[TAG_PREFIX + "target_modules"])
        fields["eval_scores"] = _with_prefix(tags, _EVAL_PREFIX)
        fields["extra"] = _with_prefix(tags, _EXTRA_PREFIX)
        return cls(**fields)


def _with_prefix(tags: dict[str, str], prefix: str) -> dict[str, str]:
    return {k.removeprefix(prefix): v for k, v in tags.items() if k.startswith(prefix)}


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """The parsed `adapter_config.json`; `FileNotFoundError` or `ValueError` when unusable."""
    path = Path(adapter_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {adapter_dir}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{CONFIG_FILE} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{CONFIG_FILE} is not a JSON object")
    return config


def metadata_from_config(adapter_dir: Path, metadata: AdapterMetadata) -> AdapterMetadata:
    """`metadata` with rank, alpha and target modules taken from the adapter where unset."""
    config = read_adapter_config(adapter_dir)
    targets = config.get("target_modules")
    found = {
        "rank": config.get("r"),
        "alpha": config.get("lora_alpha"),
        # PEFT saves a list of targets from a set, in no fixed order.
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
    }
    update = {k: v for k, v in found.items() if getattr(metadata, k) is None and v is not None}
    return metadata.model_copy(update=update)


def adapter_files(adapter_dir: Path) -> list[Path]:
    """The files of an adapter directory that are registered, in a fixed order."""
    directory = Path(adapter_dir)
    return [directory / name for name in ADAPTER_FILES if (directory / name).is_file()]


def content_digest(adapter_dir: Path) -> str:
    """sha256 over the adapter files' names and contents: equal digests, equal adapters."""
    outer = hashlib.sha256()
    for path in adapter_files(adapter_dir):
        outer.update(f"{path.name}\0{_file_sha256(path)}\n".encode())
    return outer.hexdigest()


def adapter_size(adapter_dir: Path) -> int:
    return sum(path.stat().st_size for path in adapter_files(adapter_dir))


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
