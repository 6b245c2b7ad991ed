"""The events a training run reports in its `progress.jsonl`: one pydantic model per event, told
apart by its `event` field, each describing itself to a person (the jobs API's event list).

Training writes them (`ProgressLog.write(Registered(name=..., version=...))`), the jobs API reads
them back as the same models: a renamed field or event fails where it is written or parsed, in
the test suite, not in another process at run time.

    start -> train_begin -> (log | eval | checkpoint | checkpoint_registered)* -> train_end
      -> best_checkpoint? -> margin_eval? (DPO) -> generation_eval? -> registered
      -> (verified | unverified | verification_error)* -> promotion? -> finished
    at any point: paused, cancelled or failed end the run instead
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Level = Literal["info", "warn", "error"]


class Description(NamedTuple):
    """What a job's event list shows for one progress event."""

    level: Level
    message: str
    metrics: dict[str, Any] | None = None  # OpenAI's `data` of a `metrics` event


class ProgressEvent(BaseModel):
    """Every event has the time it was written and its `event` name (in each subclass)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: float = Field(default_factory=lambda: round(time.time(), 3))
    terminal: ClassVar[bool] = False  # the last event of a worker: how it ended

    def describe(self) -> Description | None:
        """The event as a person reads it; None for events that say nothing new to a client."""
        return None


# --- training ---------------------------------------------------------------------------------


class Start(ProgressEvent):
    event: Literal["start"] = "start"
    run_id: str
    run_dir: str
    resumed: bool = False

    def describe(self) -> Description:
        verb = "resumed" if self.resumed else "started"
        return Description("info", f"Training {verb} (MLflow run {self.run_id})")


class TrainBegin(ProgressEvent):
    event: Literal["train_begin"] = "train_begin"
    step: int
    max_steps: int

    def describe(self) -> Description:
        return Description("info", f"Training from step {self.step} to step {self.max_steps}")


# A reinforcement run's per-step metrics under these names go into a job's `metrics` events.
REWARD_PREFIXES = ("rewards/", "completions/", "time/")


class _StepMetrics(ProgressEvent):
    """The Trainer's logs at a step: loss, learning rate, token accuracy, tokens/s, and a DPO
    run's `rewards/*` and `logps/*` (`eval_`-prefixed on held-out data), as in MLflow."""

    step: int
    max_steps: int
    metrics: dict[str, float] = Field(default_factory=dict)

    def _openai_metrics(self, prefix: str, source: str) -> dict[str, Any]:
        """OpenAI's metric names: train_loss, valid_loss, train_mean_token_accuracy, ..."""
        data: dict[str, Any] = {"step": self.step, "total_steps": self.max_steps}
        for name in ("loss", "mean_token_accuracy"):
            if f"{source}{name}" in self.metrics:
                data[f"{prefix}_{name}"] = self.metrics[f"{source}{name}"]
        for name in ("learning_rate", "tokens_per_second", "num_tokens", "epoch"):
            if name in self.metrics:
                data[name] = self.metrics[name]
        return data | self._reward_metrics(prefix, source)

    def _reward_metrics(self, prefix: str, source: str) -> dict[str, float]:
        """A reinforcement run's: `train_reward_mean` (OpenAI's name), the reward's std, each
        grader's `rewards/...` parts, the KL, the completion length, the time split."""
        names = {"reward": "reward_mean", "reward_std": "reward_std", "kl": "kl"}
        data = {
            f"{prefix}_{ours}": self.metrics[f"{source}{theirs}"]
            for theirs, ours in names.items()
            if f"{source}{theirs}" in self.metrics
        }
        for key, value in self.metrics.items():
            name = key.removeprefix(source)
            if key.startswith(source) and name.startswith(REWARD_PREFIXES):
                data[f"{prefix}_{name}"] = value
        return data


class Log(_StepMetrics):
    event: Literal["log"] = "log"

    @property
    def loss(self) -> float | None:
        return self.metrics.get("loss")

    def describe(self) -> Description | None:
        if self.loss is None:  # the Trainer's closing summary (train_runtime, ...)
            return None
        message = f"Step {self.step}/{self.max_steps}: training loss={self.loss:.4f}"
        if "reward" in self.metrics:
            message += f", reward={self.metrics['reward']:.4f}"
        return Description("info", message, self._openai_metrics("train", ""))


class Eval(_StepMetrics):
    event: Literal["eval"] = "eval"

    @property
    def loss(self) -> float | None:
        return self.metrics.get("eval_loss")

    def describe(self) -> Description | None:
        if self.loss is None:
            return None
        message = f"Step {self.step}/{self.max_steps}: validation loss={self.loss:.4f}"
        if "eval_reward" in self.metrics:
            message += f", reward={self.metrics['eval_reward']:.4f}"
        return Description("info", message, self._openai_metrics("valid", "eval_"))


