"""MLflow goes away under the real gateway and tiny engine: an adapter resolved before keeps
serving (from the engine's verified cache, past its alias TTL), a name never resolved gets 503
`registry_unavailable` with `Retry-After`, and /health says `degraded` but stays ready. When
MLflow is back on the same port, the new name serves without restarting anything. The
session's MLflow server is stopped for this and started again on the same data and port."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlparse

import httpx
import openai
import pytest
from gateway_helpers import BASE, save_tiny_adapter
from openai import OpenAI

from gemlora.adapters import AdapterMetadata
from gemlora.adapters.mlflow_server import start_mlflow_server

pytestmark = pytest.mark.engine

PAST_ALIAS_TTL_S = 4  # the session's engines look a name up again after 3 s (tests/conftest.py)


def start_again(server) -> None:
    """What an operator's restart does: the same data, the same port."""
    fresh = start_mlflow_server(server.home, port=urlparse(server.url).port)
    server.process, server.log_path = fresh.process, fresh.log_path


def greedy(client: OpenAI, model: str) -> str:
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    completion = client.chat.completions.create(
        model=model, messages=messages, max_tokens=6, temperature=0
    )
    return completion.choices[0].message.content


def test_with_mlflow_down_resolved_adapters_serve_new_names_get_503_and_it_recovers(
    gateway, keys, registry, mlflow_server, built_models, tmp_path
):
    suffix = uuid.uuid4().hex[:6]
    seen, unseen = f"outage-seen-{suffix}", f"outage-unseen-{suffix}"
    for name, seed in ((seen, 21), (unseen, 22)):
        adapter = save_tiny_adapter(built_models[BASE], tmp_path / name, seed=seed)
        registry.register(adapter, name, AdapterMetadata(base=BASE))
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=keys.admin, max_retries=0)
    before = greedy(client, seen)

    mlflow_server.stop()
    try:
        time.sleep(PAST_ALIAS_TTL_S)  # the engine must ask MLflow again, and cannot
        assert greedy(client, seen) == before
        with pytest.raises(openai.APIStatusError) as refused:
            greedy(client, unseen)
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "registry_unavailable"
        assert int(refused.value.response.headers["retry-after"]) >= 1
        health = httpx.get(f"{gateway.url}/health")
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "degraded"
        assert health.json()["registry"].startswith("unreachable")
    finally:
        start_again(mlflow_server)

    assert greedy(client, unseen)  # no restart of the engine or the gateway
    assert greedy(client, seen) == before
    assert httpx.get(f"{gateway.url}/health").json()["status"] == "ok"
