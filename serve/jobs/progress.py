"""A job's training progress, read from its run directory: the `progress.jsonl` events that
`gemlora train` writes (see `gemlora.train.tracking`), the run state (`run.json`) and the
checkpoints, turned into what the jobs API reports."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemlora.rundir import PROGRESS_FILE, last_checkpoint, read_state

TERMINAL_EVENTS = ("finished", "cancelled", "failed", "paused")


@dataclass(frozen=True)
class TrainingEvent:
    """One line of progress.jsonl as a job event."""

    index: int  # line number in progress.jsonl, for a stable event id
    time: float
    level: str
    message: str
    type: str  # "message" or "metrics"
    data: dict[str, Any] | None


def read_progress(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete line of progress.jsonl (a line being written is skipped)."""
    path = run_dir / PROGRESS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def run_state(run_dir: Path) -> dict[str, Any]:
    """run.json: `run_id`, `status` (created, running, finished) and `version` when finished."""
    try:
        return read_state(run_dir) or {}
    except (OSError, json.JSONDecodeError):
        return {}


def last_step(run_dir: Path) -> int:
    """The step of the newest complete checkpoint (0: none yet), where a resume starts."""
    checkpoint = last_checkpoint(run_dir)
    return int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else 0


def trained_tokens(records: list[dict[str, Any]]) -> int | None:
    counts = [r["num_tokens"] for r in records if r.get("event") == "log" and "num_tokens" in r]
    return int(counts[-1]) if counts else None


def estimated_finish(records: list[dict[str, Any]]) -> int | None:
    """When training should reach its last step, from the step rate measured since the latest
    start (a resume starts a new measurement); None before two points are known."""
    begins = [r for r in records if r.get("event") == "train_begin"]
    if not begins:
        return None
    begin = begins[-1]
    logs = [r for r in records if r.get("event") == "log" and r.get("time", 0) > begin["time"]]
    if not logs or not begin.get("max_steps"):
        return None
    last = logs[-1]
    steps, seconds = last["step"] - begin.get("step", 0), last["time"] - begin["time"]
    if steps <= 0 or seconds <= 0:
        return None
    return int(last["time"] + (begin["max_steps"] - last["step"]) * seconds / steps)