class Checkpoint(ProgressEvent):
    event: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str

    def describe(self) -> Description:
        return Description("info", f"Checkpoint saved at step {self.step}")


class CheckpointRegistered(ProgressEvent):
    event: Literal["checkpoint_registered"] = "checkpoint_registered"
    step: int
    name: str
    version: int

    @property
    def model(self) -> str:
        return f"{self.name}/{self.version}"

    def describe(self) -> Description:
        message = f"Checkpoint at step {self.step} is callable as model {self.model!r}"
        return Description("info", message)


class CheckpointUnregistered(ProgressEvent):
    event: Literal["checkpoint_unregistered"] = "checkpoint_unregistered"
    step: int
    error: str

    def describe(self) -> Description:
        message = f"Checkpoint at step {self.step} could not be registered: {self.error}"
        return Description("warn", message)


class TrainEnd(ProgressEvent):
    event: Literal["train_end"] = "train_end"
    step: int
    max_steps: int


class BestCheckpoint(ProgressEvent):
    """Early stopping: the Trainer loaded the checkpoint with the best eval loss."""

    event: Literal["best_checkpoint"] = "best_checkpoint"
    step: int | None
    eval_loss: float | None
    stopped_at: int
    stopped_early: bool

    def describe(self) -> Description:
        how = (
            f"Early stopping at step {self.stopped_at}"
            if self.stopped_early
            else "Training ran to its last step"
        )
        return Description(
            "info",
            f"{how}: the best checkpoint, step {self.step} (validation loss "
            f"{self.eval_loss or 0:.4f}), is the one registered",
        )


# --- held-out scores --------------------------------------------------------------------------


class MarginEval(ProgressEvent):
    """DPO: mean log-prob margins (chosen - rejected, nats) of base and adapter."""

    event: Literal["margin_eval"] = "margin_eval"
    step: int
    pairs: int
    base_logp_margin: float
    logp_margin: float

    def describe(self) -> Description:
        return Description(
            "info",
            f"Log-probability margin on {self.pairs} held-out pairs: adapter "
            f"{self.logp_margin:.3f}, base {self.base_logp_margin:.3f} nats",
        )


class RewardEval(ProgressEvent):
    """Reinforcement: greedy answers of base and adapter to held-out prompts, graded by the
    run's grader; the difference's paired bootstrap interval (95%)."""

    event: Literal["reward_eval"] = "reward_eval"
    step: int
    prompts: int
    reward: float
    base_reward: float
    reward_difference_low: float
    reward_difference_high: float

    def describe(self) -> Description:
        return Description(
            "info",
            f"Reward on {self.prompts} held-out prompts: adapter {self.reward:.3f}, base "
            f"{self.base_reward:.3f} (difference in [{self.reward_difference_low:+.3f}, "
            f"{self.reward_difference_high:+.3f}])",
        )


class GenerationEval(ProgressEvent):
    """Replies of base and adapter to held-out prompts, scored against the references."""

    event: Literal["generation_eval"] = "generation_eval"
    step: int
    examples: int
    scores: dict[str, float]  # exact, contains, base_exact, base_contains

    def describe(self) -> Description:
        labels = (
            ("adapter contains", "contains"),
            ("base contains", "base_contains"),
            ("adapter exact", "exact"),
            ("base exact", "base_exact"),
        )
        found = [f"{label} {self.scores[key]:.0%}" for label, key in labels if key in self.scores]
        return Description(
            "info", f"Generation eval on {self.examples} held-out examples: " + ", ".join(found)
        )


# --- registration, verification, promotion -----------------------------------------------------


class RegistryUnavailable(ProgressEvent):
    event: Literal["registry_unavailable"] = "registry_unavailable"
    retry_in_s: float
    error: str

    def describe(self) -> Description:
        return Description(
            "warn",
            f"MLflow is unreachable; the adapter is kept and its registration is retried in "
            f"{self.retry_in_s:.0f} s",
        )


class Registered(ProgressEvent):
    event: Literal["registered"] = "registered"
    name: str
    version: int

    def describe(self) -> Description:
        return Description("info", f"Registered {self.name} version {self.version}")


