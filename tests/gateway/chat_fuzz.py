"""Generated chat request bodies for fuzzing the gateway: a valid request with fields replaced by
arbitrary JSON at the top level, in a message and in a content part. Used by
tests/gateway/test_gateway_fuzz.py (a few hundred) and benchmarks/reliability.py (10,000)."""

from __future__ import annotations

from hypothesis import strategies as st


def valid_request(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


TOP_FIELDS = [
    "model", "messages", "temperature", "top_p", "n", "stream", "stream_options", "stop",
    "logit_bias", "logprobs", "top_logprobs", "seed", "response_format", "presence_penalty",
    "frequency_penalty", "user", "tools", "tool_choice", "metadata", "unknown_field",
]  # fmt: skip
MESSAGE_FIELDS = ["role", "content", "name", "weight", "tool_calls", "unknown_field"]
PART_TYPES = ["text", "image_url", "input_audio", "file", "unknown"]

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
def chat_requests(draw, model: str) -> dict:
    body = valid_request(model)
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
