"""`run_training`: one fine-tune, end to end.

    config -> data (validated with the base's processor) -> MLflow run
      -> base (quantized as configured) + LoRA (new, or `base.init_adapter`)
      -> the method's trainer (supervised: TRL SFTTrainer; dpo: TRL DPOTrainer;
         reinforcement: TRL GRPOTrainer against a grader), checkpoints every N steps
      -> held-out scores (eval loss; DPO: rewards, log-prob margins; reinforcement: graded
         rewards), generation eval (base vs adapter) -> adapter registered in the MLflow registry

The training method (`gemlora.train.methods`) is the one place where supervised, DPO and
reinforcement runs part.

Everything a run writes goes to its run directory:

    run.json          status, MLflow run id and resolved config: what `--resume` continues
    progress.jsonl    typed events for programs (`gemlora.run_events`)
    config.yaml       the resolved config (also an MLflow artifact)
    data-report.json  the data validation report (also an MLflow artifact)
    checkpoints/      Trainer checkpoints
    adapter/          the trained PEFT adapter, as registered

SIGTERM (or Ctrl-C) stops the run within a training step, marks the MLflow run KILLED and
registers nothing; registration is the last step and rolls itself back if interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from gemlora.bases import BaseSpec, resolve_base
from gemlora.paths import gemlora_home
from gemlora.run_events import (
    BestCheckpoint,
    Cancelled,
    Failed,
    Finished,
    GenerationEval,
    Paused,
    ProgressEvent,
    Promotion,
    Registered,
    RegistryUnavailable,
    Start,
    VerificationError,
)
from gemlora.rundir import (
    ADAPTER_DIR,
    RUN_FILE,
    ProgressLog,
    last_checkpoint,
    last_checkpoint_step,
    read_state,
    update_state,
)
from gemlora.signals import listen_for_pause
from gemlora.train.config import ConfigError, TrainConfig, parse_config
from gemlora.train.dataset import TrainingData, load_training_data
from gemlora.train.methods import TrainingMethod, training_method
from gemlora.train.pause import (
    PauseOnRequest,
    TrainingPaused,
    forget_pause_request,
    pause_if_requested,
)

if TYPE_CHECKING:
    from gemlora.adapters.verification_record import Verification
    from gemlora.train.init_adapter import InitAdapter


class TrainingCancelled(BaseException):
    """SIGTERM asked the run to stop. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way swallows it."""


class RunDirError(RuntimeError):
    """A run directory that cannot be used for what was asked (new run, or `--resume`)."""


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    adapter_dir: Path
    name: str
    version: int | None  # None when `output.register_adapter` is false
    global_step: int
    eval_scores: dict[str, float] = field(default_factory=dict)
    promoted: bool | None = None  # whether `promote_if` moved its alias; None: not configured
    verification: Verification | None = None  # None: no engine was reachable to verify it
    best_step: int | None = None  # early stopping: the step whose checkpoint was registered


def run_training(config: TrainConfig, *, resume: bool = False) -> TrainResult | None:
    """Train, evaluate and register one adapter. With `resume`, continue the newest run of
    `config` (or the run in `output.dir`) from its last checkpoint, in the same MLflow run.

    Under `accelerate launch` or `torchrun` every process calls this; the main one returns the
    result, the others (which only train and evaluate their share) return None."""
    if threading.current_thread() is threading.main_thread():
        listen_for_pause()  # from the start: a pause while data and model load is kept
    if not is_main_process():
        _follow(config, resume)
        return None
    run_dir = resume_dir(config) if resume else new_run_dir(config)
    progress = ProgressLog.of(run_dir)
    with sigterm_cancels() as finish:
        try:
            result = _run(config, run_dir, resume, progress, finish)
        except TrainingPaused as paused:
            # SCHEDULED: the MLflow run is to continue; `--resume` reopens it.
            forget_pause_request(run_dir)
            _end(run_dir, progress, Paused(step=paused.step), "SCHEDULED")
            raise
        except (TrainingCancelled, KeyboardInterrupt) as stop:
            _end(run_dir, progress, Cancelled(reason=str(stop) or "interrupted"), "KILLED")
            raise
        except BaseException as error:
            _end(run_dir, progress, Failed(error=f"{type(error).__name__}: {error}"), "FAILED")
            raise
        finished = Finished(
            run_id=result.run_id,
            name=result.name,
            version=result.version,
            step=result.global_step,
            eval_scores=result.eval_scores,
        )
        _end(run_dir, progress, finished, "FINISHED", version=result.version)
    return result


def _run(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    progress: ProgressLog,
    finish: Callable[[], None],
) -> TrainResult:
    from gemlora.train.tracking import check_reachable

    spec = resolve_base(config.base.model)
    tracking_uri = config.output.resolved_tracking_uri()
    check_reachable(tracking_uri)
    data = load_training_data(
        config.data, config.base.model, config.method, config.reinforcement.max_completion_tokens
    )
    _check_promotion_possible(config, data)
    init = _init_adapter(config, run_dir, spec, tracking_uri)

    run_id = _start_mlflow_run(config, run_dir, data, spec, resume, init)
    progress.write(Start(run_id=run_id, run_dir=str(run_dir), resumed=resume))
    pause_if_requested(run_dir, _start_step(run_dir, resume))
    method = training_method(config.method)
    loaded = _load(config, spec)
    trainer = method.build_trainer(config, loaded, data, run_dir, progress, init)
    pause_if_requested(run_dir, _start_step(run_dir, resume))
    if config.output.register_adapter and config.output.register_checkpoints:
        metadata = functools.partial(adapter_metadata, config, loaded, data, init, run_dir)
        _register_checkpoints(config, trainer, tracking_uri, run_id, metadata, progress)
    _train_unless_paused(trainer, run_dir, resume)
    best_step = _note_best_checkpoint(config, trainer, progress)

    adapter_dir = run_dir / ADAPTER_DIR
    # The trained adapter only: not the tokenizer (unchanged), nor DPO's frozen reference copy
    # of `init_adapter` (TRL's adapter "ref").
    trainer.model.save_pretrained(adapter_dir, selected_adapters=["default"])
    scores = _evaluate(config, method, trainer, loaded, data, progress)

    result = TrainResult(
        run_id=run_id,
        run_dir=run_dir,
        adapter_dir=adapter_dir,
        name=config.output.name,
        version=None,
        global_step=trainer.state.global_step,
        eval_scores=scores,
        best_step=best_step,
    )
    if config.output.register_adapter:
        registry = _registry(tracking_uri)
        result.version = register_with_retry(
            lambda: _register(config, registry, loaded, data, result, init),
            config.output.register_retry_s,
            progress,
            adapter_dir,
        )
        finish()  # registered: from here on the run completes, SIGTERM or not
        progress.write(Registered(name=result.name, version=result.version))
        result.verification = _verify(config, registry, result.version, data, progress)
        result.promoted = _promote(config, registry, result.version, data, progress)
        if result.promoted is not None:
            progress.write(Promotion(to=config.output.promote_if.to, moved=result.promoted))
    return result


# --- several processes (accelerate launch, torchrun) ------------------------------------------


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """The process that owns the run directory, the MLflow run and the registration: rank 0
    (the launchers set RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def _follow(config: TrainConfig, resume: bool) -> None:
    """Another process of a multi-process run: it trains its share of every batch and takes
    its part in the eval loss. The main process writes everything else."""
    run_dir = resume_dir(config) if resume else _shared_run_dir(config)
    spec = resolve_base(config.base.model)
    data = load_training_data(
        config.data, config.base.model, config.method, config.reinforcement.max_completion_tokens
    )
    init = _init_adapter(config, run_dir, spec, config.output.resolved_tracking_uri())
    method = training_method(config.method)
    trainer = method.build_trainer(config, _load(config, spec), data, run_dir, None, init)
    _train_unless_paused(trainer, run_dir, resume)
    if data.eval:
        trainer.evaluate()


def _train_unless_paused(trainer, run_dir: Path, resume: bool) -> None:
    """Train from the newest complete checkpoint when resuming, else from the start; raises
    `TrainingPaused` when a pause stopped it (every process at the same step)."""
    pause = PauseOnRequest(run_dir)
    trainer.add_callback(pause)
    checkpoint = last_checkpoint(run_dir) if resume else None
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if pause.paused(trainer.state):
        raise TrainingPaused(trainer.state.global_step)


def _start_step(run_dir: Path, resume: bool) -> int:
    """The step training starts from: its checkpoint's when resuming, else 0."""
    return last_checkpoint_step(run_dir) if resume else 0


def _register_checkpoints(config, trainer, tracking_uri, run_id, metadata, progress) -> None:
    from gemlora.train.checkpoints import CheckpointRegistrar

    registry = _registry(tracking_uri)
    name = config.output.name
    trainer.add_callback(CheckpointRegistrar(registry, name, run_id, metadata, progress))


def _note_best_checkpoint(config: TrainConfig, trainer, progress: ProgressLog) -> int | None:
    """With early stopping the Trainer has loaded the best checkpoint (by eval loss): say which
    step it was, in the progress log and on the MLflow run."""
    if config.training.early_stopping_patience is None:
        return None
    import mlflow

    state = trainer.state
    stopped = state.global_step < state.max_steps
    best = BestCheckpoint(
        step=state.best_global_step,
        eval_loss=state.best_metric,
        stopped_at=state.global_step,
        stopped_early=stopped,
    )
    progress.write(best)
    mlflow.set_tag("gemlora.best_step", str(state.best_global_step))
    return state.best_global_step


def _shared_run_dir(config: TrainConfig) -> Path:
    if config.output.dir is None:
        raise ConfigError(
            [
                f"output.dir: required when training with several processes ({world_size()}): "
                "they all write one run directory; set it, e.g. --set output.dir=runs/my-run"
            ]
        )
    return config.output.dir


# --- the run directory ------------------------------------------------------------------------


def new_run_dir(config: TrainConfig) -> Path:
    """`output.dir`, which must not hold a run that reached MLflow, or a fresh timestamped
    directory under $GEMLORA_HOME/runs/<name>/."""
    if config.output.dir is not None or world_size() > 1:
        run_dir = _shared_run_dir(config)
        state = read_state(run_dir)
        if state is not None and state.run_id:
            raise RunDirError(
                f"{run_dir} already holds a run: pass --resume to continue it, or choose "
                "another output.dir"
            )
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        run_dir = _runs_of(config) / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    update_state(run_dir, config=config.model_dump(mode="json"), status="created")
    return run_dir


def resume_dir(config: TrainConfig) -> Path:
    """The run `--resume` continues: `output.dir`, else the newest run of `output.name`. Its
    config must be the one given now."""
    if config.output.dir is not None:
        run_dir = config.output.dir
    else:
        runs = sorted(p.parent for p in _runs_of(config).glob(f"*/{RUN_FILE}"))
        if not runs:
            raise RunDirError(f"no run of {config.output.name} to resume in {_runs_of(config)}")
        run_dir = runs[-1]
    state = read_state(run_dir)
    if state is None:
        raise RunDirError(f"no run to resume in {run_dir} (no {RUN_FILE})")
    if state.status == "finished":
        raise RunDirError(
            f"the run in {run_dir} already finished (version {state.version}): start a "
            "new run instead of --resume"
        )
    if state.config is None:
        raise RunDirError(f"{run_dir / RUN_FILE} has no config to resume with")
    changed = _changed_fields(parse_config(state.config), config)
    if changed:
        raise RunDirError(
            f"cannot resume the run in {run_dir} with a different config (changed: "
            f"{', '.join(changed)}): resume with the same config, or start a new run"
        )
    return run_dir


def _runs_of(config: TrainConfig) -> Path:
    return gemlora_home() / "runs" / config.output.name


def _changed_fields(before: TrainConfig, now: TrainConfig) -> list[str]:
    old, new = before.flat(), now.flat()
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


# --- stopping ---------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_cancels() -> Iterator[Callable[[], None]]:
    """Inside the block SIGTERM raises `TrainingCancelled` in the main thread (training stops
    within the current step). Yields `finish`: once called, SIGTERM is ignored until the block
    ends, because the adapter is registered and the run only has to be closed."""

    def cancel(signum, _frame):
        raise TrainingCancelled(f"stopped by {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None  # signal handlers can only be installed in the main thread
        return
    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _end(
    run_dir: Path, progress: ProgressLog, event: ProgressEvent, mlflow_status: str, **state
) -> None:
    """Close the MLflow run, if one was started, with `mlflow_status`; record how the run ended
    in run.json and as its last progress event."""
    mlflow = sys.modules.get("mlflow")  # not imported: no run was started
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run(mlflow_status)
    update_state(run_dir, status=event.event, **state)
    progress.write(event)


# --- MLflow -----------------------------------------------------------------------------------


def _start_mlflow_run(
    config: TrainConfig,
    run_dir: Path,
    data: TrainingData,
    spec: BaseSpec,
    resume: bool,
    init: InitAdapter | None,
) -> str:
    """Start the run (or reopen the one `run.json` names) with system metrics on; a new run
    gets its tags, params, dataset inputs and the config and data report as artifacts."""
    from gemlora.adapters.mlflow_client import quiet_mlflow_env

    quiet_mlflow_env()
    import mlflow

    from gemlora.train.dataset import write_report
    from gemlora.train.tracking import parent_tags, run_tags

    mlflow.set_tracking_uri(config.output.resolved_tracking_uri())
    mlflow.set_system_metrics_sampling_interval(config.output.system_metrics_interval_s)
    mlflow.set_system_metrics_samples_before_logging(1)
    state = read_state(run_dir)
    if resume and state is not None and state.run_id:
        run = mlflow.start_run(run_id=state.run_id, log_system_metrics=True)
        update_state(run_dir, status="running")
        return run.info.run_id

    mlflow.set_experiment(config.output.experiment)
    revision = config.base.revision or spec.revision
    tags = run_tags(spec.name, revision, config.base.quantization, config.method)
    if init is not None:
        tags |= parent_tags(init.parent, init.run_id)
    tags |= config.output.tags
    run = mlflow.start_run(run_name=config.output.run_name, tags=tags, log_system_metrics=True)
    update_state(run_dir, run_id=run.info.run_id, status="running")

    mlflow.log_params(config.flat() | _resolved_params(config, data, spec, init))
    _log_datasets(config, data)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    write_report(data, run_dir / "data-report.json")
    mlflow.log_artifact(str(run_dir / "config.yaml"))
    mlflow.log_artifact(str(run_dir / "data-report.json"))
    return run.info.run_id


def _log_datasets(config: TrainConfig, data: TrainingData) -> None:
    import mlflow

    from gemlora.train.dataset import mlflow_dataset

    train_file, eval_file = config.data.train_file, config.data.eval_file
    mlflow.log_input(mlflow_dataset(data.train, train_file, _dataset_name(train_file)), "training")
    if not data.eval:
        return
    if eval_file is None:  # held out from the train file
        eval_file, name = train_file, f"{_dataset_name(train_file)}-heldout"
    else:
        name = _dataset_name(eval_file)
    mlflow.log_input(mlflow_dataset(data.eval, eval_file, name), "evaluation")


def _dataset_name(path: Path) -> str:
    """`style-chat/train` for data/samples/style-chat/train.jsonl."""
    return f"{path.parent.name}/{path.stem}"


def _resolved_params(
    config: TrainConfig, data: TrainingData, spec: BaseSpec, init: InitAdapter | None
) -> dict[str, str]:
    from gemlora.train.model import resolve_dtype, target_modules

    params = {
        "resolved.base_location": spec.location,
        "resolved.compute_dtype": resolve_dtype(config.base.compute_dtype),
        "resolved.target_modules": str(target_modules(config.lora, spec.multimodal)),
        "resolved.train_examples": str(len(data.train)),
        "resolved.eval_examples": str(len(data.eval)),
        "resolved.dataset_digest": data.digest,
    }
    if init is not None:  # its LoRA settings are trained, not the `lora` section's
        params |= {
            "resolved.init_adapter": init.parent,
            "resolved.target_modules": str(init.target_modules()),
            "resolved.lora_r": str(init.lora.get("r")),
            "resolved.lora_alpha": str(init.lora.get("lora_alpha")),
        }
    return params


# --- training ---------------------------------------------------------------------------------


def _load(config: TrainConfig, spec: BaseSpec):
    from gemlora.train.model import load_base

    return load_base(config.base, spec)


def _init_adapter(
    config: TrainConfig, run_dir: Path, spec: BaseSpec, tracking_uri: str
) -> InitAdapter | None:
    """`base.init_adapter`, resolved and checked against the base. A resumed run continues from
    the version it started from, wherever the alias points now (run.json records it)."""
    if config.base.init_adapter is None:
        return None
    from gemlora.train.init_adapter import resolve_init_adapter

    state = read_state(run_dir)
    ref = (state.init_adapter if state else None) or config.base.init_adapter
    init = resolve_init_adapter(ref, spec, tracking_uri)
    if is_main_process():
        update_state(run_dir, init_adapter=init.parent)
    return init


# --- evaluation -------------------------------------------------------------------------------


def _evaluate(
    config: TrainConfig,
    method: TrainingMethod,
    trainer,
    loaded,
    data: TrainingData,
    progress: ProgressLog,
) -> dict[str, float]:
    """The method's held-out scores (eval loss; DPO: rewards, log-prob margins), then the
    generation eval, logged side by side; returns the scores that become the adapter's eval
    tags."""
    import mlflow
    from tqdm.auto import tqdm

    from gemlora.train.dataset import reply_examples, to_hf_dataset
    from gemlora.train.evaluate import generation_eval

    scores: dict[str, float] = {}
    if not data.eval:
        return scores
    scores |= method.held_out_scores(config, trainer, loaded, data, progress)
    count = min(len(data.eval), config.eval.generation_examples) if method.generation_eval else 0
    if not count:
        return scores
    rows = list(to_hf_dataset(reply_examples(data.eval[:count]), loaded.multimodal))
    with tqdm(total=count, desc="generation eval") as bar:
        report = generation_eval(
            trainer.model,
            loaded.processor,
            rows,
            config.eval.max_new_tokens,
            on_example=lambda done: bar.update(1),
        )
    generation = report.scores()
    step = trainer.state.global_step
    mlflow.log_metrics({_metric_name(k): v for k, v in generation.items()}, step=step)
    mlflow.log_table(report.table(), artifact_file="eval/generations.json")
    progress.write(GenerationEval(step=step, examples=count, scores=generation))
    return scores | generation


def _metric_name(score: str) -> str:
    """`base_contains` -> `eval_base_contains`, `contains` -> `eval_adapter_contains`."""
    return f"eval_{score}" if score.startswith("base_") else f"eval_adapter_{score}"


def _check_promotion_possible(config: TrainConfig, data: TrainingData) -> None:
    rule = config.output.promote_if
    if rule is None or not config.output.register_adapter:
        return
    # eval_loss and DPO's rewards come with any held-out data; the others need a pass of their own
    if rule.gate is not None:
        setting, count = None, 1  # the gate's eval answers the held-out prompts itself
    elif rule.metric in ("exact", "contains", "base_exact", "base_contains"):
        setting, count = "eval.generation_examples", config.eval.generation_examples
    elif rule.metric == "logp_margin":
        setting, count = "eval.margin_pairs", config.eval.margin_pairs
    elif rule.metric in ("reward", "base_reward"):
        setting, count = "reinforcement.eval_prompts", config.reinforcement.eval_prompts
    else:
        setting, count = None, 1
    if not data.eval or not count:
        needs = "set data.eval_file or data.eval_fraction"
        needs += f", and {setting} above 0" if setting else ""
        raise ConfigError(
            [f"output.promote_if.metric: {rule.metric!r} is never measured here: {needs}"]
        )


# --- registration -----------------------------------------------------------------------------


def _registry(tracking_uri: str):
    from gemlora.adapters import AdapterRegistry, RegistryConfig

    return AdapterRegistry(RegistryConfig(tracking_uri=tracking_uri))


def _register(
    config: TrainConfig,
    registry,
    loaded,
    data: TrainingData,
    result: TrainResult,
    init: InitAdapter | None,
) -> int:
    """Register the adapter as a new version linked to the run and point the alias at it; its
    tags say how it was trained (`gemlora.method`) and from which version (`gemlora.parent`)."""
    import mlflow

    metadata = adapter_metadata(config, loaded, data, init, result.run_dir, result.eval_scores)
    version = registry.register(
        result.adapter_dir,
        config.output.name,
        metadata,
        run_id=result.run_id,
        alias=config.output.alias,
    )
    mlflow.set_tag("gemlora.registered", f"{config.output.name}/{version}")
    return version


def adapter_metadata(
    config: TrainConfig,
    loaded,
    data: TrainingData,
    init: InitAdapter | None,
    run_dir: Path,
    eval_scores: dict[str, float] | None = None,
    checkpoint_step: int | None = None,
):
    """How this run's adapter (or one of its checkpoints) was made, for its registry tags."""
    from gemlora.adapters import AdapterMetadata
    from gemlora.train.bases import chat_template_hash

    quantization = config.base.quantization
    extra = {"training_quantization": quantization, "run_dir": str(run_dir)}
    if init is not None and init.version_ref is None:
        extra["init_adapter"] = str(init.path)  # a directory: no version to name as the parent
    return AdapterMetadata(
        base=config.base.model,
        # bitsandbytes is ours to record; otherwise the registry takes the base's own.
        base_quantization=quantization if quantization.startswith("bnb") else None,
        base_revision=config.base.revision,
        chat_template_hash=chat_template_hash(loaded.processor.chat_template),
        dataset_digest=data.digest,
        method=config.method,
        parent=init.version_ref if init is not None else None,
        checkpoint_step=checkpoint_step,
        eval_scores=eval_scores or {},
        extra=extra,
    )


def register_with_retry(
    register: Callable[[], int], window_s: float, progress: ProgressLog, adapter_dir: Path
) -> int:
    """`register()`, retried with backoff while MLflow is unreachable, for up to `window_s`:
    the adapter took the whole run to train, and an outage is usually shorter than that."""
    from gemlora.adapters import RegistryUnavailableError

    deadline, delay = time.monotonic() + window_s, 2.0
    while True:
        try:
            return register()
        except RegistryUnavailableError as error:
            if time.monotonic() + delay > deadline:
                raise RegistryUnavailableError(
                    f"{error} Gave up registering after {window_s:.0f} s "
                    f"(output.register_retry_s); the trained adapter is kept in {adapter_dir}."
                ) from None
            progress.write(RegistryUnavailable(retry_in_s=delay, error=str(error)))
            time.sleep(delay)
            delay = min(2 * delay, 30.0)


def _verify(
    config: TrainConfig, registry, version: int, data: TrainingData, progress: ProgressLog
) -> Verification | None:
    """Verify the version on a running engine (the adapter is registered either way). No engine
    of the base reachable: it stays unverified. Any exception inside the check is recorded on
    the version as `error` with its reason, never taken for unverified: the default promotion
    rule (`passed`) refuses both, and `not_failed` still refuses the error."""
    from gemlora.adapters.fidelity_check import record_error
    from gemlora.train.verify_versions import verify_registered

    try:
        return verify_registered(config, registry, version, data, progress)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        recorded = record_error(registry, config.output.name, version, reason)
        progress.write(VerificationError(version=version, reason=reason, recorded=recorded))
        return None


def _promote(
    config: TrainConfig, registry, version: int, data, progress: ProgressLog
) -> bool | None:
    """Apply `promote_if`: True when its alias moved to `version`; None when not configured."""
    rule = config.output.promote_if
    if rule is None:
        return None
    if rule.gate is not None:
        from gemlora.train.eval_gate import run_gate

        return run_gate(config, registry, version, data.eval, progress).passed
    return registry.promote_if_better(
        config.output.name,
        version,
        rule.metric,
        higher_is_better=rule.higher_is_better,
        to=rule.to,
        verification=rule.verification,
    )