class Verified(ProgressEvent):
    """What the engine check found for a version (the `gemlora.verify` tag's main fields)."""

    event: Literal["verified"] = "verified"
    version: int
    passed: bool
    agreement: float
    compared_by: str
    tolerance: float
    max_logprob_gap: float
    prompts: int
    image_prompts: int = 0
    prompts_digest: str = ""
    engine_base: str
    quantization: str = "none"
    dtype: str = ""
    checked_at: datetime
    refused: str | None = None

    def describe(self) -> Description:
        where = f"for version {self.version} on {self.engine_base}"
        if self.refused:
            return Description("error", f"Verification failed {where}: {self.refused}")
        how = {"tokens": "greedy tokens", "tokens+logprobs": "greedy tokens, else log-probs"}.get(
            self.compared_by, "log-probabilities at every position"
        )
        images = f", {self.image_prompts} with images" if self.image_prompts else ""
        verdict = "passed" if self.passed else "failed"
        return Description(
            "info" if self.passed else "error",
            f"Verification {verdict} {where}: {self.prompts} prompts{images}, agreement "
            f"{self.agreement:.0%}, compared by {how}",
        )


class Unverified(ProgressEvent):
    event: Literal["unverified"] = "unverified"
    reason: str

    def describe(self) -> Description:
        return Description("warn", f"The version was not verified: {self.reason}")


class VerificationError(ProgressEvent):
    """The check of a version broke (an exception inside the verifier): recorded on the version
    as `error` with the reason (`recorded` false when even that failed), not as unverified."""

    event: Literal["verification_error"] = "verification_error"
    version: int
    reason: str
    recorded: bool = True

    def describe(self) -> Description:
        where = "recorded on the version" if self.recorded else "could not be recorded"
        return Description(
            "error",
            f"Verification of version {self.version} broke ({where}; not promotable): "
            f"{self.reason}",
        )


class Promotion(ProgressEvent):
    event: Literal["promotion"] = "promotion"
    to: str
    moved: bool

    def describe(self) -> Description:
        moved = "moved to the new version" if self.moved else "stays where it was"
        return Description("info", f"Alias {self.to} {moved} (promote_if)")


class EvalGate(ProgressEvent):
    """The promotion gate's eval: the candidate against what holds the alias (or the base)."""

    event: Literal["eval_gate"] = "eval_gate"
    version: int
    against: str  # the model it was compared with (NAME/VERSION, or the base)
    grader: str
    difference: float | None = None  # on `grader`, with its interval
    low: float | None = None
    high: float | None = None
    passed: bool
    reason: str
    mlflow_run_id: str | None = None

    def describe(self) -> Description:
        decided = "passed" if self.passed else "not passed"
        message = f"Eval gate {decided} for version {self.version} against {self.against}: "
        return Description("info", message + self.reason)


# --- how the run ended ------------------------------------------------------------------------


class Finished(ProgressEvent):
    event: Literal["finished"] = "finished"
    terminal: ClassVar[bool] = True
    run_id: str
    name: str
    version: int | None
    step: int
    eval_scores: dict[str, float] = Field(default_factory=dict)


class Paused(ProgressEvent):
    event: Literal["paused"] = "paused"
    terminal: ClassVar[bool] = True
    step: int

    def describe(self) -> Description:
        return Description("info", f"Training paused at step {self.step} with a checkpoint")


class Cancelled(ProgressEvent):
    event: Literal["cancelled"] = "cancelled"
    terminal: ClassVar[bool] = True
    reason: str

    def describe(self) -> Description:
        return Description("warn", f"Training stopped ({self.reason})")


class Failed(ProgressEvent):
    event: Literal["failed"] = "failed"
    terminal: ClassVar[bool] = True
    error: str  # `ExceptionType: message`

    def describe(self) -> Description:
        return Description("error", f"Training failed: {self.error}")


AnyEvent = Annotated[
    Start
    | TrainBegin
    | Log
    | Eval
    | Checkpoint
    | CheckpointRegistered
    | CheckpointUnregistered
    | TrainEnd
    | BestCheckpoint
    | MarginEval
    | RewardEval
    | GenerationEval
    | RegistryUnavailable
    | Registered
    | Verified
    | Unverified
    | VerificationError
    | Promotion
    | EvalGate
    | Finished
    | Paused
    | Cancelled
    | Failed,
    Field(discriminator="event"),
]
EVENTS = TypeAdapter(AnyEvent)


class Unreadable(ProgressEvent):
    """A line of progress.jsonl that is no known event (a trainer of another gemlora version):
    shown to the job's owner instead of being dropped."""

    event: Literal["unreadable"] = "unreadable"
    line: int
    problem: str

    def describe(self) -> Description:
        return Description("error", f"Progress line {self.line} could not be read: {self.problem}")
