"""Only the gateway and gemlora's tools reach the engine (issue 32, item 10): each engine start
has its own token, the real vLLM engine refuses every path but its liveness probes without it
(vLLM's `/v1` check and gemlora's guard for the rest), and gemlora's tools find it from the URL.
"""

from __future__ import annotations

import os
import stat

import httpx
import pytest
from serve_helpers import BASES

from gemlora.engine_token import (
    TOKEN_ENV,
    engine_headers,
    engine_token,
    forget_engine_token,
    new_engine_token,
    token_path,
)

BASE = BASES[0]


def test_a_token_file_is_its_owners_only_and_outlives_no_newer_start(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMLORA_HOME", str(tmp_path))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    first = new_engine_token(8123)
    assert stat.S_IMODE(token_path(8123).stat().st_mode) == 0o600
    assert engine_token("http://127.0.0.1:8123") == first
    assert engine_headers("http://127.0.0.1:8123/") == {"Authorization": f"Bearer {first}"}
    second = new_engine_token(8123)  # a restart
    assert second != first
    forget_engine_token(8123, first)  # the old start's cleanup leaves the new start's token
    assert engine_token("http://127.0.0.1:8123") == second
    forget_engine_token(8123, second)
    assert engine_token("http://127.0.0.1:8123") is None
    assert engine_headers("http://127.0.0.1:8123") == {}
    assert list((tmp_path / "run").iterdir()) == []  # no partial file left behind
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment")
    assert engine_token("http://127.0.0.1:8123") == "from-the-environment"


# Paths vLLM's own --api-key check leaves open, and what they would let anyone do.
UNGUARDED_BY_VLLM = [
    ("POST", "/invocations"),  # chat completions, SageMaker-style
    ("POST", "/tokenize"),
    ("GET", "/metrics"),  # adapter names, traffic
    ("POST", "/pause"),
    ("POST", "/reset_prefix_cache"),
    ("GET", "/server_info"),
]


@pytest.mark.engine
def test_the_engine_refuses_everything_but_its_probes_without_its_token(engines):
    engine = engines.get(BASE)
    chat = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert httpx.get(f"{engine.url}/health").status_code == 200  # the supervisor's probe
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]:
        refused = httpx.request(method, f"{engine.url}{path}", json=chat)
        assert refused.status_code == 401, (path, refused.text)
    for method, path in UNGUARDED_BY_VLLM:
        refused = httpx.request(method, f"{engine.url}{path}", json=chat)
        assert refused.status_code == 401, (path, refused.text)
        assert refused.json()["error"]["code"] == "engine_token_required"
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.post(f"{engine.url}/invocations", json=chat, headers=wrong).status_code == 401

    answer = httpx.post(
        f"{engine.url}/v1/chat/completions", json=chat, headers=engine.headers, timeout=120
    )
    assert answer.status_code == 200, answer.text
    assert httpx.get(f"{engine.url}/metrics", headers=engine.headers).status_code == 200
    # gemlora's tools find the token from the URL alone (the start's owner-only file)
    assert engine_headers(engine.url) == engine.headers
    # and it is never on the command line, which `ps` shows every user
    with open(f"/proc/{engine.process.pid}/cmdline", "rb") as cmdline:
        assert engine.token.encode() not in cmdline.read()
    assert os.stat(token_path(engine.config.port)).st_uid == os.getuid()


def test_the_engine_listens_on_loopback_only():
    """Beyond loopback it would need more than a token on a plain-HTTP port: the scale-out
    issue opens it, with auth; until then the config refuses any other address."""
    from pydantic import ValidationError

    from gemlora.serve.engine import EngineConfig

    with pytest.raises(ValidationError, match="host"):
        EngineConfig(base=BASE, host="0.0.0.0")
