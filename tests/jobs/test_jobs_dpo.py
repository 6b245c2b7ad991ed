"""Preference tuning (DPO) through the Fine-tuning Jobs API with the official openai client:
preference files uploaded and checked as pairs, `method: {"type": "dpo"}` exactly as the SDK
sends it, an adapter named as the job's `model` (trained further from that version), and the
result callable by name at once. Real gateway, engine (tiny-gemma-3-mm), MLflow and workers."""

from __future__ import annotations

import json

import openai
import pytest
from gateway_helpers import save_tiny_adapter
from jobs_helpers import BASE, client_for, jsonl, tiny_settings, wait_for

from gemlora.adapters import AdapterMetadata

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def admin(gateway, keys) -> openai.OpenAI:
    return client_for(gateway, keys.admin)


def upload_pairs(client: openai.OpenAI, samples, side: str, count: int):
    """The first `count` pairs of the style-preference sample set (OpenAI preference JSONL)."""
    lines = (samples / "style-preference" / f"{side}.jsonl").read_bytes().splitlines()[:count]
    return client.files.create(file=(f"{side}.jsonl", b"\n".join(lines)), purpose="fine-tune")


@pytest.fixture(scope="module")
def sft_adapter(registry, built_models, tmp_path_factory) -> str:
    """A registered adapter on the tiny base, the starting point of a DPO job."""
    path = save_tiny_adapter(built_models[BASE], tmp_path_factory.mktemp("sft") / "adapter")
    name = "dpo-start"
    registry.register(path, name, AdapterMetadata(base=BASE), alias="champion")
    return name


def test_a_dpo_job_from_an_adapter_succeeds_and_its_model_answers(
    admin, registry, samples, sft_adapter
):
    train = upload_pairs(admin, samples, "train", 8)
    held_out = upload_pairs(admin, samples, "eval", 4)

    job = admin.fine_tuning.jobs.create(
        model=f"{sft_adapter}@champion",
        training_file=train.id,
        validation_file=held_out.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 2}}},
        suffix="prefers",
        extra_body={"gemlora": tiny_settings()},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    assert job.model == f"{sft_adapter}@champion"

    done = wait_for(admin, job.id, "succeeded")
    name = done.fine_tuned_model
    reply = admin.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert reply.model == name

    version = registry.show(name).versions[0]
    assert version.tags["gemlora.method"] == "dpo"
    assert version.tags["gemlora.parent"] == f"{sft_adapter}/1"
    metrics = _run_metrics(registry, done.integrations[0].mlflow["run_id"])
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert key in metrics and f"eval_{key}" in metrics, sorted(metrics)


def test_a_dpo_job_on_chat_files_is_refused_naming_the_file(admin, samples):
    chats = (samples / "style-chat" / "train.jsonl").read_bytes().splitlines()[:4]
    chat_file = admin.files.create(file=("chats.jsonl", b"\n".join(chats)), purpose="fine-tune")

    with pytest.raises(openai.BadRequestError) as raised:
        admin.fine_tuning.jobs.create(
            model=BASE, training_file=chat_file.id, method={"type": "dpo"}
        )
    error = raised.value.body
    assert (error["param"], error["code"]) == ("training_file", "invalid_file")
    assert "a dpo job trains on preference pairs" in error["message"]
    assert f"{chat_file.id} (chats.jsonl) holds chat examples" in error["message"]


def test_a_malformed_preference_upload_lists_every_problem(admin):
    good = {
        "input": {"messages": [{"role": "user", "content": "Hi?"}]},
        "preferred_output": [{"role": "assistant", "content": "Ahoy!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Hello."}],
    }
    same = json.loads(json.dumps(good))
    same["non_preferred_output"][0]["content"] = "Ahoy!"
    empty = json.loads(json.dumps(good))
    empty["preferred_output"][0]["content"] = ""
    data = jsonl(good, same, empty, good)

    with pytest.raises(openai.BadRequestError) as raised:
        admin.files.create(file=("pairs.jsonl", data), purpose="fine-tune")
    message = raised.value.body["message"]
    assert "pairs.jsonl has 2 error(s)" in message
    assert "pairs.jsonl:2: " in message and "pairs.jsonl:3: preferred_output" in message


def _run_metrics(registry, run_id: str) -> dict[str, float]:
    return registry.client.get_run(run_id).data.metrics
