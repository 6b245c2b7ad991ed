"""`gemlora serve CONFIG.yaml` end to end: it starts MLflow (the config names a local server
that is not running), the vLLM engine and the gateway; the openai client gets an answer; the
engine, SIGKILLed, is restarted while the gateway answers 503 with Retry-After and says why in
/health; the engine, SIGSTOPped (hung: alive but not answering), is found by the supervisor's
probes, killed and replaced without a SIGCONT while requests get a 503 at once; SIGTERM (what an
orchestrator sends; Ctrl-C takes the same path) stops all three.
Also `gemlora keys new` and the commands' --help."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml
from gateway_helpers import BASE, free_port
from openai import OpenAI

from gemlora.engine_token import engine_token
from gemlora.paths import models_dir
from gemlora.serve.auth import load_keys

GEMLORA = [sys.executable, "-m", "gemlora.cli"]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"gemlora serve exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not healthy after {timeout_s:.0f} s")


def engine_process_group(port: int) -> int:
    """The process group of the vLLM server listening on `port` (it leads its own group)."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "vllm.entrypoints.openai.api_server" in command and str(port) in command:
            return os.getpgid(process.pid)
    raise AssertionError(f"no vLLM server on port {port}")


def only_the_gateway_reaches_the_engine(engine_url: str, home) -> str:
    """The engine's port refuses a request without the token of its current start (written,
    owner-only, under the server's $GEMLORA_HOME); returns that token."""
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    assert httpx.post(f"{engine_url}/v1/chat/completions", json=body).status_code == 401
    token = engine_token(engine_url, home)
    assert token is not None
    with_token = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{engine_url}/v1/models", headers=with_token).status_code == 200
    return token


def kill_engine_and_see_it_restarted(url: str, engine_port: int) -> None:
    """SIGKILL the engine mid-stream: the stream ends with an error event and [DONE]; requests
    get a 503 with Retry-After and /health names the crash, until the supervisor has it serving
    again (its start-up time, then requests succeed)."""
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}]}
    long_answer = body | {"stream": True, "max_tokens": 900, "stop": []}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=long_answer, timeout=60) as stream:
        events = stream.iter_lines()
        assert next(events).startswith("data: ")  # generating
        os.killpg(engine_process_group(engine_port), signal.SIGKILL)
        rest = [line for line in events if line]
    assert rest[-1] == "data: [DONE]", rest[-3:]
    error = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert error["code"] == "engine_stream_broken" and error["message"], error
    deadline = time.monotonic() + 30
    while not (health := httpx.get(f"{url}/health").json())["engine"].startswith("restarting"):
        assert time.monotonic() < deadline, f"the supervisor never saw the engine go: {health}"
        time.sleep(0.2)
    assert health["engine"] == "restarting: the engine exited with code -9", health
    refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "engine_unavailable"

    deadline = time.monotonic() + 600
    while httpx.get(f"{url}/health").json()["engine"] != "ok":
        assert time.monotonic() < deadline, "the engine never came back"
        time.sleep(1)
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert "gemlora_engine_restarts_total 1.0" in httpx.get(f"{url}/metrics").text


def stop_engine_and_see_it_replaced(url: str, engine_port: int) -> float:
    """SIGSTOP the engine's server (a wedged process, a stuck GPU): within the probes' time the
    supervisor finds it hung; the stream and the request waiting on it end with a clean error,
    new requests get a 503 with Retry-After at once, and a new engine serves, without SIGCONT.
    Returns the seconds from the SIGSTOP to the end of the waiting stream."""
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}]}
    long_answer = body | {"max_tokens": 900, "stop": []}
    waiting: list[httpx.Response] = []
    chat = f"{url}/v1/chat/completions"
    old_group = engine_process_group(engine_port)
    with httpx.stream("POST", chat, json=long_answer | {"stream": True}, timeout=60) as stream:
        events = stream.iter_lines()
        assert next(events).startswith("data: ")  # generating
        waiter = threading.Thread(
            target=lambda: waiting.append(httpx.post(chat, json=long_answer, timeout=60))
        )
        waiter.start()
        time.sleep(0.5)
        os.kill(old_group, signal.SIGSTOP)  # the server process only, as `kill -STOP` does
        stopped = time.monotonic()
        rest = [line for line in events if line]
    detected_s = time.monotonic() - stopped
    assert rest[-1] == "data: [DONE]", rest[-3:]
    error = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert error["code"] == "engine_stream_broken", error
    assert detected_s < 20, detected_s  # 3 probes, 1 s apart, 2 s timeout each (the config)

    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["engine"].startswith("restarting: the engine stopped answering"), health
    started = time.monotonic()
    refused = httpx.post(chat, json=body, timeout=30)
    assert time.monotonic() - started < 2, "a request waited on the hung engine"
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "engine_unavailable"
    waiter.join(timeout=30)
    assert waiting and waiting[0].status_code in (503, 504), waiting
    assert waiting[0].json()["error"]["code"] in ("engine_unavailable", "engine_timeout")

    deadline = time.monotonic() + 600
    while httpx.get(f"{url}/health", timeout=10).json()["engine"] != "ok":
        assert time.monotonic() < deadline, "the engine never came back"
        time.sleep(1)
    assert engine_process_group(engine_port) != old_group  # a new engine, not the old one
    assert httpx.post(chat, json=body, timeout=120).status_code == 200
    assert "gemlora_engine_restarts_total 2.0" in httpx.get(f"{url}/metrics").text
    with contextlib.suppress(ProcessLookupError):
        os.killpg(old_group, 0)
        raise AssertionError("the hung engine's process group is still there")
    return detected_s


