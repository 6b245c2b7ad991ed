"""A training run directory, the contract between `gemlora train` (which writes it) and the jobs
API (which reads it): its layout, its state (`run.json`, a `RunState`) and its progress
(`progress.jsonl`, typed events from `gemlora.run_events`, written and read by `ProgressLog`).

Both sides go through this module, so that serve never imports the trainer (training jobs run as
`gemlora train` worker processes; DESIGN.md's import direction).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from gemlora.run_events import EVENTS, ProgressEvent, Unreadable

RUN_FILE = "run.json"  # a RunState
PROGRESS_FILE = "progress.jsonl"  # one event per line, appended as training goes
CHECKPOINTS_DIR = "checkpoints"  # the Trainer's checkpoint-<step>/ directories
ADAPTER_DIR = "adapter"  # the final PEFT adapter
PAUSE_FILE = "pause-requested"  # present: the run is asked to pause (the jobs API writes it)

# created: the directory exists; running: its MLflow run started; then how the last worker
# ended. Only `finished` is final: `--resume` continues any other.
RunStatus = Literal["created", "running", "paused", "cancelled", "failed", "finished"]


class RunState(BaseModel):
    """`run.json`: what `--resume` continues and what the jobs API reports."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatus = "created"
    config: dict[str, Any] | None = None  # the resolved TrainConfig, as JSON
    run_id: str | None = None  # the MLflow run
    init_adapter: str | None = None  # the version the run started from (base.init_adapter)
    version: int | None = None  # the registered version, once finished


class RunDirFormatError(ValueError):
    """A run.json or progress.jsonl line that is not what this gemlora writes."""


def read_state(run_dir: Path) -> RunState | None:
    """The run's state, or None before the run wrote one."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        return RunState.model_validate_json(path.read_text())
    except ValidationError as error:
        raise RunDirFormatError(f"{path}: {error}") from None


def update_state(run_dir: Path, **changes: Any) -> RunState:
    """Set fields of run.json (validated), written whole or not at all."""
    current = read_state(run_dir) or RunState()
    state = RunState.model_validate(current.model_dump() | changes)
    path = run_dir / RUN_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(state.model_dump_json(indent=2) + "\n")
    temporary.replace(path)  # never a half-written run.json
    return state


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: the Trainer writes `trainer_state.json` last, so a
    checkpoint cut short by a kill has none and is skipped."""
    checkpoints = run_dir / CHECKPOINTS_DIR
    complete = [p.parent for p in checkpoints.glob("checkpoint-*/trainer_state.json")]
    return max(complete, key=checkpoint_step, default=None)


def last_checkpoint_step(run_dir: Path) -> int:
    """The step of the newest complete checkpoint (0: none yet), where a resume starts."""
    checkpoint = last_checkpoint(run_dir)
    return checkpoint_step(checkpoint) if checkpoint else 0


def checkpoint_step(checkpoint: Path) -> int:
    """`checkpoint-12` -> 12."""
    return int(checkpoint.name.rsplit("-", 1)[-1])


def request_pause(run_dir: Path) -> None:
    """Ask the run to pause at its next safe point (the worker may still be starting)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PAUSE_FILE).touch()


def pause_requested_in(run_dir: Path) -> bool:
    return (run_dir / PAUSE_FILE).exists()


def clear_pause_request(run_dir: Path) -> None:
    (run_dir / PAUSE_FILE).unlink(missing_ok=True)


class ProgressLog:
    """`progress.jsonl`: every producer of a run (the trainer's callbacks, checkpoints,
    registration, verification) appends typed events through one of these."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, run_dir: Path) -> ProgressLog:
        return cls(run_dir / PROGRESS_FILE)

    def write(self, event: ProgressEvent) -> None:
        """Append one event as one flushed line."""
        with self.path.open("a") as f:
            f.write(event.model_dump_json() + "\n")

    def read(self, strict: bool = True) -> list[ProgressEvent]:
        """Every complete event (a line still being written is left out). A line that is no
        known event raises `RunDirFormatError` naming it, or with `strict=False` comes back as
        an `Unreadable` event, so a reader shows it rather than dropping it."""
        if not self.path.is_file():
            return []
        complete, _, _partial = self.path.read_text().rpartition("\n")
        events = []
        for number, line in enumerate(complete.splitlines(), start=1):
            if not line:
                continue
            try:
                events.append(EVENTS.validate_json(line))
            except ValidationError as error:
                problem = _first_problem(error)
                if strict:
                    raise RunDirFormatError(f"{self.path}:{number}: {problem}") from None
                events.append(Unreadable(line=number, problem=problem, time=_time_of(line)))
        return events


def _first_problem(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _time_of(line: str) -> float:
    try:
        return float(json.loads(line)["time"])
    except (ValueError, KeyError, TypeError):
        return 0.0
