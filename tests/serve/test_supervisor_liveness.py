"""The supervisor's liveness and its restarts' failures, on real child processes: a child that
stops answering (SIGSTOP: how a wedged server or a stuck GPU looks) is killed and replaced
without a SIGCONT, and a restart that fails with any exception is retried under the policy
instead of ending the watcher thread."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

from gemlora.serve.supervisor import RestartPolicy, Supervisor

FAST = RestartPolicy(
    max_restarts=3,
    window_s=60,
    backoff_s=0.1,
    max_backoff_s=0.5,
    poll_s=0.05,
    probe_s=0.2,
    probe_timeout_s=0.5,
    probe_failures=3,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@dataclass
class Server:
    """A small HTTP server in its own process group, standing in for the engine."""

    process: subprocess.Popen
    url: str

    def stop(self, timeout_s: float = 5) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # also a stopped one
        self.process.wait(timeout=5)


def answers(server: Server, timeout_s: float) -> bool:
    return httpx.get(server.url, timeout=timeout_s).status_code == 200


class Starts:
    """Starts servers (and waits until they answer); `failures` starts raise first."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.servers: list[Server] = []
        self.failures = list(failures or [])

    def __call__(self) -> Server:
        if self.failures:
            raise self.failures.pop(0)
        port = free_port()
        command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        server = Server(process, f"http://127.0.0.1:{port}/")
        self.servers.append(server)

        def up() -> bool:
            try:
                return answers(server, 1)
            except httpx.HTTPError:
                return False

        wait_until(up)
        return server


@pytest.fixture
def starts():
    starts = Starts()
    yield starts
    for server in starts.servers:
        server.stop()


def test_a_child_that_stops_answering_is_killed_and_replaced(starts):
    supervisor = Supervisor("engine", starts, FAST, probe=answers)
    first = supervisor.start()
    time.sleep(1)  # answering: probes pass, nothing restarts
    assert supervisor.status.state == "up" and supervisor.child is first

    stopped = time.monotonic()
    os.kill(first.process.pid, signal.SIGSTOP)
    wait_until(lambda: supervisor.status.state == "restarting")
    detected = time.monotonic() - stopped
    assert "stopped answering (3 probes failed in a row)" in supervisor.status.detail
    assert detected < 5, detected
    wait_until(lambda: supervisor.status.state == "up")

    assert first.process.poll() == -signal.SIGKILL  # killed, never continued
    assert supervisor.child is starts.servers[1] and answers(supervisor.child, 2)
    assert supervisor.status.restarts == 1
    supervisor.stop()


def test_a_restart_that_raises_anything_is_retried_and_the_watcher_lives_on():
    starts = Starts()
    try:
        supervisor = Supervisor("engine", starts, FAST, probe=answers)
        supervisor.start()
        starts.failures = [ValueError("bad config"), KeyError("no such thing")]

        os.killpg(supervisor.child.process.pid, signal.SIGKILL)
        wait_until(lambda: supervisor.status.state == "up" and len(starts.servers) == 2)
        assert supervisor.status.restarts == 3  # two failed starts, then one that worked
        assert supervisor._watcher.is_alive()

        # still watching: the next crash is restarted too
        supervisor.policy = FAST.model_copy(update={"max_restarts": 10})
        os.killpg(supervisor.child.process.pid, signal.SIGKILL)
        wait_until(lambda: len(starts.servers) == 3 and supervisor.status.state == "up")
        supervisor.stop()
    finally:
        for server in starts.servers:
            server.stop()
