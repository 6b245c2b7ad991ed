"""API keys (401 / 403 / 429), /v1/models filtered by key, /health, /metrics and the access
log. The strict gateway has no engine behind it, so a request that passes every check ends in
a 503 there; these tests need only the MLflow registry."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest
from gateway_helpers import BASE, GatewayServer, free_port
from openai import OpenAI

from gemlora.serve.auth import ApiKey, hash_key, load_keys
from gemlora.serve.gateway import GatewayConfig, GatewaySettings

HELLO = [{"role": "user", "content": "hi"}]


def chat(model: str = BASE) -> dict:
    return {"model": model, "messages": HELLO, "max_tokens": 2}


def client(gateway: GatewayServer, key: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


# --- 401 / 403 / 429 -------------------------------------------------------------------------


def test_missing_key_is_401(strict_gateway):
    response = strict_gateway.post(chat())
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert "Authorization: Bearer" in response.json()["error"]["message"]


def test_wrong_key_is_401_with_the_openai_client(strict_gateway):
    with pytest.raises(openai.AuthenticationError) as raised:
        client(strict_gateway, "gl-not-a-key").chat.completions.create(model=BASE, messages=HELLO)
    assert raised.value.body["code"] == "invalid_api_key"


def test_a_key_may_only_use_its_models(strict_gateway, keys, adapters):
    team = client(strict_gateway, keys.team)
    for model in (adapters.secret, f"{adapters.secret}@candidate", f"{adapters.secret}/1"):
        with pytest.raises(openai.PermissionDeniedError) as raised:
            team.chat.completions.create(model=model, messages=HELLO)
        assert raised.value.body["param"] == "model"
        assert raised.value.body["type"] == "permission_error"
    # Allowed models pass the key check (and then find no engine behind this gateway).
    for model in (BASE, adapters.team, f"{adapters.team}@champion", f"{adapters.team}/1"):
        assert strict_gateway.post(chat(model), keys.team).status_code == 503


def test_a_model_that_is_no_adapter_reference_is_a_404_naming_model(strict_gateway, keys, adapters):
    """The gateway reads references with the registry's parser: what it cannot parse is refused
    as the engine would refuse it, without a trip to the engine (absent here: 503)."""
    for model in (f"{adapters.team}@champion/1", f"{adapters.team}@v2", "team a"):
        refused = strict_gateway.post(chat(model), keys.team)
        assert refused.status_code == 404, model
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("model_not_found", "model")
        assert "invalid adapter reference" in error["message"]


def test_rate_limit_is_429_with_retry_after(strict_gateway, keys):
    statuses = [strict_gateway.post(chat(), keys.slow).status_code for _ in range(3)]
    assert statuses == [503, 503, 429]  # two a minute; the engine is missing, the key is fine
    refused = strict_gateway.post(chat(), keys.slow)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    with pytest.raises(openai.RateLimitError):
        client(strict_gateway, keys.slow).chat.completions.create(model=BASE, messages=HELLO)


# --- /v1/models ------------------------------------------------------------------------------


def model_ids(gateway: GatewayServer, key: str) -> set[str]:
    return {m.id for m in client(gateway, key).models.list()}


def test_models_lists_the_base_and_every_form_of_each_adapter(strict_gateway, keys, adapters):
    ids = model_ids(strict_gateway, keys.admin)
    team = adapters.team
    assert {BASE, team, f"{team}@candidate", f"{team}@champion", f"{team}/1"} <= ids
    assert {adapters.secret, f"{adapters.secret}/1"} <= ids
    cards = {m.id: m for m in client(strict_gateway, keys.admin).models.list()}
    assert cards[team].parent == BASE and cards[BASE].parent is None
    assert cards[team].owned_by == "gemlora" and cards[team].created > 1_700_000_000


def test_a_key_does_not_see_models_it_may_not_use(strict_gateway, keys, adapters):
    ids = model_ids(strict_gateway, keys.team)
    assert BASE in ids and adapters.team in ids
    assert not any(i.startswith(adapters.secret) for i in ids)


def test_models_needs_a_key(strict_gateway):
    assert httpx.get(f"{strict_gateway.url}/v1/models").status_code == 401


# --- operations ------------------------------------------------------------------------------


def test_health_reports_the_engine_and_the_registry(strict_gateway):
    response = httpx.get(f"{strict_gateway.url}/health")
    assert response.status_code == 503
    assert response.json()["registry"] == "ok"
    assert response.json()["engine"].startswith("unreachable")


def test_metrics_count_requests_by_adapter_and_key(strict_gateway, keys, adapters):
    strict_gateway.post(chat(adapters.team), keys.team)  # allowed; no engine: 503
    strict_gateway.post(chat(adapters.secret), keys.team)  # 403
    metrics = httpx.get(f"{strict_gateway.url}/metrics").text
    team = f'adapter="{adapters.team}",key_id="team"'
    assert f'gemlora_gateway_requests_total{{{team},status="503"}}' in metrics
    unavailable = f'adapter="{adapters.team}",code="engine_unavailable",key_id="team"'
    assert f"gemlora_gateway_errors_total{{{unavailable}}}" in metrics
    # A name the key may not use is no label (callers could make one per request).
    refused = 'adapter="-",code="model_not_allowed",key_id="team"'
    assert f"gemlora_gateway_errors_total{{{refused}}}" in metrics
    assert adapters.secret not in metrics


def test_access_log_is_json_with_request_ids_and_no_keys(strict_gateway, keys, caplog):
    caplog.set_level(logging.INFO, logger="gemlora.gateway.access")
    response = strict_gateway.post(chat(), keys.admin)
    strict_gateway.post(chat(), "gl-a-wrong-key")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    assert lines[0]["request_id"] == response.headers["x-request-id"]
    assert lines[0] | {"duration_ms": 0} == lines[0] | {
        "key_id": "admin",
        "model": BASE,
        "status": 503,
        "code": "engine_unavailable",
        "duration_ms": 0,
    }
    assert lines[1]["status"] == 401 and lines[1]["key_id"] == "-"
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert keys.admin not in logged and "gl-a-wrong-key" not in logged


# --- keys and config -------------------------------------------------------------------------


def test_keys_load_from_a_file_and_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n  - id: a\n    sha256: {hash_key('one')}\n    models: ['x-*']\n"
        "    requests_per_minute: 5\n"
    )
    from_env = {"keys": [{"id": "b", "sha256": hash_key("two")}]}
    monkeypatch.setenv("GEMLORA_API_KEYS", json.dumps(from_env))
    loaded = load_keys(path)
    assert [k.id for k in loaded] == ["a", "b"]
    assert loaded[0].may_use("x-bot") and not loaded[0].may_use("y-bot")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("keys:\n  - id: a\n    sha256: not-a-hash\n", r"keys\[0\]\.sha256: String should match"),
        ("keys: [{id: a, key: plain, sha256: " + "a" * 64 + "}]", r"keys\[0\]\.key: Extra inputs"),
        ("keys: [", "not YAML"),
        (
            "keys: [{id: a, sha256: " + "a" * 64 + "}, {id: a, sha256: " + "b" * 64 + "}]",
            "duplicate",
        ),
    ],
)
def test_bad_keys_files_are_refused_naming_the_problem(tmp_path, monkeypatch, text, problem):
    monkeypatch.delenv("GEMLORA_API_KEYS", raising=False)
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        load_keys(path)


def test_auth_off_only_on_loopback():
    assert not GatewayConfig(auth=False).auth
    with pytest.raises(ValueError, match="only listens on loopback"):
        GatewayConfig(auth=False, host="0.0.0.0")
    assert GatewayConfig(host="0.0.0.0").auth  # with keys, any address


def test_auth_on_without_keys_refuses_to_start(monkeypatch):
    from gemlora.serve.gateway import create_app

    monkeypatch.delenv("GEMLORA_API_KEYS", raising=False)
    settings = GatewaySettings(GatewayConfig(), engine_url="http://127.0.0.1:1", base=BASE)
    with pytest.raises(ValueError, match="no API keys"):
        create_app(settings)


def test_without_auth_every_model_is_open_on_loopback(keys):
    settings = GatewaySettings(
        GatewayConfig(auth=False), engine_url=f"http://127.0.0.1:{free_port()}", base=BASE
    )
    server = GatewayServer(settings, free_port())
    try:
        assert server.post(chat("any-adapter@x")).status_code == 503  # past auth, no engine
        ids = {m.id for m in client(server, "unused").models.list()}
        assert ids == {BASE}
    finally:
        server.stop()


def test_api_key_ids_are_checked():
    with pytest.raises(ValueError):
        ApiKey(id="has space", sha256=hash_key("x"))
