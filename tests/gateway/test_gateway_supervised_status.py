"""While `gemlora serve`'s supervisor says the engine is not up, /health and requests agree: a
restarted engine answers its own /health before its start-up is done (hot adapters loading),
and neither /health nor a request may call it ready before the supervisor does. The real tiny
engine (answering, healthy) stands behind a gateway whose supervisor status the test sets."""

from __future__ import annotations

import httpx
import pytest
from gateway_helpers import BASE, GatewayServer, free_port

from gemlora.serve.gateway import GatewayConfig, GatewaySettings
from gemlora.serve.supervisor import ProcessStatus

pytestmark = pytest.mark.engine


def test_health_and_requests_follow_the_supervisor_while_the_engine_answers(engines):
    supervised = {"status": ProcessStatus("restarting", "the engine exited with code -9", 1, 7)}
    settings = GatewaySettings(
        GatewayConfig(auth=False),
        engine_url=engines.get(BASE).url,
        base=BASE,
        engine_status=lambda: supervised["status"],
    )
    server = GatewayServer(settings, free_port())
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    try:
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503
        assert health.json()["engine"] == "restarting: the engine exited with code -9"
        refused = server.post(body)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
        assert refused.json()["error"]["code"] == "engine_unavailable"

        supervised["status"] = ProcessStatus("up", restarts=1)
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 200 and health.json()["engine"] == "ok", health.text
        assert server.post(body).status_code == 200
    finally:
        server.stop()
