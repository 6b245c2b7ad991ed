"""What a run reports while it trains: MLflow metrics, and the same as typed events in the run's
`progress.jsonl` (`gemlora.rundir.ProgressLog`, events in `gemlora.run_events`), for programs
such as the fine-tuning jobs API. A DPO run's `log` and `eval` events carry TRL's
`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies` (`eval_`-prefixed
on held-out pairs), as MLflow does.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from transformers import TrainerCallback

from gemlora.paths import REPO_ROOT
from gemlora.run_events import Checkpoint, Eval, Log, TrainBegin, TrainEnd
from gemlora.rundir import ProgressLog

TAG_PREFIX = "gemlora."


class MlflowProgressCallback(TrainerCallback):
    """Sends every Trainer log (loss, learning rate, token accuracy, eval loss, ...) to the
    active MLflow run at its global step, adds tokens/s, and mirrors it to `progress.jsonl`."""

    def __init__(self, progress: ProgressLog) -> None:
        self.progress = progress
        self._last_tokens: tuple[float, float] | None = None  # (time, tokens seen)

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress.write(TrainBegin(step=state.global_step, max_steps=state.max_steps))

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
        if "num_tokens" in metrics:
            metrics |= self._throughput(metrics["num_tokens"])
        mlflow.log_metrics(metrics, step=state.global_step)
        event = Eval if any(k.startswith("eval_") for k in metrics) else Log
        self.progress.write(
            event(step=state.global_step, max_steps=state.max_steps, metrics=metrics)
        )

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.progress.write(Checkpoint(step=state.global_step, path=str(path)))

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.write(TrainEnd(step=state.global_step, max_steps=state.max_steps))

    def _throughput(self, tokens: float) -> dict[str, float]:
        now, last = time.monotonic(), self._last_tokens
        self._last_tokens = (now, tokens)
        if last is None or now <= last[0] or tokens < last[1]:
            return {}
        return {"tokens_per_second": (tokens - last[1]) / (now - last[0])}


def run_tags(
    base: str, revision: str | None, quantization: str, method: str = "supervised"
) -> dict[str, str]:
    """Base model and revision, quantization, training method, gemlora version and git commit."""
    from gemlora import __version__

    tags = {
        TAG_PREFIX + "base": base,
        TAG_PREFIX + "base_revision": revision or "none",
        TAG_PREFIX + "quantization": quantization,
        TAG_PREFIX + "method": method,
        TAG_PREFIX + "version": __version__,
        TAG_PREFIX + "git_commit": git_commit(),
    }
    return tags


def parent_tags(parent: str, run_id: str | None) -> dict[str, str]:
    """The adapter a run started from (`NAME/VERSION` or a directory) and the MLflow run that
    trained it. Not MLflow's `mlflow.parentRunId`, which would nest this run under that one."""
    tags = {TAG_PREFIX + "parent": parent}
    if run_id is not None:
        tags[TAG_PREFIX + "parent_run_id"] = run_id
    return tags


def git_commit() -> str:
    """The checkout's commit, with `-dirty` when it has uncommitted changes; `unknown` outside
    a git checkout."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def check_reachable(tracking_uri: str) -> None:
    """Fail fast with what to do when the MLflow server is not up."""
    import httpx

    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as error:
        raise ConnectionError(
            f"no MLflow server answers at {tracking_uri} ({error}): start one with `gemlora ui`, "
            "or set output.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None
