"""`gemlora train` under a multi-process launcher (torchrun, as `accelerate launch` runs it):
two data-parallel CPU processes (gloo) train one adapter; only the main process writes the run
directory, logs to MLflow and registers, so there is one run and one version. On GPUs the same
command runs DDP, FSDP or DeepSpeed (configs/accelerate/); here there are none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
from train_helpers import free_port, write_config

from gemlora.adapters import AdapterRegistry, RegistryConfig


def test_two_processes_train_one_run_and_register_one_version(tiny_config, tmp_path):
    config = tiny_config(training={"max_steps": 2, "save_steps": 2, "batch_size": 1})
    path = write_config(config, tmp_path / "config.yaml")
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        "-m",
        "gemlora.cli",
        "train",
        str(path),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # One report, from the main process.
    assert result.stdout.count("finished at step 2") == 1, result.stdout
    registry = AdapterRegistry(RegistryConfig(tracking_uri=config.output.tracking_uri))
    assert [v.version for v in registry.show(config.output.name).versions] == [1]
    mlflow.set_tracking_uri(config.output.tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[config.output.experiment],
        filter_string=f"tags.`gemlora.registered` = '{config.output.name}/1'",
        output_format="list",
    )
    assert len(runs) == 1
    assert runs[0].data.metrics["train_loss"] > 0
    assert (config.output.dir / "adapter" / "adapter_config.json").is_file()


def test_several_processes_need_one_run_directory(tiny_config, tmp_path):
    config = tiny_config(output={"dir": None})
    path = write_config(config, tmp_path / "config.yaml")
    env = os.environ | {"WORLD_SIZE": "2", "RANK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "gemlora.cli", "train", str(path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert "output.dir: required when training with several processes" in result.stderr
