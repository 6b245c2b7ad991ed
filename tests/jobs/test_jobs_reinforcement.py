"""Reinforcement fine-tuning through the Fine-tuning Jobs API with the official openai client:
prompt files (with images) uploaded and checked as prompts, `method: {"type":
"reinforcement", "reinforcement": {"grader": ..., "hyperparameters": ...}}` exactly as the SDK
sends it, OpenAI's hyperparameters mapped (and the unsupported one refused by name), reward
metrics in the job's events, a pause with a callable checkpoint and a resume, the eval gate on
the reward grader, and the result callable by name at once. Real gateway, engine
(tiny-gemma-3-mm), MLflow and workers."""

from __future__ import annotations

import json

import openai
import pytest
from jobs_helpers import BASE, client_for, inline_jsonl, tiny_settings, wait_for, wait_for_event

pytestmark = pytest.mark.engine

STEPS = 6
CLOSE = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
}


@pytest.fixture(scope="module")
def admin(gateway, keys) -> openai.OpenAI:
    return client_for(gateway, keys.admin)


def upload_prompts(client: openai.OpenAI, samples, side: str, count: int):
    """shapes-vqa questions as reinforcement prompts (images inline), the answer as the item
    field `answer`."""
    prompts = []
    for line in inline_jsonl(samples / "shapes-vqa" / f"{side}.jsonl", count).splitlines():
        *prompt, answer = json.loads(line)["messages"]
        prompts.append({"messages": prompt, "answer": answer["content"]})
    data = "".join(json.dumps(p) + "\n" for p in prompts).encode()
    return client.files.create(file=(f"prompts-{side}.jsonl", data), purpose="fine-tune")


def test_a_reinforcement_job_on_image_prompts_pauses_resumes_and_is_gated(admin, registry, samples):
    train = upload_prompts(admin, samples, "train", 8)
    held_out = upload_prompts(admin, samples, "eval", 2)
    assert train.model_extra["gemlora"]["kind"] == "prompt"

    hyperparameters = {
        "batch_size": 2,
        "compute_multiplier": 0.5,  # 2 answers per prompt instead of 4
        "eval_interval": 2,
        "eval_samples": 1,
    }
    settings = tiny_settings(max_steps=STEPS, save_steps=1000) | {
        "reinforcement": {"max_completion_tokens": 4, "eval_prompts": 2},
        # the eval gate on the reward grader (eval.graders defaults to it), on the engine
        "output": {"promote_if": {"gate": {"grader": "close"}, "to": "champion"}},
    }
    job = admin.fine_tuning.jobs.create(
        model=BASE,
        training_file=train.id,
        validation_file=held_out.id,
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": CLOSE, "hyperparameters": hyperparameters},
        },
        suffix="rewarded",
        extra_body={"gemlora": settings},
    )
    assert job.method.type == "reinforcement"
    assert job.hyperparameters.batch_size == 2

    wait_for_event(admin, job.id, f"Step 2/{STEPS}")
    admin.fine_tuning.jobs.pause(job.id)
    wait_for(admin, job.id, "paused", timeout_s=120)
    (checkpoint,) = admin.fine_tuning.jobs.checkpoints.list(job.id).data  # saved on pause
    step = checkpoint.step_number
    assert 2 <= step < STEPS
    reply = admin.chat.completions.create(  # the checkpoint is callable while paused
        model=checkpoint.fine_tuned_model_checkpoint,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
    )
    assert reply.model == checkpoint.fine_tuned_model_checkpoint
    admin.fine_tuning.jobs.resume(job.id)

    done = wait_for(admin, job.id, "succeeded")
    name = done.fine_tuned_model
    reply = admin.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert reply.model == name
    version = registry.show(name).versions[0]
    assert version.tags["gemlora.method"] == "reinforcement"
    gate = json.loads(version.tags["gemlora.eval"])  # the gate graded it on the held-out prompts
    assert gate["grader"] == "close" and gate["against"] == BASE

    events = admin.fine_tuning.jobs.list_events(job.id, limit=1000).data
    metrics = [e.data for e in events if e.type == "metrics"]
    train_steps = [m for m in metrics if "train_reward_mean" in m]
    assert {m["step"] for m in train_steps} == set(range(1, STEPS + 1)), metrics
    assert all("train_rewards/close/mean" in m and "train_kl" not in m for m in train_steps)
    assert all("train_completions/mean_length" in m for m in train_steps)
    assert any("valid_reward_mean" in m for m in metrics), metrics  # every eval_interval steps
    messages = [e.message for e in events]
    assert any("Reward on 2 held-out prompts" in m for m in messages), messages
    assert any(m.startswith("Eval gate ") for m in messages), messages
    assert f"Job resumed: queued to continue from step {step}" in messages


def test_unsupported_or_unsafe_reinforcement_settings_are_refused_by_name(admin, samples):
    train = upload_prompts(admin, samples, "train", 2)
    effort = {"grader": CLOSE, "hyperparameters": {"reasoning_effort": "high"}}
    with pytest.raises(openai.BadRequestError) as raised:
        admin.fine_tuning.jobs.create(
            model=BASE,
            training_file=train.id,
            method={"type": "reinforcement", "reinforcement": effort},
        )
    assert "reasoning_effort" in raised.value.body["param"]

    python = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1\n"}
    with pytest.raises(openai.BadRequestError) as raised:
        admin.fine_tuning.jobs.create(
            model=BASE,
            training_file=train.id,
            method={"type": "reinforcement", "reinforcement": {"grader": python}},
        )
    error = raised.value.body
    assert (error["param"], error["code"]) == (
        "method.reinforcement.grader.type",
        "python_graders_disabled",
    )

    bad = CLOSE | {"evaluation_metric": "nonsense"}
    with pytest.raises(openai.BadRequestError) as raised:
        admin.fine_tuning.jobs.create(
            model=BASE,
            training_file=train.id,
            method={"type": "reinforcement", "reinforcement": {"grader": bad}},
        )
    assert raised.value.body["param"].startswith("method.reinforcement.grader")


def test_a_reinforcement_job_on_chat_files_is_refused_naming_the_file(admin, samples):
    chats = inline_jsonl(samples / "shapes-vqa" / "train.jsonl", 2)
    chat_file = admin.files.create(file=("chats.jsonl", chats), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as raised:
        admin.fine_tuning.jobs.create(
            model=BASE,
            training_file=chat_file.id,
            method={"type": "reinforcement", "reinforcement": {"grader": CLOSE}},
        )
    error = raised.value.body
    assert (error["param"], error["code"]) == ("training_file", "invalid_file")
    assert "a reinforcement job trains on prompts" in error["message"]
