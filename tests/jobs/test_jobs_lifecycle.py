"""Fine-tuning jobs with the official openai client against a real gateway, a real vLLM engine
(tiny-gemma-3-mm), a real MLflow server and real `gemlora train` workers: a job that succeeds
and whose model answers at once, its events and checkpoints, listing with pagination,
cancelling (no version registered), and requests refused with the field named."""

from __future__ import annotations

import time

import openai
import pytest
from jobs_helpers import (
    BASE,
    client_for,
    inline_jsonl,
    messages_of,
    tiny_settings,
    upload_shapes,
    wait_for,
    wait_for_event,
)

from gemlora.adapters import AdapterNotFoundError
from gemlora.adapters.fidelity_check import verify_adapter
from gemlora.adapters.verification_record import verification_of

pytestmark = pytest.mark.engine

PAUSED_STEPS = 24


@pytest.fixture(scope="module")
def admin(gateway, keys) -> openai.OpenAI:
    return client_for(gateway, keys.admin)


@pytest.fixture(scope="module")
def team(gateway, keys) -> openai.OpenAI:
    return client_for(gateway, keys.team)


def image_question(samples) -> list[dict]:
    """A shapes-vqa question with its image, as chat messages."""
    import json

    line = inline_jsonl(samples / "shapes-vqa" / "eval.jsonl", 1)
    return json.loads(line)["messages"][:1]


