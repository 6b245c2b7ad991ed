"""`gemlora train` as the jobs API runs it, in a subprocess: SIGKILL then `--resume` continues
the same MLflow run to the same step count; SIGTERM stops promptly and registers nothing."""

from __future__ import annotations

import json
import signal
import time

import pytest
from mlflow import MlflowClient
from train_helpers import events, log_tail, start_train, wait_for, write_config

from gemlora.adapters import AdapterNotFoundError, AdapterRegistry, RegistryConfig
from gemlora.train.cli import EXIT_CANCELLED

MAX_STEPS = 12


def checkpoint_step(run_dir) -> int | None:
    """The step of the first complete checkpoint, once the Trainer has written one."""
    done = sorted(run_dir.glob("checkpoints/checkpoint-*/trainer_state.json"))
    return int(done[0].parent.name.split("-")[1]) if done else None


def test_resume_after_kill_continues_the_same_run(tiny_config, mlflow_server, tmp_path):
    config = tiny_config(
        training={"max_steps": MAX_STEPS, "save_steps": 2, "save_total_limit": 10},
        eval={"generation_examples": 0},
    )
    path = write_config(config, tmp_path / "config.yaml")
    run_dir, log = config.output.dir, tmp_path / "train.log"

    first = start_train(path, log)
    killed_at = wait_for(lambda: checkpoint_step(run_dir), first, log)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert MlflowClient(mlflow_server.url).get_run(run_id).info.status == "RUNNING"
    assert not any(e.event == "finished" for e in events(run_dir))

    resumed = start_train(path, log, "--resume")
    assert resumed.wait(timeout=300) == 0, log_tail(log)

    log_events = events(run_dir)
    begins = [e for e in log_events if e.event == "train_begin"]
    assert [e.step for e in begins] == [0, begins[-1].step]
    assert killed_at <= begins[-1].step < MAX_STEPS  # from a checkpoint, not from scratch
    finished = log_events[-1]
    assert finished.event == "finished"
    assert finished.step == MAX_STEPS  # the step count of an uninterrupted run
    assert finished.run_id == run_id
    last_checkpoint = run_dir / "checkpoints" / f"checkpoint-{MAX_STEPS}"
    state = json.loads((last_checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS

    client = MlflowClient(mlflow_server.url)
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run_id, "loss")}
    assert steps == set(range(1, MAX_STEPS + 1))
    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url, cache_dir=tmp_path))
    (version,) = registry.show(config.output.name).versions
    assert version.run_id == run_id

    # A finished run is not resumed again.
    again = start_train(path, log, "--resume")
    assert again.wait(timeout=120) == 1
    assert "already finished" in log_tail(log, 5)


def test_sigterm_stops_promptly_and_registers_nothing(tiny_config, mlflow_server, tmp_path):
    config = tiny_config(training={"max_steps": 500, "save_steps": 100})
    path = write_config(config, tmp_path / "config.yaml")
    run_dir, log = config.output.dir, tmp_path / "train.log"

    process = start_train(path, log)
    wait_for(lambda: any(e.event == "log" for e in events(run_dir)), process, log)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert process.wait(timeout=60) == EXIT_CANCELLED, log_tail(log)
    assert time.monotonic() - started < 15

    last = events(run_dir)[-1]
    assert last.event == "cancelled" and "SIGTERM" in last.reason
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert MlflowClient(mlflow_server.url).get_run(run_id).info.status == "KILLED"
    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url, cache_dir=tmp_path))
    with pytest.raises(AdapterNotFoundError):
        registry.show(config.output.name)
    assert "nothing was registered" in log_tail(log, 5)


def test_a_new_run_refuses_a_directory_that_holds_one(tiny_config):
    from gemlora.train import RunDirError, run_training

    config = tiny_config()
    config.output.dir.mkdir(parents=True)
    (config.output.dir / "run.json").write_text('{"run_id": "0123"}')
    with pytest.raises(RunDirError, match="pass --resume"):
        run_training(config)


def test_resume_refuses_a_changed_config(tiny_config):
    from gemlora.train import RunDirError, run_training
    from gemlora.train.run import new_run_dir

    new_run_dir(tiny_config())
    with pytest.raises(RunDirError, match=r"changed: training\.lr"):
        run_training(tiny_config(training={"lr": 0.5}), resume=True)
