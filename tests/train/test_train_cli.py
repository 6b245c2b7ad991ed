"""`gemlora ui` serves MLflow until Ctrl-C; `gemlora train` explains what is wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
from train_helpers import free_port, write_config, write_jsonl_lines
from typer.testing import CliRunner

from gemlora.cli import app


def test_ui_serves_mlflow_with_sqlite_under_gemlora_home_until_ctrl_c(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gemlora.cli", "ui", "--port", str(port)],
        env=os.environ | {"GEMLORA_HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # as from a terminal: a suite run in the background (`make test &`) ignores SIGINT,
        # and its children would inherit that and never see the Ctrl-C below
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first_line = process.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        assert first_line.startswith(f"MLflow UI: {url}"), first_line
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert (tmp_path / "mlflow" / "mlflow.db").is_file()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    # The server is gone with it.
    try:
        httpx.get(f"{url}/health", timeout=2)
        raise AssertionError("the MLflow server outlived `gemlora ui`")
    except httpx.HTTPError:
        pass


def test_train_names_the_bad_dataset_line(tiny_config, shapes, tmp_path):
    train_file, _ = shapes
    lines = train_file.read_text().splitlines()
    broken = train_file.with_name("broken-for-cli.jsonl")  # next to the images it refers to
    write_jsonl_lines(broken, [lines[0], "not json", lines[2]])
    path = write_config(tiny_config(data={"train_file": str(broken)}), tmp_path / "config.yaml")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 1, result.output
    assert "the dataset has errors" in result.output
    assert f"{broken}:2" in result.output


def test_train_explains_an_unreachable_tracking_server(tiny_config, tmp_path):
    config = tiny_config(output={"tracking_uri": f"http://127.0.0.1:{free_port()}"})
    result = CliRunner().invoke(app, ["train", str(write_config(config, tmp_path / "c.yaml"))])
    assert result.exit_code == 1
    assert "no MLflow server answers" in result.output
    assert "gemlora ui" in result.output


def test_check_prints_the_config_with_defaults_and_trains_nothing(tiny_config, tmp_path):
    config = tiny_config()
    path = write_config(config, tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["train", str(path), "--check", "--set", "lora.r=2"])
    assert result.exit_code == 0, result.output
    checked = json.loads(result.output)["config"]
    assert checked["lora"]["r"] == 2
    assert checked["training"]["lr_scheduler"] == "linear"  # a default filled in
    assert not config.output.dir.exists()  # no run directory, no MLflow run

    bad = CliRunner().invoke(app, ["train", str(path), "--check", "--set", "training.lr=0"])
    assert bad.exit_code == 2
    assert json.loads(bad.stdout.splitlines()[0]) == {
        "problems": ["training.lr: Input should be greater than 0"]
    }