@pytest.mark.engine
@pytest.mark.slow
def test_serve_starts_mlflow_engine_and_gateway_and_sigterm_stops_them(built_models, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(models_dir())  # the built bases; everything else in tmp
    ports = {"mlflow": free_port(), "engine": free_port(), "gateway": free_port()}
    config = {
        "engine": {"base": BASE, "port": ports["engine"], "max_num_seqs": 4},
        "registry": {"tracking_uri": f"http://127.0.0.1:{ports['mlflow']}"},
        "gateway": {"port": ports["gateway"], "defaults": {"max_tokens": 4}},
        # liveness probes quicker than the defaults (2 s apart, 3 s timeout), to keep it short
        "restarts": {"probe_s": 1, "probe_timeout_s": 2, "probe_failures": 3},
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [*GEMLORA, "serve", str(path), "--no-auth"],
        env=dict(os.environ, GEMLORA_HOME=str(home)),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{ports['gateway']}"
    try:
        wait_healthy(url, process, timeout_s=600)
        assert httpx.get(f"{url}/health").json()["registry"] == "ok"
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "Hi"}]
        )
        assert completion.usage.completion_tokens <= 4  # the config's default max_tokens
        assert all(listening(port) for port in ports.values())
        engine_url = f"http://127.0.0.1:{ports['engine']}"
        first_token = only_the_gateway_reaches_the_engine(engine_url, home)
        kill_engine_and_see_it_restarted(url, ports["engine"])
        # the restarted engine has a token of its own; the gateway follows it, the old one is out
        assert only_the_gateway_reaches_the_engine(engine_url, home) != first_token
        old = {"Authorization": f"Bearer {first_token}"}
        assert httpx.get(f"{engine_url}/v1/models", headers=old).status_code == 401
        detected_s = stop_engine_and_see_it_replaced(url, ports["engine"])
        print(f"hung engine: its waiting stream ended {detected_s:.1f} s after the SIGSTOP")

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:  # a failed check: stop it so that it stops its children too
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=90)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert "started MLflow" in output and "stopped" in output
    assert "the engine exited with code -9; restarting it" in output
    assert "the engine is back after restart 1" in output
    assert "the engine stopped answering (3 probes failed in a row); restarting it" in output
    assert "the engine is back after restart 2" in output
    deadline = time.monotonic() + 30
    while any(listening(port) for port in ports.values()):
        assert time.monotonic() < deadline, f"still listening: {ports}\n{output}"
        time.sleep(0.5)


def test_no_auth_refuses_a_public_host_in_the_config(tmp_path):
    config = {"engine": {"base": BASE}, "gateway": {"host": "0.0.0.0", "auth": False}}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([*GEMLORA, "serve", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "only listens on loopback" in result.stderr


def test_keys_new_stores_only_the_hash(tmp_path, monkeypatch):
    monkeypatch.delenv("GEMLORA_API_KEYS", raising=False)
    keys_file = tmp_path / "keys.yaml"
    command = [*GEMLORA, "keys", "new", "team-a", "--file", str(keys_file)]
    result = subprocess.run(
        [*command, "--model", "team-a-*", "--rpm", "30"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip().splitlines()[-1]
    assert secret.startswith("gl-") and secret not in keys_file.read_text()
    (key,) = load_keys(keys_file)
    assert (key.id, key.models, key.requests_per_minute) == ("team-a", ("team-a-*",), 30)
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 1 and "already has a key 'team-a'" in again.stderr


@pytest.mark.parametrize("command", [["serve"], ["keys", "new"]])
def test_commands_have_help(command):
    result = subprocess.run([*GEMLORA, *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "Usage" in result.stdout