def test_a_job_succeeds_and_its_model_answers_at_once(admin, gateway, engine, registry, samples):
    train, held_out = upload_shapes(admin, samples)
    settings = tiny_settings()
    # An eval gate the tiny model cannot pass (no answer equals its reference, the base's
    # neither): the job still succeeds, says why the alias stays, and records the decision.
    exact = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.reference}}", "operation": "eq"}  # fmt: skip
    settings["eval"]["graders"] = [exact]
    settings["output"]["promote_if"] = {"gate": {"grader": "exact", "samples": 200}}

    job = admin.fine_tuning.jobs.create(
        model=BASE,
        training_file=train.id,
        validation_file=held_out.id,
        hyperparameters={"batch_size": 2, "learning_rate_multiplier": 2},
        suffix="shapes",
        seed=7,
        metadata={"team": "qa"},
        extra_body={"gemlora": settings},
    )

    assert job.object == "fine_tuning.job" and job.id.startswith("ftjob-")
    assert (job.status, job.model, job.fine_tuned_model) == ("validating_files", BASE, None)
    assert (job.training_file, job.validation_file) == (train.id, held_out.id)
    assert job.hyperparameters.model_dump() == {
        "n_epochs": 1,
        "batch_size": 2,
        "learning_rate_multiplier": 2,
    }
    assert (job.seed, job.metadata, job.user_provided_suffix) == (7, {"team": "qa"}, "shapes")
    with pytest.raises(openai.ConflictError):  # a job still needs it
        admin.files.delete(train.id)

    done = wait_for(admin, job.id, "succeeded")
    name = done.fine_tuned_model
    reply = admin.chat.completions.create(
        model=name, messages=image_question(samples), max_tokens=4, temperature=0
    )

    assert reply.model == name and reply.choices[0].message.content is not None
    assert name.startswith("shapes-") and done.finished_at >= done.created_at
    assert done.trained_tokens > 0 and done.error is None
    mlflow = done.integrations[0].mlflow
    assert mlflow["run_id"] and mlflow["run_id"] in mlflow["run_url"]
    # Versions 1 and 2 are the checkpoints at steps 2 and 4, version 3 the final adapter.
    assert mlflow["registered_model_url"].endswith(f"#/models/{name}/versions/3")
    version = registry.show(name).versions[0]
    assert (version.version, version.run_id) == (3, mlflow["run_id"])
    verification = verification_of(version.tags)  # verified on the gateway's engine at once
    assert verification.passed and verification.image_prompts == 2, verification
    assert (verification.engine_base, verification.quantization) == (BASE, "none")
    listed = {model.id: model for model in admin.models.list()}
    assert listed[name].verification["state"] == "passed"
    assert listed[f"{name}/3"].verification == listed[name].verification
    assert listed[f"{name}/1"].verification["state"] == "passed"  # checkpoints are verified too
    gate = listed[f"{name}/3"].eval  # the gate's eval ran as a child of the training run
    assert gate["passed"] is False and gate["graders"]["exact"]["wins_ties_losses"] == [0, 4, 0]
    assert "champion" not in registry.show(name).aliases
    assert _run_parent(registry, gate["mlflow_run_id"]) == mlflow["run_id"]
    params = _run_params(registry, mlflow["run_id"])
    assert params["training.lr"] == "0.002"  # 1e-3 (gemlora.training.lr) x multiplier 2
    assert (params["training.batch_size"], params["training.seed"]) == ("2", "7")
    assert (params["lora.r"], params["base.model"]) == ("4", BASE)
    assert admin.files.delete(train.id).deleted  # the job has ended: free to delete

    # The per-step metrics, as OpenAI's result file.
    (result_id,) = done.result_files
    assert admin.files.retrieve(result_id).purpose == "fine-tune-results"
    rows = admin.files.content(result_id).text.splitlines()
    assert rows[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4"]
    assert rows[-1].split(",")[3] != ""  # the final step was evaluated

    messages = messages_of(admin, job.id)
    expected = [
        "Created fine-tuning job",
        "Files validated (16 training examples, 4 validation examples)",
        "Fine-tuning starts in a worker process",
        f"Training started (MLflow run {mlflow['run_id']})",
        "Step 1/4: training loss=",
        "Checkpoint saved at step 2",
        f"Checkpoint at step 2 is callable as model '{name}/1'",
        "Step 4/4: validation loss=",
        "Generation eval on 2 held-out examples",
        f"Registered {name} version 3",
        f"Verification passed for version 3 on {BASE}: 6 prompts, 2 with images",
        f"Verification passed for version 1 on {BASE}",
        f"Eval gate not passed for version 3 against {BASE}: exact +0.000 [+0.000, +0.000]",
        "The job has successfully completed",
    ]
    positions = [_index(messages, text) for text in expected]
    assert positions == sorted(positions), messages

    first_page = admin.fine_tuning.jobs.list_events(job.id, limit=3)
    second_page = admin.fine_tuning.jobs.list_events(job.id, limit=3, after=first_page.data[-1].id)
    assert first_page.has_more and len(first_page.data) == len(second_page.data) == 3
    assert not {e.id for e in first_page.data} & {e.id for e in second_page.data}
    assert first_page.data[0].message.startswith("The job has successfully completed")
    metrics = [
        e for e in admin.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"
    ]
    assert {"step", "train_loss", "total_steps"} <= metrics[-1].data.keys()

    checkpoints = admin.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]  # newest first, save_total_limit 2
    assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [f"{name}/2", f"{name}/1"]
    first = checkpoints[-1]
    assert first.object == "fine_tuning.job.checkpoint" and first.fine_tuning_job_id == job.id
    assert first.metrics.train_loss > 0 and first.metrics.train_mean_token_accuracy >= 0
    # A checkpoint is callable by that name, and the engine serves it as PEFT computes it.
    reply = admin.chat.completions.create(
        model=first.fine_tuned_model_checkpoint,
        messages=image_question(samples),
        max_tokens=4,
        temperature=0,
    )
    assert reply.model == first.fine_tuned_model_checkpoint
    checkpoint = registry.lookup(first.fine_tuned_model_checkpoint)
    assert checkpoint.metadata.checkpoint_step == 2 and not checkpoint.aliases
    report = verify_adapter(registry, first.fine_tuned_model_checkpoint, engine.url, BASE)
    gaps = [(c.prompt, c.image, c.identical, c.max_logprob_gap) for c in report.prompts]
    assert report.passed, gaps


