"""The supervisor `gemlora serve` runs its engine and MLflow server under, on real child
processes (a sleeping Python process stands in for the server: the same `process` and `stop`):
a killed child is started again after its backoff, repeated crashes within the window make it
give up with the reason, and stopping it stops the child. The engine itself, killed under a
real `gemlora serve`, is in tests/gateway/test_gateway_serve_cli.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from gemlora.serve.supervisor import RestartPolicy, Supervisor


@dataclass
class Child:
    process: subprocess.Popen

    def stop(self, timeout_s: float = 5) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=timeout_s)


class Starts:
    """Starts children and remembers them."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def __call__(self) -> Child:
        sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
        self.children.append(Child(subprocess.Popen(sleeper)))
        return self.children[-1]


FAST = RestartPolicy(max_restarts=2, window_s=60, backoff_s=0.2, max_backoff_s=1, poll_s=0.05)


def wait_until(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def starts():
    starts = Starts()
    yield starts
    for child in starts.children:
        child.stop()


def test_a_killed_child_is_started_again(starts):
    restarts = []
    supervisor = Supervisor("engine", starts, FAST, on_restart=lambda: restarts.append(1))
    first = supervisor.start()
    assert supervisor.status.state == "up"

    os.kill(first.process.pid, signal.SIGKILL)
    wait_until(lambda: supervisor.status.state == "restarting")
    assert supervisor.status.detail == f"the engine exited with code {-signal.SIGKILL}"
    assert supervisor.status.retry_after_s >= 1
    wait_until(lambda: supervisor.status.state == "up")

    assert len(starts.children) == 2 and supervisor.child is starts.children[1]
    assert supervisor.child.process.poll() is None
    assert (supervisor.status.restarts, restarts) == (1, [1])
    supervisor.stop()
    assert supervisor.child.process.poll() is not None
    assert supervisor.status.state == "stopped"


def test_it_gives_up_after_the_allowed_restarts_within_the_window(starts, caplog):
    supervisor = Supervisor("engine", starts, FAST)
    supervisor.start()
    for restart in range(FAST.max_restarts):
        os.kill(supervisor.child.process.pid, signal.SIGKILL)
        wait_until(lambda n=restart: supervisor.status.restarts == n + 1)
        wait_until(lambda: supervisor.status.state == "up")
    os.kill(supervisor.child.process.pid, signal.SIGKILL)
    wait_until(lambda: supervisor.status.state == "gave up")

    assert len(starts.children) == 1 + FAST.max_restarts  # no further start
    assert "gave up after 2 restarts within 60 s" in supervisor.status.describe()
    assert "gave up after 2 restarts" in caplog.text
    supervisor.stop()


def test_the_backoff_doubles(starts):
    policy = FAST.model_copy(update={"max_restarts": 3, "backoff_s": 0.3, "max_backoff_s": 10})
    supervisor = Supervisor("engine", starts, policy)
    supervisor.start()
    waits = []
    for restart in range(2):
        os.kill(supervisor.child.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda n=restart: supervisor.status.restarts == n + 1 and
                   supervisor.status.state == "up")  # fmt: skip
        waits.append(time.monotonic() - killed)
    supervisor.stop()
    assert waits[0] >= 0.3 and waits[1] >= 0.6


def test_stopping_a_process_group_returns_once_its_leader_exits():
    """The leader is our child: a stop reaps it instead of waiting its whole timeout on the
    zombie (which used to cost every engine stop 30 s)."""
    from gemlora.serve.engine import stop_process_group

    leader = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    stopper = threading.Thread(
        target=stop_process_group, args=(leader.pid, 600), kwargs={"leader": leader}
    )
    stopper.start()
    stopper.join(timeout=30)
    assert not stopper.is_alive(), "stop_process_group waited on an exited leader"
    assert leader.returncode == -signal.SIGTERM
