"""Early stopping on the eval loss: a tiny run whose eval loss stops improving ends before its
last step, and the adapter registered is the best evaluated checkpoint's, not the last step's."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from gemlora.config import ConfigError
from gemlora.rundir import ProgressLog
from gemlora.train import run_training

MAX_STEPS = 16


def test_early_stopping_registers_the_best_checkpoint(tiny_config, mlflow_server):
    # A learning rate far too high for the tiny model: the eval loss soon stops improving.
    config = tiny_config(
        training={
            "max_steps": MAX_STEPS, "lr": 0.3, "batch_size": 4, "eval_steps": 1,
            "save_steps": 1, "early_stopping_patience": 2,
        },
        eval={"generation_examples": 0},
    )  # fmt: skip

    result = run_training(config)

    records = ProgressLog.of(result.run_dir).read()
    losses = {r.step: r.loss for r in records if r.event == "eval" and r.step}
    (best,) = [r for r in records if r.event == "best_checkpoint"]
    assert result.global_step < MAX_STEPS and best.stopped_early, losses
    assert result.best_step == best.step == min(losses, key=losses.get), losses
    assert result.global_step - result.best_step == 2  # two evaluations without improvement
    registered = load_file(result.adapter_dir / "adapter_model.safetensors")
    checkpoint = result.run_dir / "checkpoints" / f"checkpoint-{result.best_step}"
    kept = load_file(checkpoint / "adapter_model.safetensors")
    assert registered.keys() == kept.keys()
    assert all(registered[key].equal(kept[key]) for key in kept)

    from mlflow import MlflowClient

    run = MlflowClient(mlflow_server.url).get_run(result.run_id)
    assert run.data.tags["gemlora.best_step"] == str(result.best_step)


@pytest.mark.parametrize(
    ("training", "field"),
    [
        ({"early_stopping_patience": 2}, "training.eval_steps"),
        ({"early_stopping_patience": 2, "eval_steps": 3, "save_steps": 4}, "training.save_steps"),
    ],
)
def test_early_stopping_settings_that_cannot_work_are_refused(tiny_config, training, field):
    with pytest.raises(ConfigError, match=rf"{field}: "):
        tiny_config(training=training)
