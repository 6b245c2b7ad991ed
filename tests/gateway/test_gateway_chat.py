"""Chat through the gateway with the official `openai` client, in front of a real vLLM engine
serving the tiny multimodal Gemma 3 (random weights: the replies are noise, but greedy noise is
reproducible, so a greedy answer through the gateway must be the engine's own answer to the
same request, token for token).
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from gateway_helpers import BASE, DEFAULT_MAX_TOKENS, engine_metric, png
from openai import OpenAI

from gemlora.engine_token import engine_token

pytestmark = pytest.mark.engine

HELLO = [{"role": "user", "content": "Say hello."}]
RED_DATA_URL = "data:image/png;base64," + base64.b64encode(png("red")).decode()


@pytest.fixture
def client(gateway, keys) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key=keys.admin, max_retries=0)


@pytest.fixture
def engine(gateway) -> OpenAI:
    """The engine behind the gateway, asked directly."""
    engine_url = gateway.gateway.settings.engine_url
    return OpenAI(base_url=f"{engine_url}/v1", api_key=engine_token(engine_url), max_retries=0)


def tokens(choice) -> list[tuple[str, float]]:
    return [(t.token, round(t.logprob, 4)) for t in choice.logprobs.content]


def assert_engines_answer(ours, engine_answer) -> None:
    """The gateway's completion is the engine's: text, tokens with their log-probabilities,
    finish reason and usage; and its usage counts the tokens it returned."""
    assert len(ours.choices) == len(engine_answer.choices)
    for mine, theirs in zip(ours.choices, engine_answer.choices, strict=True):
        assert mine.message.content == theirs.message.content
        assert tokens(mine) == tokens(theirs)
        assert mine.finish_reason == theirs.finish_reason
    assert ours.usage.completion_tokens == sum(len(c.logprobs.content) for c in ours.choices)
    assert ours.usage.total_tokens == ours.usage.prompt_tokens + ours.usage.completion_tokens
    assert ours.usage.prompt_tokens == engine_answer.usage.prompt_tokens
    assert ours.usage.completion_tokens == engine_answer.usage.completion_tokens


def test_chat_applies_the_deployment_defaults(client):
    raw = client.chat.completions.with_raw_response.create(model=BASE, messages=HELLO)
    completion = raw.parse()

    # The gateway's request id reaches the engine, which names the completion after it.
    assert raw.headers["x-request-id"].startswith("gw-")
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"
    assert completion.model == BASE
    assert completion.choices[0].message.role == "assistant"
    # max_tokens left out: the deployment's default applies, not the engine's (the context).
    assert 1 <= completion.usage.completion_tokens <= DEFAULT_MAX_TOKENS
    assert completion.usage.prompt_tokens > 0


def test_request_fields_override_the_defaults(client, engine):
    request = dict(model=BASE, messages=HELLO, max_tokens=3, temperature=0, seed=1, top_p=1)
    completion = client.chat.completions.create(**request, logprobs=True)
    # Greedy: the engine's own answer, 3 tokens (not the deployment's 8; no early stop here).
    assert_engines_answer(completion, engine.chat.completions.create(**request, logprobs=True))
    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"


def test_system_user_assistant_conversation(client, engine):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "One."}]},
        {"role": "assistant", "content": "Two."},
        {"role": "user", "content": "Three?"},
    ]
    request = dict(model=BASE, messages=messages, max_tokens=4, temperature=0, logprobs=True)
    completion = client.chat.completions.create(**request)
    # The whole conversation reached the engine as it was: the same prompt, the same answer.
    assert_engines_answer(completion, engine.chat.completions.create(**request))
    assert completion.choices[0].message.content


def test_n_2_gives_two_choices(client):
    completion = client.chat.completions.create(
        model=BASE, messages=HELLO, n=2, max_tokens=4, temperature=1.0, logprobs=True
    )
    assert [c.index for c in completion.choices] == [0, 1]
    # usage counts both choices' tokens
    generated = [len(c.logprobs.content) for c in completion.choices]
    assert all(1 <= n <= 4 for n in generated)
    assert completion.usage.completion_tokens == sum(generated)


def test_stream_passes_chunks_through_and_ends_with_done(gateway, keys, engine):
    body = {"model": BASE, "messages": HELLO, "stream": True, "max_tokens": 16, "temperature": 0}
    events = []
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {keys.admin}"},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 3  # role, tokens, ..., [DONE]
    # The client did not ask for usage: the usage event the gateway asked for is not passed on.
    assert not any('"choices":[]' in e for e in events)
    # The chunks add up to the engine's own (unstreamed) greedy answer.
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    answer = engine.chat.completions.create(
        model=BASE, messages=HELLO, max_tokens=16, temperature=0
    )
    assert text and text == answer.choices[0].message.content
    assert chunks[-1]["choices"][0]["finish_reason"] == answer.choices[0].finish_reason


def test_stream_with_the_openai_client_and_usage(client, engine):
    stream = client.chat.completions.create(
        model=BASE,
        messages=HELLO,
        stream=True,
        max_tokens=6,
        temperature=0,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = engine.chat.completions.create(model=BASE, messages=HELLO, max_tokens=6, temperature=0)
    assert text and text == answer.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == answer.usage.model_dump()


def test_streaming_is_not_buffered(gateway, keys):
    """Chunks arrive while the engine generates, not in one burst at the end: the first and
    the last are over 0.1 s apart (200 tokens take ~1 s here; a buffered answer arrives in one
    read). Not the time to the first chunk, which queueing on a busy machine stretches."""
    body = {"model": BASE, "messages": HELLO, "stream": True, "max_tokens": 200, "temperature": 0}
    body["stop"] = []  # no early stop: 200 tokens to generate
    arrivals = []
    started = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {keys.admin}"},
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter() - started)
    assert len(arrivals) > 20
    assert arrivals[-1] - arrivals[0] > 0.1, f"all chunks within {arrivals[-1] - arrivals[0]} s"


def test_client_disconnect_cancels_the_generation(gateway, keys):
    engine_url = gateway.gateway.settings.engine_url
    generated_before = engine_metric(engine_url, "vllm:generation_tokens_total")
    body = {"model": BASE, "messages": HELLO, "stream": True, "max_tokens": 900, "stop": []}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {keys.admin}"},
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        next(lines), next(lines)  # generation has started
        assert engine_metric(engine_url, "vllm:num_requests_running") == 1
    # The client is gone: the engine stops generating long before 900 tokens.
    deadline = time.monotonic() + 10
    while engine_metric(engine_url, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the engine kept generating after the client left"
        time.sleep(0.05)
    generated = engine_metric(engine_url, "vllm:generation_tokens_total") - generated_before
    assert generated < 450
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert (
        'gemlora_gateway_errors_total{adapter="tiny-gemma-3-mm",code="client_disconnected",key_id="admin"}'
        in metrics
    )


def test_image_as_data_url(client, engine):
    content = [
        {"type": "text", "text": "What colour is this?"},
        {"type": "image_url", "image_url": {"url": RED_DATA_URL}},
    ]
    request = dict(
        model=BASE,
        messages=[{"role": "user", "content": content}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
    )
    completion = client.chat.completions.create(**request)
    # The engine saw the image the client sent: its own answer to the same request.
    assert_engines_answer(completion, engine.chat.completions.create(**request))
    # 4 soft tokens per image on this model: the image reached the engine.
    text_only = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "What colour is this?"}],
        max_tokens=4,
    )
    assert completion.usage.prompt_tokens > text_only.usage.prompt_tokens


def test_image_by_url_is_fetched_by_the_gateway(client, engine, image_server, connections):
    """images.test resolves to the loopback image server and is on this gateway's allowlist.
    The gateway fetches it once; the engine gets a data URL (it could not resolve images.test)."""
    url = f"http://images.test:{image_server.port}/red.png"
    before = len(image_server.requests)

    def request(image_url: str) -> dict:
        content = [
            {"type": "text", "text": "Colour?"},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]
        messages = [{"role": "user", "content": content}]
        return dict(model=BASE, messages=messages, max_tokens=4, temperature=0, logprobs=True)

    completion = client.chat.completions.create(**request(url))
    # What the engine answers when handed the served PNG itself, as a data URL.
    assert_engines_answer(completion, engine.chat.completions.create(**request(RED_DATA_URL)))
    assert image_server.requests[before:] == ["/red.png"]
    assert ("127.0.0.1", image_server.port) in connections


def test_image_url_off_the_allowlist_is_refused(client, image_server):
    import openai

    url = f"http://127.0.0.1:{image_server.port}/red.png"  # loopback, but not images.test
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=BASE,
            messages=[
                HELLO[0],
                {"role": "assistant", "content": "Hi"},
                {"role": "user", "content": content},
            ],
        )
    assert raised.value.body["param"] == "messages[2].content[0].image_url"
    assert "not in the allowed hosts" in raised.value.body["message"]


def test_bad_image_names_the_message(client, image_server):
    import openai

    url = f"http://images.test:{image_server.port}/notes.txt"  # served, but not an image
    content = [
        {"type": "text", "text": "Colour?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": content}])
    assert raised.value.body["param"] == "messages[0].content[1].image_url"
    assert "not an image" in raised.value.body["message"]


def test_inline_img_tag_becomes_an_image(client):
    inline = f'What colour is this? <img src="{RED_DATA_URL}" />'
    completion = client.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": inline}], max_tokens=4
    )
    plain = client.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "What colour is this? "}], max_tokens=4
    )
    # Converted to an image part: image tokens instead of ~thousands of base64 text tokens.
    assert 0 < completion.usage.prompt_tokens - plain.usage.prompt_tokens < 20


def test_bad_inline_image_names_the_message(client):
    import openai

    inline = 'Look: <img src="data:image/png;base64,AAAA" />'
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": inline}])
    assert raised.value.body["param"] == "messages[0].content"
    assert "inline <img> number 1" in raised.value.body["message"]


def test_metrics_record_latency_ttft_and_tokens(gateway, keys, client):
    stream = client.chat.completions.create(model=BASE, messages=HELLO, stream=True, max_tokens=5)
    assert list(stream)
    metrics = httpx.get(f"{gateway.url}/metrics").text
    labels = f'adapter="{BASE}",key_id="admin"'
    for name in (
        "gemlora_gateway_time_to_first_token_seconds_count",
        "gemlora_gateway_prompt_tokens_total",
        "gemlora_gateway_completion_tokens_total",
    ):
        assert float(_sample(metrics, f"{name}{{{labels}}}")) > 0
    assert (
        float(_sample(metrics, f'gemlora_gateway_request_seconds_count{{{labels},stream="true"}}'))
        > 0
    )


def _sample(metrics: str, series: str) -> str:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return line.rsplit(" ", 1)[1]
    raise AssertionError(f"{series} not in /metrics")


def test_health_is_ok_with_engine_and_registry(gateway):
    response = httpx.get(f"{gateway.url}/health")
    assert response.json() == {"status": "ok", "engine": "ok", "registry": "ok"}