def final_event(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last `finished`, `cancelled` or `failed` record: how the last worker ended."""
    ends = [r for r in records if r.get("event") in TERMINAL_EVENTS]
    return ends[-1] if ends else None


# --- events -----------------------------------------------------------------------------------


def training_events(records: list[dict[str, Any]]) -> list[TrainingEvent]:
    events = []
    for index, record in enumerate(records):
        described = describe(record)
        if described is not None:
            level, message, data = described
            kind = "metrics" if data is not None else "message"
            events.append(TrainingEvent(index, record["time"], level, message, kind, data))
    return events


def describe(record: dict[str, Any]) -> tuple[str, str, dict | None] | None:
    """(level, message, metrics or None) for one progress record; None for records that say
    nothing new to a client."""
    event, step, total = record.get("event"), record.get("step"), record.get("max_steps")
    if event == "start":
        verb = "resumed" if record.get("resumed") else "started"
        return "info", f"Training {verb} (MLflow run {record.get('run_id')})", None
    if event == "train_begin":
        return "info", f"Training from step {step} to step {total}", None
    if event == "log" and "loss" in record:
        metrics = _metrics(record, "train")
        return "info", f"Step {step}/{total}: training loss={record['loss']:.4f}", metrics
    if event == "eval" and "eval_loss" in record:
        metrics = _metrics(record, "valid")
        return "info", f"Step {step}/{total}: validation loss={record['eval_loss']:.4f}", metrics
    if event == "checkpoint":
        return "info", f"Checkpoint saved at step {step}", None
    if event == "checkpoint_registered":
        model = f"{record['name']}/{record['version']}"
        return "info", f"Checkpoint at step {step} is callable as model {model!r}", None
    if event == "checkpoint_unregistered":
        return "warn", f"Checkpoint at step {step} could not be registered: {record['error']}", None
    if event == "generation_eval":
        return "info", _generation_message(record), None
    if event == "registry_unavailable":
        return (
            "warn",
            f"MLflow is unreachable; the adapter is kept and its registration is retried in "
            f"{record.get('retry_in_s', 0):.0f} s",
            None,
        )
    if event == "best_checkpoint":
        how = (
            f"Early stopping at step {record.get('stopped_at')}"
            if record.get("stopped_early")
            else "Training ran to its last step"
        )
        return (
            "info",
            f"{how}: the best checkpoint, step {record.get('step')} (validation loss "
            f"{record.get('eval_loss', 0):.4f}), is the one registered",
            None,
        )
    if event == "registered":
        return "info", f"Registered {record['name']} version {record['version']}", None
    if event == "verified":
        return _verification_event(record)
    if event == "unverified":
        return "warn", f"The version was not verified: {record.get('reason')}", None
    if event == "promotion":
        moved = "moved to the new version" if record.get("moved") else "stays where it was"
        return "info", f"Alias {record.get('to')} {moved} (promote_if)", None
    if event == "paused":
        return "info", f"Training paused at step {step} with a checkpoint", None
    if event == "cancelled":
        return "warn", f"Training stopped ({record.get('reason', 'interrupted')})", None
    if event == "failed":
        return "error", f"Training failed: {record.get('error')}", None
    return None


def _verification_event(record: dict[str, Any]) -> tuple[str, str, None]:
    """What the engine check found (`gemlora.adapters.verify`)."""
    where = f"for version {record.get('version')} on {record.get('engine_base')}"
    if record.get("refused"):
        return "error", f"Verification failed {where}: {record['refused']}", None
    how = "greedy tokens" if record.get("compared_by") == "tokens" else "log-probabilities"
    images = f", {record.get('image_prompts')} with images" if record.get("image_prompts") else ""
    verdict = "passed" if record.get("passed") else "failed"
    level = "info" if record.get("passed") else "error"
    message = (
        f"Verification {verdict} {where}: {record.get('prompts')} prompts{images}, agreement "
        f"{record.get('agreement', 0):.0%}, compared by {how}"
    )
    return level, message, None


RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


def results_csv(records: list[dict[str, Any]]) -> str:
    """Per-step metrics in the columns of OpenAI's result file: one row per step with a
    training loss, the step's validation figures where it was evaluated, else empty."""
    rows: dict[int, dict[str, Any]] = {}
    for record in records:
        step, event = record.get("step"), record.get("event")
        if event == "log" and "loss" in record:
            row = rows.setdefault(step, {"step": step})
            row |= {
                "train_loss": record["loss"],
                "train_accuracy": record.get("mean_token_accuracy"),
            }
        elif event == "eval" and "eval_loss" in record:
            row = rows.setdefault(step, {"step": step})
            row |= {
                "valid_loss": record["eval_loss"],
                "valid_mean_token_accuracy": record.get("eval_mean_token_accuracy"),
            }
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow({k: "" if v is None else v for k, v in rows[step].items()})
    return buffer.getvalue()


def _metrics(record: dict[str, Any], prefix: str) -> dict[str, Any]:
    """OpenAI's metric names: train_loss, valid_loss, train_mean_token_accuracy, ..."""
    source = "eval_" if prefix == "valid" else ""
    data: dict[str, Any] = {"step": record.get("step"), "total_steps": record.get("max_steps")}
    for name in ("loss", "mean_token_accuracy"):
        if f"{source}{name}" in record:
            data[f"{prefix}_{name}"] = record[f"{source}{name}"]
    for name in ("learning_rate", "tokens_per_second", "num_tokens", "epoch"):
        if name in record:
            data[name] = record[name]
    return data


def _generation_message(record: dict[str, Any]) -> str:
    scores = [
        f"{label} {record[key]:.0%}"
        for label, key in (
            ("adapter contains", "contains"),
            ("base contains", "base_contains"),
            ("adapter exact", "exact"),
            ("base exact", "base_exact"),
        )
        if isinstance(record.get(key), int | float)
    ]
    examples = record.get("examples")
    return f"Generation eval on {examples} held-out examples: " + ", ".join(scores)


# --- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    step: int
    time: float
    path: Path
    metrics: dict[str, float]
    model: str | None  # the registered version (`NAME/VERSION`) that serves it


def checkpoints(run_dir: Path, records: list[dict[str, Any]]) -> list[Checkpoint]:
    """The checkpoints still on disk (the Trainer keeps `save_total_limit`), oldest first, each
    with the metrics logged at its step and the version it was registered as."""
    registered = {
        r["step"]: f"{r['name']}/{r['version']}"
        for r in records
        if r.get("event") == "checkpoint_registered"
    }
    found = []
    for record in records:
        if record.get("event") != "checkpoint":
            continue
        path = Path(record["path"])
        if not (path / "trainer_state.json").is_file():
            continue
        step = record["step"]
        metrics = _checkpoint_metrics(step, records)
        found.append(Checkpoint(step, record["time"], path, metrics, registered.get(step)))
    unique = {checkpoint.step: checkpoint for checkpoint in found}  # a resume saves again
    return sorted(unique.values(), key=lambda c: c.step)


def _checkpoint_metrics(step: int, records: list[dict[str, Any]]) -> dict[str, float]:
    """OpenAI's checkpoint metrics: train and valid loss and mean token accuracy at `step`."""
    metrics: dict[str, float] = {"step": step}
    for record in records:
        if record.get("step") != step:
            continue
        if record.get("event") == "log" and "loss" in record:
            metrics |= _present(
                train_loss=record["loss"],
                train_mean_token_accuracy=record.get("mean_token_accuracy"),
            )
        if record.get("event") == "eval" and "eval_loss" in record:
            metrics |= _present(
                valid_loss=record["eval_loss"],
                valid_mean_token_accuracy=record.get("eval_mean_token_accuracy"),
            )
    return metrics


def _present(**values) -> dict[str, float]:
    return {key: value for key, value in values.items() if value is not None}
