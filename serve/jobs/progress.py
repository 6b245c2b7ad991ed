"""A job's training progress, read from its run directory (`gemlora.rundir`): the typed events
that `gemlora train` writes, the run state and the checkpoints, turned into what the jobs API
reports. Each event describes itself (`ProgressEvent.describe`); this module only gathers."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemlora.run_events import (
    Checkpoint,
    CheckpointRegistered,
    Eval,
    Log,
    ProgressEvent,
    TrainBegin,
    Unreadable,
)
from gemlora.rundir import (
    ProgressLog,
    RunDirFormatError,
    RunState,
    read_state,
)

logger = logging.getLogger("gemlora.jobs")


@dataclass(frozen=True)
class TrainingEvent:
    """One progress event as a job event."""

    index: int  # its place in progress.jsonl, for a stable event id
    time: float
    level: str
    message: str
    type: str  # "message" or "metrics"
    data: dict[str, Any] | None


def read_progress(run_dir: Path) -> list[ProgressEvent]:
    """Every complete event; a line this gemlora cannot read is kept as an `Unreadable` event
    (shown to the job's owner as an error, and logged), never dropped."""
    events = ProgressLog.of(run_dir).read(strict=False)
    for event in events:
        if isinstance(event, Unreadable):
            logger.error("%s: line %d: %s", run_dir, event.line, event.problem)
    return events


def run_state(run_dir: Path) -> RunState:
    """run.json; an empty state before the worker wrote one (or if it cannot be read)."""
    try:
        return read_state(run_dir) or RunState()
    except (OSError, RunDirFormatError) as error:
        logger.error("%s", error)
        return RunState()


def reached_step(events: list[ProgressEvent]) -> int:
    """The last step training reached (0 before the first step)."""
    steps = [step for event in events if isinstance(step := getattr(event, "step", None), int)]
    return max(steps, default=0)


def trained_tokens(events: list[ProgressEvent]) -> int | None:
    counts = [
        e.metrics["num_tokens"] for e in events if isinstance(e, Log) and "num_tokens" in e.metrics
    ]
    return int(counts[-1]) if counts else None


def estimated_finish(events: list[ProgressEvent]) -> int | None:
    """When training should reach its last step, from the step rate measured since the latest
    start (a resume starts a new measurement); None before two points are known."""
    begins = [e for e in events if isinstance(e, TrainBegin)]
    if not begins:
        return None
    begin = begins[-1]
    logs = [e for e in events if isinstance(e, Log) and e.time > begin.time]
    if not logs or not begin.max_steps:
        return None
    last = logs[-1]
    steps, seconds = last.step - begin.step, last.time - begin.time
    if steps <= 0 or seconds <= 0:
        return None
    return int(last.time + (begin.max_steps - last.step) * seconds / steps)


def final_event(events: list[ProgressEvent]) -> ProgressEvent | None:
    """The last `finished`, `paused`, `cancelled` or `failed` event: how the last worker
    ended."""
    ends = [event for event in events if event.terminal]
    return ends[-1] if ends else None


def training_events(events: list[ProgressEvent]) -> list[TrainingEvent]:
    found = []
    for index, event in enumerate(events):
        described = event.describe()
        if described is not None:
            kind = "metrics" if described.metrics is not None else "message"
            found.append(
                TrainingEvent(
                    index, event.time, described.level, described.message, kind, described.metrics
                )
            )
    return found


RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


def results_csv(events: list[ProgressEvent]) -> str:
    """Per-step metrics in the columns of OpenAI's result file: one row per step with a
    training loss, the step's validation figures where it was evaluated, else empty."""
    rows: dict[int, dict[str, Any]] = {}
    for event in events:
        if isinstance(event, Log) and event.loss is not None:
            rows.setdefault(event.step, {"step": event.step}).update(
                train_loss=event.loss, train_accuracy=event.metrics.get("mean_token_accuracy")
            )
        elif isinstance(event, Eval) and event.loss is not None:
            rows.setdefault(event.step, {"step": event.step}).update(
                valid_loss=event.loss,
                valid_mean_token_accuracy=event.metrics.get("eval_mean_token_accuracy"),
            )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow({k: "" if v is None else v for k, v in rows[step].items()})
    return buffer.getvalue()


# --- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedCheckpoint:
    step: int
    time: float
    path: Path
    metrics: dict[str, float]
    model: str | None  # the registered version (`NAME/VERSION`) that serves it


def checkpoints(events: list[ProgressEvent]) -> list[SavedCheckpoint]:
    """The checkpoints still on disk (the Trainer keeps `save_total_limit`), oldest first, each
    with the metrics logged at its step and the version it was registered as."""
    registered = {e.step: e.model for e in events if isinstance(e, CheckpointRegistered)}
    found = {}
    for event in events:
        path = Path(event.path) if isinstance(event, Checkpoint) else None
        if path is None or not (path / "trainer_state.json").is_file():
            continue
        metrics = _checkpoint_metrics(event.step, events)
        # a resume saves a step again: the newest record of a step wins
        found[event.step] = SavedCheckpoint(
            event.step, event.time, path, metrics, registered.get(event.step)
        )
    return [found[step] for step in sorted(found)]


def _checkpoint_metrics(step: int, events: list[ProgressEvent]) -> dict[str, float]:
    """OpenAI's checkpoint metrics: train and valid loss and mean token accuracy at `step`."""
    metrics: dict[str, float] = {"step": step}
    for event in events:
        if isinstance(event, Log) and event.step == step and event.loss is not None:
            metrics |= _present(
                train_loss=event.loss,
                train_mean_token_accuracy=event.metrics.get("mean_token_accuracy"),
            )
        if isinstance(event, Eval) and event.step == step and event.loss is not None:
            metrics |= _present(
                valid_loss=event.loss,
                valid_mean_token_accuracy=event.metrics.get("eval_mean_token_accuracy"),
            )
    return metrics


def _present(**values) -> dict[str, float]:
    return {key: value for key, value in values.items() if value is not None}
