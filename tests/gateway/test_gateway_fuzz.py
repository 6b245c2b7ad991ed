"""A fuzzed contract: hundreds of generated chat requests (a valid request with fields replaced
by arbitrary JSON, at the top level, in a message and in a content part) against the real
gateway and engine. None may be a 5xx: a bad request is a 4xx naming what is wrong, a good one
is answered, and the gateway still serves afterwards. Deterministic (derandomized) so that CI
runs the same requests every time."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.engine

MODEL = "tiny-gemma-3-mm"
VALID = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
TOP_FIELDS = [
    "model", "messages", "temperature", "top_p", "n", "stream", "stream_options", "stop",
    "logit_bias", "logprobs", "top_logprobs", "seed", "response_format", "presence_penalty",
    "frequency_penalty", "user", "tools", "tool_choice", "metadata", "unknown_field",
]  # fmt: skip
MESSAGE_FIELDS = ["role", "content", "name", "weight", "tool_calls", "unknown_field"]
PART_TYPES = ["text", "image_url", "input_audio", "file", "unknown"]
REQUESTS = 300

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def chat_requests(draw) -> dict:
    body = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        value = draw(json_values)
        where = draw(st.sampled_from(["top", "message", "part"]))
        if where == "top":
            body[draw(st.sampled_from(TOP_FIELDS))] = value
        elif where == "message" and isinstance(body.get("messages"), list) and body["messages"]:
            message = body["messages"][0]
            if isinstance(message, dict):
                message[draw(st.sampled_from(MESSAGE_FIELDS))] = value
        else:
            part_type = draw(st.sampled_from(PART_TYPES))
            key = draw(st.sampled_from(["text", "image_url", "url", part_type]))
            body["messages"] = [{"role": "user", "content": [{"type": part_type, key: value}]}]
    return body


def test_no_generated_request_is_a_5xx_and_the_gateway_keeps_serving(gateway, keys):
    answered: list[int] = []

    @settings(
        max_examples=REQUESTS,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(chat_requests())
    @example(VALID)  # explicit examples run first, whatever the generator draws
    @example(VALID | {"temperature": 0.5, "user": "fuzz", "metadata": {"k": "v"}})
    @example(VALID | {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    def no_5xx(body: dict) -> None:
        response = gateway.post(body, keys.admin)
        answered.append(response.status_code)
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert response.json()["error"]["message"], response.text

    no_5xx()
    assert len(answered) >= REQUESTS * 0.9  # hypothesis ran them (a few may be duplicates)
    codes = Counter(answered)
    assert codes[200] and codes[400], codes  # both the answered and the refused path ran
    final = gateway.post(VALID, keys.admin)
    assert final.status_code == 200 and final.json()["choices"][0]["message"]["role"]
