"""Job state survives a gateway restart: the gateway app is stopped while one job trains and
another waits, and a new app on the same store resumes the first from its checkpoint (same
MLflow run) and then runs the queued one. With resuming off, an interrupted job is failed with
the reason. One gateway per store: a second one refuses to start."""

from __future__ import annotations

import asyncio

import pytest
from jobs_helpers import (
    BASE,
    client_for,
    inline_jsonl,
    jobs_gateway,
    messages_of,
    tiny_settings,
    wait_for,
    wait_for_event,
)

from gemlora.serve.jobs import JobRunner, JobsConfig, JobStore, StoreInUse

pytestmark = pytest.mark.engine


def test_a_restart_resumes_the_running_job_and_runs_the_queued_one(
    engine, registry, keys, samples, tmp_path
):
    store = tmp_path / "store"
    first = jobs_gateway(store, engine.url, registry, keys.api_keys())
    client = client_for(first, keys.admin)
    data = inline_jsonl(samples / "shapes-vqa" / "train.jsonl", 16)
    train = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    settings = tiny_settings(max_steps=8, save_steps=2)
    running = client.fine_tuning.jobs.create(
        model=BASE, training_file=train.id, extra_body={"gemlora": settings}
    )
    queued = client.fine_tuning.jobs.create(
        model=BASE, training_file=train.id, extra_body={"gemlora": tiny_settings(max_steps=2)}
    )
    wait_for_event(client, running.id, "Checkpoint saved at step 2")
    run_id = wait_for(client, running.id, "running").integrations[0].mlflow["run_id"]

    first.stop()  # the worker is stopped; the store keeps both jobs where they were

    before = JobStore(store)
    assert before.get_job(running.id).status == "running"
    assert before.get_job(queued.id).status == "queued"

    second = jobs_gateway(store, engine.url, registry, keys.api_keys())
    mlflow_url = registry.config.tracking_uri
    try:
        client = client_for(second, keys.admin)
        with pytest.raises(StoreInUse, match="another gateway runs the fine-tuning jobs"):
            runner = JobRunner(JobStore(store), JobsConfig(dir=store), mlflow_url)
            asyncio.run(runner.start())

        resumed = wait_for(client, running.id, "succeeded")
        assert wait_for(client, queued.id, "succeeded").fine_tuned_model
        messages = messages_of(client, running.id)
    finally:
        second.stop()

    restart = [m for m in messages if m.startswith("The gateway restarted")]
    assert restart and "continues from its checkpoint at step" in restart[0], messages
    checkpoint_step = int(restart[0].rsplit(" ", 1)[-1])
    assert checkpoint_step >= 2
    assert f"Training resumed (MLflow run {run_id})" in messages
    assert f"Training from step {checkpoint_step} to step 8" in messages
    assert "Fine-tuning resumes from step" in " ".join(messages)
    assert resumed.integrations[0].mlflow["run_id"] == run_id  # the same MLflow run
    version = registry.show(resumed.fine_tuned_model).versions[0]
    assert version.run_id == run_id


def test_with_resuming_off_an_interrupted_job_fails_with_the_reason(
    engine, registry, keys, samples, tmp_path
):
    store = tmp_path / "store"
    first = jobs_gateway(store, engine.url, registry, keys.api_keys(), resume_interrupted=False)
    client = client_for(first, keys.admin)
    data = inline_jsonl(samples / "shapes-vqa" / "train.jsonl", 4)
    train = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=train.id,
        extra_body={"gemlora": tiny_settings(max_steps=1000)},
    )
    wait_for(client, job.id, "running")
    first.stop()

    second = jobs_gateway(store, engine.url, registry, keys.api_keys(), resume_interrupted=False)
    try:
        failed = client_for(second, keys.admin).fine_tuning.jobs.retrieve(job.id)
    finally:
        second.stop()

    assert failed.status == "failed" and failed.error.code == "interrupted"
    assert "the gateway restarted while the job was running" in failed.error.message
    assert "jobs.resume_interrupted is off" in failed.error.message
