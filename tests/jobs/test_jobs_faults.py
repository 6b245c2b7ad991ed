"""A training worker that dies mid-run (SIGKILL, what the out-of-memory killer sends) is
retried from its last checkpoint in the same MLflow run while `jobs.max_attempts` allows, with
the reason in the job's events; after that the job fails with a clean message that names no
server path, and the worker log's last lines reach the owner as events. Real gateway, engine,
MLflow and `gemlora train` workers."""

from __future__ import annotations

import os
import signal

import pytest
from jobs_helpers import (
    BASE,
    client_for,
    jobs_gateway,
    messages_of,
    tiny_settings,
    upload_shapes,
    wait_for,
    wait_for_event,
)

pytestmark = pytest.mark.engine

STEPS = 200  # far more than it trains: it is killed twice


@pytest.fixture(scope="module")
def two_attempts(engine, registry, keys, tmp_path_factory):
    """A gateway whose jobs get two worker starts."""
    store = tmp_path_factory.mktemp("faults-store")
    server = jobs_gateway(store, engine.url, registry, keys.api_keys(), max_attempts=2)
    yield server
    server.stop()


def test_a_killed_worker_is_retried_from_its_checkpoint_then_fails_cleanly(
    two_attempts, keys, registry, samples
):
    admin = client_for(two_attempts, keys.admin)
    (train,) = upload_shapes(admin, samples, held_out=0)
    settings = tiny_settings(max_steps=STEPS, save_steps=2)
    settings["eval"] = {"generation_examples": 0}
    job = admin.fine_tuning.jobs.create(
        model=BASE, training_file=train.id, extra_body={"gemlora": settings}
    )
    store = two_attempts.app.state.jobs.store

    wait_for_event(admin, job.id, "Checkpoint saved at step 2")
    run_id = wait_for(admin, job.id, "running").integrations[0].mlflow["run_id"]
    _kill_worker(store, job.id)
    wait_for_event(admin, job.id, "The training worker was killed by SIGKILL")
    messages = " ".join(messages_of(admin, job.id))
    assert "it is retried from its checkpoint at step" in messages
    assert "(attempt 2 of 2, jobs.max_attempts)" in messages

    wait_for_event(admin, job.id, "Fine-tuning resumes from step")
    wait_for_event(admin, job.id, "Training resumed (MLflow run")
    assert f"Training resumed (MLflow run {run_id})" in messages_of(admin, job.id)
    _kill_worker(store, job.id)  # no attempt left
    failed = wait_for(admin, job.id, "failed")

    assert failed.error.code == "worker_died"
    assert failed.error.message.startswith("the training worker was killed by SIGKILL at step")
    assert "/" not in failed.error.message  # no server path
    assert any(m.startswith("Worker log: ") for m in messages_of(admin, job.id))
    assert failed.integrations[0].mlflow["run_id"] == run_id


def _kill_worker(store, job_id: str) -> None:
    """SIGKILL the job's worker and its children, as the out-of-memory killer would."""
    pid = store.get_job(job_id).pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
