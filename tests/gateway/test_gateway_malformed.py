"""Malformed chat requests: each one is a 4xx in the OpenAI error shape naming the field, and
the gateway goes on serving. Most run against the gateway with no engine behind it (nothing
reaches an engine); the last test sends them all to the real one between valid requests."""

from __future__ import annotations

import base64

import pytest
from gateway_helpers import png

MODEL = "tiny-gemma-3-mm"
HELLO = [{"role": "user", "content": "Hello"}]
TINY_PNG = "data:image/png;base64," + base64.b64encode(png()).decode()


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": HELLO} | fields


def user(content) -> dict:
    return chat(messages=[{"role": "user", "content": content}])


def image(url: str) -> dict:
    return user(
        [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": url}}]
    )


# (case id, body, expected status, expected param)
MALFORMED = [
    ("not-json", b"{this is not json", 400, None),
    ("json-array", b"[1, 2, 3]", 400, None),
    ("empty-body", b"", 400, None),
    ("no-model", {"messages": HELLO}, 400, "model"),
    ("logit-bias-out-of-range", chat(logit_bias={"12": 500}), 400, "logit_bias.12"),
    ("logit-bias-not-a-token-id", chat(logit_bias={"the": 1}), 400, "logit_bias.the"),
    ("model-not-string", chat(model=7), 400, "model"),
    ("empty-model", chat(model=""), 400, "model"),
    ("no-messages", {"model": MODEL}, 400, "messages"),
    ("empty-messages", chat(messages=[]), 400, "messages"),
    ("messages-not-list", chat(messages="hello"), 400, "messages"),
    ("unknown-role", chat(messages=[{"role": "tool", "content": "x"}]), 400, "messages[0].role"),
    ("no-content", chat(messages=[{"role": "user"}]), 400, "messages[0].content"),
    ("content-number", user(42), 400, "messages[0].content"),
    ("empty-part-list", user([]), 400, "messages[0].content"),
    (
        "unknown-part-type",
        user([{"type": "audio", "audio": "x"}]),
        400,
        "messages[0].content[0].type",
    ),
    ("text-part-without-text", user([{"type": "text"}]), 400, "messages[0].content[0]"),
    (
        "image-part-without-url",
        user([{"type": "image_url", "image_url": {}}]),
        400,
        "messages[0].content[0].image_url.url",
    ),
    (
        "image-in-system-message",
        chat(
            messages=[
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": TINY_PNG}}],
                },
                *HELLO,
            ]
        ),
        400,
        "messages[0]",
    ),
    (
        "unknown-message-field",
        chat(messages=[{"role": "user", "content": "x", "tool_calls": []}]),
        400,
        "messages[0].tool_calls",
    ),
    ("temperature-too-high", chat(temperature=2.5), 400, "temperature"),
    ("temperature-negative", chat(temperature=-0.1), 400, "temperature"),
    ("temperature-string", chat(temperature="0.5"), 400, "temperature"),
    ("top-p-above-one", chat(top_p=1.5), 400, "top_p"),
    ("top-p-zero", chat(top_p=0), 400, "top_p"),
    ("n-zero", chat(n=0), 400, "n"),
    ("n-float", chat(n=1.5), 400, "n"),
    ("max-tokens-zero", chat(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-string", chat(max_tokens="ten"), 400, "max_tokens"),
    ("presence-penalty", chat(presence_penalty=3), 400, "presence_penalty"),
    ("frequency-penalty", chat(frequency_penalty=-2.5), 400, "frequency_penalty"),
    ("stream-not-bool", chat(stream="yes"), 400, "stream"),
    (
        "stream-options-without-stream",
        chat(stream_options={"include_usage": True}),
        400,
        "stream_options",
    ),
    (
        "stream-options-unknown",
        chat(stream=True, stream_options={"continuous_usage_stats": True}),
        400,
        "stream_options.continuous_usage_stats",
    ),
    ("unknown-top-level-field", chat(chat_template="{{ evil }}"), 400, "chat_template"),
    (
        "bad-base64-image",
        image("data:image/png;base64,@@@@"),
        400,
        "messages[0].content[1].image_url",
    ),
    (
        "data-url-not-an-image",
        image("data:image/png;base64," + base64.b64encode(b"hello").decode()),
        400,
        "messages[0].content[1].image_url",
    ),
    ("file-scheme-image", image("file:///etc/passwd"), 400, "messages[0].content[1].image_url"),
    ("ftp-scheme-image", image("ftp://example.com/a.png"), 400, "messages[0].content[1].image_url"),
    (
        "too-many-images",
        user([{"type": "image_url", "image_url": {"url": TINY_PNG}}] * 9),
        400,
        "messages",
    ),
]


def check_openai_error(response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"] and error["type"] and error["code"]
    if param:
        assert param in error["message"]
    return error


def test_the_malformed_cases_are_refused_for_thirty_different_reasons(strict_gateway, keys):
    """Not thirty ways to trip one check: the gateway's refusals of the cases differ."""
    refusals = set()
    for _case, body, status, param in MALFORMED:
        error = check_openai_error(strict_gateway.post(body, keys.admin), status, param)
        refusals.add((param, error["code"], error["message"]))
    assert len(refusals) >= 30


@pytest.mark.parametrize(
    ("body", "status", "param"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_request_is_a_4xx_naming_the_field(strict_gateway, keys, body, status, param):
    response = strict_gateway.post(body, keys.admin)
    check_openai_error(response, status, param)
    assert response.headers["x-request-id"].startswith("gw-")


def test_unknown_route_and_method_answer_in_openai_shape(strict_gateway):
    import httpx

    check_openai_error(httpx.get(f"{strict_gateway.url}/v1/nothing"), 404, None)
    check_openai_error(httpx.get(f"{strict_gateway.url}/v1/chat/completions"), 405, None)


def test_body_over_the_limit_is_413(strict_gateway, keys):
    limit = strict_gateway.gateway.config.max_body_bytes
    response = strict_gateway.post(b"x" * (limit + 1), keys.admin)
    check_openai_error(response, 413, None)


def test_an_unreachable_engine_is_a_503_with_retry_after(strict_gateway, keys):
    response = strict_gateway.post(chat(), keys.admin)
    error = check_openai_error(response, 503, None)
    assert error["code"] == "engine_unavailable"
    assert int(response.headers["retry-after"]) > 0


@pytest.mark.engine
def test_gateway_keeps_serving_between_malformed_requests(gateway, keys):
    for number, (case, body, status, param) in enumerate(MALFORMED):
        check_openai_error(gateway.post(body, keys.admin), status, param)
        if number % 10 == 9:
            good = gateway.post(chat(max_tokens=2), keys.admin)
            assert good.status_code == 200, f"after {case}: {good.text}"
    final = gateway.post(chat(max_tokens=2), keys.admin)
    assert final.json()["choices"][0]["message"]["role"] == "assistant"
