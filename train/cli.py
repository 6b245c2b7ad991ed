"""`gemlora train CONFIG.yaml [--set KEY=VALUE]... [--resume | --check]` and `gemlora ui`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from gemlora.adapters.registry import DEFAULT_TRACKING_URI

# 128 + SIGTERM, what a shell reports for a process SIGTERM ended.
EXIT_CANCELLED = 143
EXIT_PAUSED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; --resume continues


def train_command(
    config_path: Annotated[
        Path, typer.Argument(metavar="CONFIG.yaml", help="A training config (configs/train/).")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a config field, e.g. --set training.lr=1e-4 (repeatable).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the newest run of this config (or the one in output.dir) from its "
            "last checkpoint, in the same MLflow run.",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Validate the config and print it as JSON with every default filled in "
            '({"config": ...}, or {"problems": [...]} and exit 2); train nothing.',
        ),
    ] = False,
) -> None:
    """Fine-tune a LoRA adapter, track it in MLflow and register it.

    The config names the base, LoRA settings, data, training, eval and output; see
    configs/train/. Progress goes to the terminal and to progress.jsonl in the run directory.
    SIGTERM or Ctrl-C stops the run (exit 143) and registers nothing.
    """
    from gemlora.data import DatasetError
    from gemlora.train.config import ConfigError, load_config

    try:
        config = load_config(config_path, overrides or [])
    except ConfigError as error:
        if check:
            typer.echo(json.dumps({"problems": error.problems}))
        _fail(str(error), code=2)
    if check:
        typer.echo(json.dumps({"config": config.model_dump(mode="json")}))
        return
    from gemlora.adapters import AdapterError
    from gemlora.train.pause import TrainingPaused
    from gemlora.train.run import RunDirError, TrainingCancelled, run_training

    try:
        result = run_training(config, resume=resume)
    except ConfigError as error:
        _fail(str(error), code=2)
    except TrainingPaused as paused:
        typer.echo(f"training {paused}; continue it with --resume", err=True)
        raise typer.Exit(EXIT_PAUSED) from None
    except (TrainingCancelled, KeyboardInterrupt) as stop:
        reason = stop or "interrupted"
        typer.echo(f"training cancelled ({reason}); nothing was registered", err=True)
        raise typer.Exit(EXIT_CANCELLED) from None
    except DatasetError as error:
        problems = "\n".join(f"  {problem}" for problem in error.problems)
        _fail(f"the dataset has errors (check it with `gemlora data validate`):\n{problems}")
    except (RunDirError, AdapterError, ConnectionError, LookupError) as error:
        _fail(str(error))
    if result is None:
        return  # not the main process of a multi-process run: it reports for all
    typer.echo(f"run {result.run_id} finished at step {result.global_step}: {result.run_dir}")
    for metric, value in sorted(result.eval_scores.items()):
        typer.echo(f"  {metric}: {value:.4g}")
    if result.version is not None:
        alias = f" (@{config.output.alias})" if config.output.alias else ""
        typer.echo(f"registered {result.name}/{result.version}{alias}")
        verification = result.verification
        if verification is None:
            typer.echo(
                "  not verified: no engine of this base at output.verify.engine_url, or the "
                "check broke (recorded as `error`; see progress.jsonl)"
            )
        else:
            typer.echo(
                f"  verification {verification.state} on {verification.engine_base} "
                f"({verification.compared_by}, agreement {verification.agreement:.0%})"
            )
        if result.promoted is not None and config.output.promote_if is not None:
            moved = "moved to" if result.promoted else "stays off"
            typer.echo(f"  {config.output.promote_if.to} {moved} version {result.version}")


def ui_command(
    port: Annotated[int, typer.Option(help="Loopback port to listen on.")] = 5000,
) -> None:
    """Start the local MLflow server and keep it up until Ctrl-C.

    Runs and the adapter registry go to SQLite, artifacts to files, all under
    $GEMLORA_HOME/mlflow. `gemlora train` logs to it by default.
    """
    from gemlora.adapters import start_mlflow_server
    from gemlora.paths import gemlora_home
    from gemlora.signals import sigterm_as_ctrl_c

    home = gemlora_home()
    try:
        server = start_mlflow_server(home, port=port)
    except (RuntimeError, TimeoutError) as error:
        _fail(f"the MLflow server did not start (is port {port} taken? try --port): {error}")
    if server.url != DEFAULT_TRACKING_URI:
        hint = f"; export MLFLOW_TRACKING_URI={server.url} so that gemlora uses it"
    else:
        hint = ""
    typer.echo(f"MLflow UI: {server.url} (data in {home / 'mlflow'}){hint}")
    typer.echo("Press Ctrl-C to stop.")
    sigterm_as_ctrl_c()
    try:
        while server.process.poll() is None:
            time.sleep(1)
        code = server.process.returncode
        _fail(f"the MLflow server exited with code {code}; log {server.log_path}")
    except KeyboardInterrupt:
        typer.echo("stopping MLflow")
    finally:
        server.stop()


def _fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
