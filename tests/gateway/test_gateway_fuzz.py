"""A fuzzed contract: hundreds of generated chat requests (a valid request with fields replaced
by arbitrary JSON, at the top level, in a message and in a content part) against the real
gateway and engine. None may be a 5xx: a bad request is a 4xx naming what is wrong, a good one
is answered, and the gateway still serves afterwards. Deterministic (derandomized) so that CI
runs the same requests every time."""

from __future__ import annotations

from collections import Counter

import pytest
from chat_fuzz import chat_requests, valid_request
from hypothesis import HealthCheck, example, given, settings

pytestmark = pytest.mark.engine

MODEL = "tiny-gemma-3-mm"
VALID = valid_request(MODEL)
REQUESTS = 300


def test_no_generated_request_is_a_5xx_and_the_gateway_keeps_serving(gateway, keys):
    answered: list[int] = []

    @settings(
        max_examples=REQUESTS,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(chat_requests(MODEL))
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
