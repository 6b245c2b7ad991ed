"""What the jobs API derives from a run's progress records: the result file's rows in OpenAI's
columns, and the estimated finish from the measured step rate."""

from __future__ import annotations

from gemlora.serve.jobs.progress import describe, estimated_finish, results_csv


def test_the_result_file_has_a_row_per_step_in_openais_columns():
    records = [
        {"event": "train_begin", "time": 100.0, "step": 0, "max_steps": 4},
        {"event": "log", "time": 101.0, "step": 1, "loss": 2.5, "mean_token_accuracy": 0.25},
        {"event": "log", "time": 102.0, "step": 2, "loss": 2.0, "mean_token_accuracy": 0.5},
        {"event": "eval", "time": 102.5, "step": 2, "eval_loss": 2.2},
        {"event": "checkpoint", "time": 102.6, "step": 2},
    ]
    assert results_csv(records).splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
        "1,2.5,0.25,,",
        "2,2.0,0.5,2.2,",
    ]


def test_the_estimated_finish_follows_the_step_rate_since_the_latest_start():
    records = [
        {"event": "train_begin", "time": 0.0, "step": 0, "max_steps": 100},
        {"event": "log", "time": 50.0, "step": 5},
        # resumed at step 4 (the last checkpoint), then 2 steps in 10 s: 5 s a step
        {"event": "train_begin", "time": 1000.0, "step": 4, "max_steps": 100},
        {"event": "log", "time": 1010.0, "step": 6},
    ]
    assert estimated_finish(records) == 1010 + 94 * 5
    assert estimated_finish(records[:1]) is None  # no step measured yet
    assert estimated_finish([]) is None


def test_the_job_says_which_step_early_stopping_registered():
    record = {
        "event": "best_checkpoint", "step": 7, "eval_loss": 1.23456, "stopped_at": 9,
        "stopped_early": True,
    }  # fmt: skip
    level, message, _ = describe(record)
    assert level == "info" and message == (
        "Early stopping at step 9: the best checkpoint, step 7 (validation loss 1.2346), is "
        "the one registered"
    )
