"""What the jobs API derives from a run's progress events: the result file's rows in OpenAI's
columns, the estimated finish from the measured step rate, and each event's description; and
the run directory's contract itself: every event parses as its model, an unknown or renamed one
fails loudly."""

from __future__ import annotations

import json
import typing

import pytest

from gemlora.run_events import (
    EVENTS,
    AnyEvent,
    BestCheckpoint,
    Checkpoint,
    Eval,
    Log,
    ProgressEvent,
    TrainBegin,
)
from gemlora.rundir import ProgressLog, RunDirFormatError, RunState, read_state, update_state
from gemlora.serve.jobs.progress import (
    estimated_finish,
    read_progress,
    results_csv,
    training_events,
)


def test_the_result_file_has_a_row_per_step_in_openais_columns():
    events = [
        TrainBegin(time=100.0, step=0, max_steps=4),
        Log(time=101.0, step=1, max_steps=4, metrics={"loss": 2.5, "mean_token_accuracy": 0.25}),
        Log(time=102.0, step=2, max_steps=4, metrics={"loss": 2.0, "mean_token_accuracy": 0.5}),
        Eval(time=102.5, step=2, max_steps=4, metrics={"eval_loss": 2.2}),
        Checkpoint(time=102.6, step=2, path="/nowhere/checkpoint-2"),
    ]
    assert results_csv(events).splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
        "1,2.5,0.25,,",
        "2,2.0,0.5,2.2,",
    ]


def test_the_estimated_finish_follows_the_step_rate_since_the_latest_start():
    events = [
        TrainBegin(time=0.0, step=0, max_steps=100),
        Log(time=50.0, step=5, max_steps=100),
        # resumed at step 4 (the last checkpoint), then 2 steps in 10 s: 5 s a step
        TrainBegin(time=1000.0, step=4, max_steps=100),
        Log(time=1010.0, step=6, max_steps=100),
    ]
    assert estimated_finish(events) == 1010 + 94 * 5
    assert estimated_finish(events[:1]) is None  # no step measured yet
    assert estimated_finish([]) is None


def test_the_job_says_which_step_early_stopping_registered():
    event = BestCheckpoint(step=7, eval_loss=1.23456, stopped_at=9, stopped_early=True)
    level, message, _ = event.describe()
    assert level == "info" and message == (
        "Early stopping at step 9: the best checkpoint, step 7 (validation loss 1.2346), is "
        "the one registered"
    )


def test_every_event_model_is_in_the_union_and_round_trips(tmp_path):
    """A new event class that is not in `AnyEvent` could be written but never read back."""
    members = typing.get_args(typing.get_args(AnyEvent)[0])
    written = {cls for cls in _subclasses(ProgressEvent) if "event" in cls.model_fields}
    assert written - {cls for cls in written if cls.__name__ == "Unreadable"} == set(members)
    names = [cls.model_fields["event"].default for cls in members]
    assert len(names) == len(set(names)), "two events share a name"
    log = ProgressLog.of(tmp_path)
    log.write(Log(step=3, max_steps=9, metrics={"loss": 1.5, "rewards/chosen": 0.25}))
    (event,) = log.read()
    assert isinstance(event, Log) and event.loss == 1.5 and event.metrics["rewards/chosen"] == 0.25


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_an_unknown_or_renamed_event_fails_loudly(tmp_path):
    good = Log(step=1, max_steps=2, metrics={"loss": 1.0}).model_dump_json()
    renamed = json.dumps({"time": 1.0, "event": "lgo", "step": 1, "max_steps": 2})
    renamed_field = json.dumps({"time": 1.0, "event": "log", "stp": 1, "max_steps": 2})
    (tmp_path / "progress.jsonl").write_text("\n".join([good, renamed, renamed_field]) + "\n")
    with pytest.raises(RunDirFormatError, match=r"progress\.jsonl:2: .*lgo"):
        ProgressLog.of(tmp_path).read()
    with pytest.raises(ValueError):
        EVENTS.validate_json(renamed_field)
    # The jobs API shows them as errors in the job's events, never drops them.
    described = training_events(read_progress(tmp_path))
    assert [(e.level, e.message.split(":")[0]) for e in described] == [
        ("info", "Step 1/2"),
        ("error", "Progress line 2 could not be read"),
        ("error", "Progress line 3 could not be read"),
    ]


def test_a_line_being_written_is_not_read_yet(tmp_path):
    line = Log(step=1, max_steps=2, metrics={"loss": 1.0}).model_dump_json()
    (tmp_path / "progress.jsonl").write_text(line + "\n" + line[:10])
    assert len(ProgressLog.of(tmp_path).read()) == 1


def test_run_state_is_validated_and_written_whole(tmp_path):
    assert read_state(tmp_path) is None
    update_state(tmp_path, status="running", run_id="abc")
    update_state(tmp_path, status="paused")
    assert read_state(tmp_path) == RunState(status="paused", run_id="abc")
    with pytest.raises(ValueError, match="status"):
        update_state(tmp_path, status="half-done")
    assert read_state(tmp_path).status == "paused"  # the refused change wrote nothing
    (tmp_path / "run.json").write_text('{"status": "paused", "stauts": 1}')
    with pytest.raises(RunDirFormatError, match="stauts"):
        read_state(tmp_path)