def test_jobs_list_with_pagination_and_cancel_stops_training_without_a_version(
    team, admin, registry, samples
):
    (train,) = upload_shapes(team, samples, held_out=0)
    created = [
        team.fine_tuning.jobs.create(
            model=BASE,
            training_file=train.id,
            suffix=f"team-{label}",
            metadata=metadata,
            extra_body={"gemlora": tiny_settings(max_steps=max_steps, save_steps=1000)},
        )
        for label, max_steps, metadata in (
            ("long", 1000, {"run": "long"}),
            ("b", 2, {"run": "short", "owner": "b"}),
            ("c", 2, None),
        )
    ]
    long, queued, last = created
    # OpenAI's metadata filter: every KEY=VALUE given must match; `metadata=null`: none set.
    filtered = team.fine_tuning.jobs.list(metadata={"run": "short", "owner": "b"})
    assert [j.id for j in filtered.data] == [queued.id]
    assert [j.id for j in team.fine_tuning.jobs.list(metadata={"run": "long"})] == [long.id]
    without = team.fine_tuning.jobs.list(extra_query={"metadata": "null"})
    assert [j.id for j in without.data] == [last.id]
    with pytest.raises(openai.BadRequestError, match="metadata"):
        team.fine_tuning.jobs.list(extra_query={"metadata": "run"})

    page = team.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [last.id, queued.id] and page.has_more
    rest = team.fine_tuning.jobs.list(limit=2, after=queued.id)
    assert [j.id for j in rest.data] == [long.id] and not rest.has_more
    assert [j.id for j in team.fine_tuning.jobs.list(limit=1)] == [last.id, queued.id, long.id]
    assert not {j.id for j in admin.fine_tuning.jobs.list(limit=100)} & {j.id for j in created}

    # Queued behind the long job (one worker at a time): cancelled at once.
    wait_for(team, queued.id, "queued")
    assert team.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    assert "Job cancelled before it started" in messages_of(team, queued.id)

    # Running: SIGTERM stops training within seconds; nothing is registered.
    wait_for_event(team, long.id, "training loss=")
    running = team.fine_tuning.jobs.retrieve(long.id)
    assert running.estimated_finish > time.time(), running.estimated_finish  # 1,000 steps to go
    assert running.result_files == []
    started = time.monotonic()
    cancelled = team.fine_tuning.jobs.cancel(long.id)
    took = time.monotonic() - started

    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    assert took < 15, f"cancel took {took:.1f} s"
    with pytest.raises(AdapterNotFoundError):
        registry.show(f"team-long-{long.id.rsplit('-', 1)[-1][:8]}")
    run_id = cancelled.integrations[0].mlflow["run_id"]
    assert _run_status(registry, run_id) == "KILLED"
    messages = messages_of(team, long.id)
    assert any(m.startswith("Training stopped (stopped by SIGTERM)") for m in messages)
    assert "nothing was registered" in messages[-1]
    with pytest.raises(openai.ConflictError):
        team.fine_tuning.jobs.cancel(long.id)

    # The next queued job gets the worker; cancel it wherever it is.
    assert team.fine_tuning.jobs.cancel(last.id).status == "cancelled"


def test_a_job_paused_at_any_moment_resumes_in_its_run_to_the_same_step_count(
    admin, registry, samples
):
    (train,) = upload_shapes(admin, samples, held_out=0)
    settings = tiny_settings(max_steps=PAUSED_STEPS, save_steps=1000)
    settings["eval"] = {"generation_examples": 0}
    job = admin.fine_tuning.jobs.create(
        model=BASE, training_file=train.id, extra_body={"gemlora": settings}
    )
    # Paused at once: its worker is still starting (imports, data, model), the pause waits.
    wait_for(admin, job.id, "running")
    admin.fine_tuning.jobs.pause(job.id)
    early = wait_for(admin, job.id, "paused", timeout_s=180)
    assert "Job paused before training its first step (step 0)" in " ".join(
        messages_of(admin, job.id)
    )
    run_id = early.integrations[0].mlflow["run_id"]
    assert _run_status(registry, run_id) == "SCHEDULED"
    admin.fine_tuning.jobs.resume(job.id)

    wait_for_event(admin, job.id, f"Step 3/{PAUSED_STEPS}")
    paused = admin.fine_tuning.jobs.pause(job.id)

    assert paused.status == "paused" and paused.estimated_finish is None
    (checkpoint,) = admin.fine_tuning.jobs.checkpoints.list(job.id).data  # saved on pause
    step = checkpoint.step_number
    assert 3 <= step < PAUSED_STEPS
    assert f"Job paused at step {step} with a checkpoint" in " ".join(messages_of(admin, job.id))
    assert paused.integrations[0].mlflow["run_id"] == run_id
    assert _run_status(registry, run_id) == "SCHEDULED"
    assert admin.fine_tuning.jobs.resume(job.id).status in ("queued", "running")
    done = wait_for(admin, job.id, "succeeded")

    with pytest.raises(openai.ConflictError, match="only a paused job"):
        admin.fine_tuning.jobs.resume(job.id)
    with pytest.raises(openai.ConflictError, match="only a running job"):
        admin.fine_tuning.jobs.pause(job.id)
    assert done.integrations[0].mlflow["run_id"] == run_id  # the same MLflow run, finished
    assert _run_status(registry, run_id) == "FINISHED"
    messages = messages_of(admin, job.id)
    assert f"Job resumed: queued to continue from step {step}" in messages
    assert any(m.startswith(f"Step {PAUSED_STEPS}/{PAUSED_STEPS}: training loss") for m in messages)
    from mlflow import MlflowClient

    history = MlflowClient(registry.config.tracking_uri).get_metric_history(run_id, "loss")
    assert sorted({m.step for m in history}) == list(range(1, PAUSED_STEPS + 1))


