"""Fixtures for the training tests: sample datasets written into tmp dirs, configs for the tiny
multimodal base that log to the session's MLflow server, and a guard that fails any connection
outside 127.0.0.0/8."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from train_helpers import subset, tiny_document

from gemlora.train import TrainConfig, parse_config


@pytest.fixture(autouse=True)
def _loopback_only(loopback_only) -> None:
    """Every test here: no connection outside 127.0.0.0/8."""


@pytest.fixture(scope="module", autouse=True)
def _memory_for_training(no_engines) -> None:
    """Training runs here need the memory the session's vLLM engines would hold."""


@pytest.fixture(scope="session")
def shapes(samples) -> tuple[Path, Path]:
    """A small shapes-vqa train file (16 image questions) and eval file (4): the tiny runs."""
    directory = samples / "shapes-vqa"
    return (
        subset(directory / "train.jsonl", directory / "train-16.jsonl", 16),
        subset(directory / "eval.jsonl", directory / "eval-4.jsonl", 4),
    )


@pytest.fixture
def tiny_config(built_models, mlflow_server, shapes, tmp_path) -> Callable[..., TrainConfig]:
    """`tiny_config(**sections)`: a config for tiny-gemma-3-mm on the shapes subset, logging to
    the session's MLflow server, with the test's run dir and adapter name; each keyword
    updates one section, e.g. `tiny_config(training={"max_steps": 2})`, or sets a top-level
    field (`method="reinforcement"`)."""

    name = f"tiny-{uuid.uuid4().hex[:8]}"

    def make(**sections) -> TrainConfig:
        document = tiny_document(
            shapes, name=name, tracking_uri=mlflow_server.url, run_dir=tmp_path / "run"
        )
        for section, fields in sections.items():
            if isinstance(fields, dict):
                document.setdefault(section, {}).update(fields)
            else:  # a top-level field, e.g. method="dpo"
                document[section] = fields
        return parse_config(document)

    return make
