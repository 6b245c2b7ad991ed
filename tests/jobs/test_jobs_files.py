"""The Files API with the official openai client: uploads validated with `data/` (a bad file is
refused with the report, naming each line), images stored inline or refused with the reason,
listing, retrieving, downloading, deleting, and files belonging to the key that uploaded them.

No vLLM engine is needed: the gateway's engine URL points at a closed port."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import openai
import pytest
from gateway_helpers import BASE, ImageServer, png, resolver_for
from jobs_helpers import client_for, free_port, inline_jsonl, jobs_gateway, jsonl

from gemlora.data.safe_fetch import FetchPolicy
from gemlora.serve.gateway import GatewayConfig, ImagePolicy

DNS = {"images.test": ["127.0.0.1"], "private.test": ["10.1.2.3"]}


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer({"/red.png": png("red"), "/notes.txt": b"not an image"})
    yield server
    server.close()


@pytest.fixture(scope="module")
def files_gateway(registry, keys, tmp_path_factory):
    """The jobs API with an image policy that lets exactly images.test (the loopback image
    server) through; no engine behind it."""
    policy = FetchPolicy(
        allowed_schemes=frozenset({"http", "https"}),
        allow_loopback=True,
        allowed_hosts=frozenset({"images.test"}),
    )
    config = GatewayConfig(images=ImagePolicy(fetch=policy), models_cache_s=0)
    server = jobs_gateway(
        tmp_path_factory.mktemp("files-store"),
        f"http://127.0.0.1:{free_port()}",
        registry,
        keys.api_keys(),
        config=config,
        dns_resolver=resolver_for(DNS),
    )
    yield server
    server.stop()


@pytest.fixture
def admin(files_gateway, keys) -> openai.OpenAI:
    return client_for(files_gateway, keys.admin)


def chat(question: str, answer: str, image_url: str | None = None) -> dict:
    content: str | list = question
    if image_url is not None:
        image = {"type": "image_url", "image_url": {"url": image_url}}
        content = [image, {"type": "text", "text": question}]
    return {
        "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    }


def test_upload_is_validated_stored_with_images_inline_listed_and_deleted(admin, samples):
    upload = inline_jsonl(samples / "shapes-vqa" / "train.jsonl", 6)

    stored = admin.files.create(file=("shapes.jsonl", upload), purpose="fine-tune")

    assert stored.id.startswith("file-") and stored.object == "file"
    assert (stored.filename, stored.purpose, stored.bytes) == (
        "shapes.jsonl",
        "fine-tune",
        len(upload),
    )
    assert stored.status == "processed"
    summary = stored.model_extra["gemlora"]
    assert (summary["format"], summary["examples"], summary["images"]) == ("openai", 6, 6)
    assert admin.files.retrieve(stored.id).model_dump() == stored.model_dump()
    assert stored.id in [f.id for f in admin.files.list()]
    assert stored.id in [f.id for f in admin.files.list(purpose="fine-tune")]
    content = [json.loads(line) for line in admin.files.content(stored.id).text.splitlines()]
    assert len(content) == 6
    first_part = content[0]["messages"][0]["content"][0]
    assert first_part["image_url"]["url"].startswith("data:image/png;base64,")

    deleted = admin.files.delete(stored.id)

    assert (deleted.id, deleted.deleted) == (stored.id, True)
    with pytest.raises(openai.NotFoundError):
        admin.files.retrieve(stored.id)
    assert stored.id not in [f.id for f in admin.files.list()]


def test_a_bad_file_is_refused_at_upload_with_every_problem_by_line(admin):
    bad = jsonl(
        chat("What is 2+2?", "4"),
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "beep"}]},
        "{not json",
        {"messages": [{"role": "user", "content": "Only a question"}]},
        chat("Colour?", "red", image_url="data:image/png;base64,!!!notbase64"),
    )

    with pytest.raises(openai.BadRequestError) as refused:
        admin.files.create(file=("bad.jsonl", bad), purpose="fine-tune")

    error = refused.value
    assert (error.status_code, error.param, error.code) == (400, "file", "invalid_file")
    message = error.body["message"]
    assert "bad.jsonl has 4 error(s)" in message
    assert "bad.jsonl:2: messages[1].role: error: unsupported role 'robot'" in message
    assert "bad.jsonl:3: error: " in message
    assert "bad.jsonl:4: " in message and "assistant" in message
    assert "bad.jsonl:5: messages[0].content[0].image_url: error: invalid base64" in message
    assert "bad.jsonl:1" not in message
    assert "bad.jsonl" not in [f.filename for f in admin.files.list()]


def test_images_are_fetched_under_the_policy_and_stored_inline_or_refused(admin, image_server):
    allowed = f"http://images.test:{image_server.port}/red.png"
    stored = admin.files.create(
        file=("remote.jsonl", jsonl(chat("Colour?", "red", image_url=allowed))),
        purpose="fine-tune",
    )
    record = json.loads(admin.files.content(stored.id).text)
    url = record["messages"][0]["content"][0]["image_url"]["url"]
    assert base64.b64decode(url.removeprefix("data:image/png;base64,")) == png("red")
    assert image_server.requests == ["/red.png"]

    cases = {
        "http://private.test/cat.png": "private",  # resolves to 10.1.2.3
        f"http://images.test:{image_server.port}/notes.txt": "response is not an image",
        "images/0000.png": "image file not found: images/0000.png",  # a path: nothing to read
    }
    for url, reason in cases.items():
        with pytest.raises(openai.BadRequestError) as refused:
            admin.files.create(
                file=("images.jsonl", jsonl(chat("Colour?", "red", image_url=url))),
                purpose="fine-tune",
            )
        message = refused.value.body["message"]
        assert "images.jsonl:1: messages[0].content[0].image_url: error:" in message
        assert reason in message, message


def test_only_fine_tune_files_and_a_file_is_required(admin, files_gateway, keys):
    with pytest.raises(openai.BadRequestError) as wrong:
        admin.files.create(file=("a.jsonl", jsonl(chat("Hi", "Hello"))), purpose="assistants")
    assert wrong.value.param == "purpose"

    import httpx

    response = httpx.post(
        f"{files_gateway.url}/v1/files",
        data={"purpose": "fine-tune"},
        files={"other": ("a.jsonl", b"{}")},
        headers={"Authorization": f"Bearer {keys.admin}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def test_files_belong_to_the_key_that_uploaded_them(admin, files_gateway, keys):
    team = client_for(files_gateway, keys.team)
    stored = admin.files.create(
        file=("mine.jsonl", jsonl(chat("Hi", "Hello"))), purpose="fine-tune"
    )

    with pytest.raises(openai.NotFoundError):
        team.files.retrieve(stored.id)
    with pytest.raises(openai.NotFoundError):
        team.files.delete(stored.id)
    assert stored.id not in [f.id for f in team.files.list()]
    with pytest.raises(openai.AuthenticationError):
        client_for(files_gateway, "gl-wrong").files.list()


def test_a_job_whose_eval_gate_runs_python_is_refused_unless_the_gateway_allows_it(admin, samples):
    """A python grader is the caller's code: a job's eval gate may not run it on a gateway
    whose `gateway.graders.python` is off (the default)."""
    upload = admin.files.create(
        file=("train.jsonl", inline_jsonl(samples / "shapes-vqa" / "train.jsonl", 6)),
        purpose="fine-tune",
    )
    python = {"type": "python", "name": "short", "source": "def grade(s, i):\n    return 1.0\n"}
    signed = {
        "type": "string_check",
        "name": "signed",
        "input": "{{sample.output_text}}",
        "reference": "x",
        "operation": "like",
    }
    both = {"type": "multi", "name": "both", "graders": {"p": python}, "calculate_output": "p"}
    settings = {
        "eval": {"graders": [signed, both]},
        "output": {"promote_if": {"gate": {"grader": "signed"}}},
    }
    with pytest.raises(openai.BadRequestError) as refused:
        admin.fine_tuning.jobs.create(
            model=BASE, training_file=upload.id, extra_body={"gemlora": settings}
        )
    assert refused.value.body["code"] == "python_graders_disabled"
    assert refused.value.body["param"] == "gemlora.eval.graders[1].graders.p.type"