def test_a_job_whose_data_does_not_fit_the_base_fails_naming_the_line(admin, gateway, samples):
    (train,) = upload_shapes(admin, samples, train=4, held_out=0)

    job = admin.fine_tuning.jobs.create(
        model=BASE,
        training_file=train.id,
        extra_body={"gemlora": tiny_settings() | {"data": {"max_length": 16}}},
    )
    failed = wait_for(admin, job.id, "failed")

    assert failed.error.code == "invalid_training_file"
    assert failed.error.param == "training_file"
    assert f"{train.id}.jsonl:1: error: " in failed.error.message
    assert "over the max length of 16" in failed.error.message
    assert str(gateway.app.state.jobs.store.dir) not in failed.error.message  # no server path
    assert failed.fine_tuned_model is None and failed.finished_at is not None
    assert messages_of(admin, job.id)[-1].startswith("Fine-tuning failed: ")


def test_bad_job_requests_are_refused_naming_the_field(admin, team, samples):
    (train,) = upload_shapes(admin, samples, train=2, held_out=0)
    jobs_before = len(admin.fine_tuning.jobs.list(limit=100).data)
    bad = [
        ("model", {"model": "gemma-9-huge"}),
        ("model", {"model": "gemma-3-270m"}),  # another family than the engine serves
        ("training_file", {"training_file": "file-missing"}),
        ("validation_file", {"validation_file": "file-missing"}),
        ("hyperparameters.n_epochs", {"hyperparameters": {"n_epochs": 0}}),
        ("hyperparameters.batch_size", {"hyperparameters": {"batch_size": "big"}}),
        ("method.type", {"method": {"type": "ppo"}}),
        ("method.reinforcement", {"method": {"type": "reinforcement"}}),
        ("suffix", {"suffix": "no spaces allowed"}),
        ("gemlora.lora.rank", {"extra_body": {"gemlora": {"lora": {"rank": 8}}}}),
        ("gemlora.training.lr", {"extra_body": {"gemlora": {"training": {"lr": -1}}}}),
        ("gemlora.output.name", {"extra_body": {"gemlora": {"output": {"name": "x"}}}}),
    ]
    for param, changes in bad:
        arguments = {"model": BASE, "training_file": train.id} | changes
        with pytest.raises(openai.BadRequestError) as refused:
            admin.fine_tuning.jobs.create(**arguments)
        assert refused.value.param == param, (param, refused.value.body)
        assert refused.value.body["message"].startswith(param), refused.value.body

    with pytest.raises(openai.BadRequestError) as not_theirs:  # files belong to their key
        team.fine_tuning.jobs.create(model=BASE, training_file=train.id, suffix="team-x")
    assert not_theirs.value.param == "training_file"
    (team_file,) = upload_shapes(team, samples, train=2, held_out=0)
    with pytest.raises(openai.PermissionDeniedError) as forbidden:  # ft-... is not team-*
        team.fine_tuning.jobs.create(model=BASE, training_file=team_file.id)
    assert forbidden.value.param == "suffix"
    with pytest.raises(openai.NotFoundError):
        admin.fine_tuning.jobs.retrieve("ftjob-missing")
    assert len(admin.fine_tuning.jobs.list(limit=100).data) == jobs_before


def _index(messages: list[str], text: str) -> int:
    found = [i for i, message in enumerate(messages) if text in message]
    assert found, f"no event with {text!r} in {messages}"
    return found[0]


def _run_params(registry, run_id: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return MlflowClient(registry.config.tracking_uri).get_run(run_id).data.params


def _run_status(registry, run_id: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(registry.config.tracking_uri).get_run(run_id).info.status


def _run_parent(registry, run_id: str) -> str | None:
    from mlflow import MlflowClient

    return (
        MlflowClient(registry.config.tracking_uri)
        .get_run(run_id)
        .data.tags.get("mlflow.parentRunId")
    )
