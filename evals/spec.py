"""The eval spec: what `gemlora eval SPEC.yaml` runs.

    name: style
    endpoint: {url: http://127.0.0.1:8000/v1, api_key_env: GEMLORA_API_KEY}
    items: {run: runs/style}            # a run's held-out split; or {file: items.jsonl}
    messages:                           # optional: the prompt, templated from each item
      - {role: user, content: "{{item.question}}"}
    models: [gemma-3-270m-w4a16, style-bot@candidate]
    baseline: gemma-3-270m-w4a16        # default: the first model
    sampling: {max_tokens: 64, temperature: 0}
    graders:                            # OpenAI's grader format (gemlora.evals.graders)
      - {type: string_check, name: signed, input: "{{sample.output_text}}",
         reference: "Captain Gem", operation: like}
    tracking: {tracking_uri: http://127.0.0.1:5000, experiment: gemlora-evals}

Items are dicts, the `item` namespace of the graders' templates. A run's held-out items carry
`messages` (the prompt, images as data URLs) and `reference` (the held-out answer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gemlora.config import load_yaml_config
from gemlora.evals.graders import GraderModel, validate_grader, validate_graders


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Endpoint(Section):
    """Where the models answer: gemlora's gateway (or any OpenAI-compatible server)."""

    url: str = Field(default="http://127.0.0.1:8000/v1", description="Its /v1 base URL.")
    api_key_env: str | None = Field(
        default="GEMLORA_API_KEY",
        description="The environment variable holding the API key (unset: no key).",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {url!r}")
        return url.rstrip("/")


class ItemsSource(Section):
    """The items: a JSONL file of objects, a chat dataset, or a training run's held-out split.
    A chat example (dataset, run) is an item with `messages` (the prompt before its last
    assistant turn) and `reference` (that turn's text)."""

    file: Path | None = Field(default=None, description="JSONL, one item object per line.")
    dataset: Path | None = Field(
        default=None, description="A chat dataset (OpenAI JSONL, HF, ShareGPT): every example."
    )
    run: Path | None = Field(
        default=None, description="A training run's directory: its held-out examples."
    )
    limit: int | None = Field(default=None, ge=1, description="The first N items only.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ItemsSource:
        given = [key for key in ("file", "dataset", "run") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of items.file, .dataset and .run, not {given}")
        return self


class Sampling(Section):
    max_tokens: int = Field(default=64, ge=1, description="Tokens per answer, at most.")
    temperature: float = Field(default=0, ge=0, le=2, description="0: greedy.")
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None)


class Bootstrap(Section):
    """The paired bootstrap behind each comparison's interval."""

    samples: int = Field(default=2000, ge=100, description="Resamples of the items.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="The interval's level.")
    seed: int = Field(default=0, description="Same seed, same interval.")


class Tracking(Section):
    tracking_uri: str | None = Field(
        default=None, description="MLflow; None: $MLFLOW_TRACKING_URI, else nothing recorded."
    )
    experiment: str = Field(default="gemlora-evals", description="The MLflow experiment.")


class EvalSpec(Section):
    name: str = Field(min_length=1, description="What the MLflow run is called.")
    endpoint: Endpoint = Field(default_factory=Endpoint)
    judge_endpoint: Endpoint | None = Field(
        default=None,
        description="Where score_model/label_model judges answer (any OpenAI-compatible URL, "
        "its key from `api_key_env`); None: the same endpoint as the models.",
    )
    items: ItemsSource | None = Field(
        default=None, description="Required for `gemlora eval` (the eval gate hands its own)."
    )
    messages: list[dict[str, Any]] | None = Field(
        default=None,
        description="The prompt as chat messages, `{{item.x}}` templates in text and image "
        "URLs; None: each item's own `messages`.",
    )
    models: list[str] = Field(min_length=1, description="Model names the endpoint serves.")
    baseline: str | None = Field(
        default=None, description="What the others are compared with; default: the first model."
    )
    sampling: Sampling = Field(default_factory=Sampling)
    graders: list[dict[str, Any]] = Field(min_length=1, description="OpenAI-format graders.")
    concurrency: int = Field(
        default=16, ge=1, le=256, description="Requests in flight at once (the engine batches)."
    )
    bootstrap: Bootstrap = Field(default_factory=Bootstrap)
    tracking: Tracking = Field(default_factory=Tracking)

    @field_validator("graders")
    @classmethod
    def _valid_graders(cls, graders: list[dict[str, Any]]) -> list[dict[str, Any]]:
        validate_graders(graders)
        return graders

    @model_validator(mode="after")
    def _baseline_is_a_model(self) -> EvalSpec:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models: each once, got {self.models}")
        if self.baseline is None:
            self.baseline = self.models[0]
        elif self.baseline not in self.models:
            raise ValueError(f"baseline {self.baseline!r} is not one of models {self.models}")
        return self

    def grader_models(self) -> list[GraderModel]:
        return [validate_grader(grader) for grader in self.graders]


def load_eval_spec(path: str | Path, overrides: list[str] | None = None) -> EvalSpec:
    """The spec at `path` (`--set` overrides applied); relative item paths are read from the
    spec's folder. A ConfigError names each wrong field."""

    def relative_to_spec(document: dict[str, Any], folder: Path) -> None:
        items = document.get("items")
        if isinstance(items, dict):
            for key in ("file", "dataset", "run"):
                if isinstance(items.get(key), str) and not Path(items[key]).is_absolute():
                    items[key] = str(folder / items[key])

    return load_yaml_config(EvalSpec, path, overrides or [], prepare=relative_to_spec)
