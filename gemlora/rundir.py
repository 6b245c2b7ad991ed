"""The layout of a training run directory: `gemlora train` writes it, the jobs API reads it.

Both sides name the files through this module, so that serve never imports train (training
jobs run as `gemlora train` worker processes; DESIGN.md's import direction).
"""

from __future__ import annotations

import json
from pathlib import Path

RUN_FILE = "run.json"  # run id, status, the config it ran with, the registered version
PROGRESS_FILE = "progress.jsonl"  # one JSON event per line, appended as training goes
CHECKPOINTS_DIR = "checkpoints"  # the Trainer's checkpoint-<step>/ directories
ADAPTER_DIR = "adapter"  # the final PEFT adapter


def read_state(run_dir: Path) -> dict | None:
    """The run's `run.json`, or None before the run wrote one."""
    path = run_dir / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: the Trainer writes `trainer_state.json` last, so a
    checkpoint cut short by a kill has none and is skipped."""
    checkpoints = run_dir / CHECKPOINTS_DIR
    complete = [p.parent for p in checkpoints.glob("checkpoint-*/trainer_state.json")]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)
