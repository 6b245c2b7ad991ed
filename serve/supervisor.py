"""Keeps `gemlora serve`'s processes running: a crashed vLLM engine (or the local MLflow server
it started) is started again.

vLLM's own server has no supervisor (an orchestrator restarts the pod). `gemlora serve` owns the
processes, so it does better: a watcher thread notices one has exited, or, given a `probe`, has
failed `probe_failures` probes in a row (a wedged process, a stuck GPU: alive, not answering;
its process group is killed at once), waits a backoff (doubling from `backoff_s` up to
`max_backoff_s`), starts it again and waits until it is healthy; an engine's hot adapters load
again as part of its start-up. After `max_restarts` restarts within `window_s` it gives up,
says so in one log line, and leaves the gateway answering 503.

While the engine is down the gateway keeps running: requests get a 503 (`engine_unavailable`)
with `Retry-After`, `/health` says why (`ProcessStatus.describe()`), and `/metrics` counts the
restarts (`gemlora_engine_restarts_total`).

    supervisor = Supervisor("engine", lambda: start_engine(config, log), policy)
    supervisor.start()  # starts it; returns once it is healthy
    ...
    supervisor.stop()   # stops watching, then the process
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger("gemlora.supervisor")

State = Literal["starting", "up", "restarting", "gave up", "stopped"]


class RestartPolicy(BaseModel):
    """`restarts:` in the serve config: how `gemlora serve` restarts what crashed."""

    model_config = ConfigDict(extra="forbid")

    max_restarts: int = Field(
        default=5, ge=0, description="Restarts allowed within `window_s`; then it gives up."
    )
    window_s: float = Field(default=600, gt=0, description="The window restarts are counted in.")
    backoff_s: float = Field(
        default=1, ge=0, description="Wait before the first restart; doubles each time."
    )
    max_backoff_s: float = Field(default=30, ge=0, description="The longest wait.")
    poll_s: float = Field(default=0.5, gt=0, description="How often the processes are checked.")
    probe_s: float = Field(
        default=2, gt=0, description="How often a running engine's `/health` is probed."
    )
    probe_timeout_s: float = Field(
        default=3, gt=0, description="A probe without an answer by then has failed."
    )
    probe_failures: int = Field(
        default=3,
        ge=1,
        description="Failed probes in a row that make a running engine hung: its process group "
        "is killed and restarted (the defaults find a stopped engine in 13-16 s).",
    )


@dataclass(frozen=True)
class ProcessStatus:
    state: State
    detail: str = ""  # why it is not up
    restarts: int = 0  # since `gemlora serve` started
    retry_after_s: int = 5  # what a client should wait before trying again

    def describe(self) -> str:
        """What `/health` reports for the process when it is not answering."""
        return f"{self.state}: {self.detail}" if self.detail else self.state


class Supervisor:
    """Starts a child with `start()` (which returns it healthy: anything with a `process` and a
    `stop(timeout_s)`, e.g. an `Engine` or an `MlflowServer`) and restarts it whenever its
    process exits, under `policy`."""

    def __init__(
        self,
        name: str,
        start: Callable[[], object],
        policy: RestartPolicy | None = None,
        on_restart: Callable[[], None] = lambda: None,
        probe: Callable[[object, float], bool] | None = None,
    ) -> None:
        self.name = name
        self._start = start
        self.policy = policy or RestartPolicy()
        self._on_restart = on_restart
        self._probe = probe  # (child, timeout_s) -> answering; None: only exits are noticed
        self._stopping = threading.Event()
        self._restarts: deque[float] = deque()  # times of recent restarts
        self._startup_s = 60.0  # measured on the first start
        self._watcher: threading.Thread | None = None
        self.child = None
        self.status = ProcessStatus("starting")

    def start(self) -> object:
        """Start the child, wait until it is healthy, then watch it in the background."""
        started = time.monotonic()
        self.child = self._start()
        self._startup_s = time.monotonic() - started
        self.status = ProcessStatus("up")
        self._watcher = threading.Thread(
            target=self._watch, name=f"{self.name}-supervisor", daemon=True
        )
        self._watcher.start()
        return self.child

    def stop(self) -> None:
        """Stop watching, then stop the child."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        if self.child is not None:
            self.child.stop()
        self.status = ProcessStatus("stopped", restarts=self.status.restarts)

    # --- the watcher ----------------------------------------------------------------------------

    def _watch(self) -> None:
        failures, next_probe = 0, time.monotonic() + self.policy.probe_s
        while not self._stopping.wait(self.policy.poll_s):
            code = self.child.process.poll()
            if code is not None:
                reason = f"the {self.name} exited with code {code}"
            elif self._probe is None or time.monotonic() < next_probe:
                continue
            else:
                failures = 0 if self._answers() else failures + 1
                next_probe = time.monotonic() + self.policy.probe_s
                if failures < self.policy.probe_failures:
                    continue
                reason = f"the {self.name} stopped answering ({failures} probes failed in a row)"
            if code is None:
                self._kill_hung(reason)
            if not self._restart_after(reason):
                return
            failures, next_probe = 0, time.monotonic() + self.policy.probe_s

    def _answers(self) -> bool:
        try:
            return bool(self._probe(self.child, self.policy.probe_timeout_s))
        except Exception:  # a probe that fails is a failed probe, never the watcher's end
            return False

    def _kill_hung(self, reason: str) -> None:
        """Killed now, not after the backoff (and also when the policy gives up): the gateway
        refuses new requests from this moment, and requests waiting on it end at once (their
        connections close) instead of hanging until their clients give up."""
        self.status = ProcessStatus("restarting", reason, self.status.restarts)
        logger.warning("%s; killing it", reason)
        try:
            self.child.stop(timeout_s=0)
        except Exception as error:
            logger.warning("killing the hung %s: %s", self.name, error)

    def _restart_after(self, reason: str) -> bool:
        """Restart the child (as often as the policy allows); False once it gave up."""
        while not self._stopping.is_set():
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > self.policy.window_s:
                self._restarts.popleft()
            if len(self._restarts) >= self.policy.max_restarts:
                self._give_up(reason)
                return False
            wait = min(self.policy.backoff_s * 2 ** len(self._restarts), self.policy.max_backoff_s)
            self._restarts.append(now)
            restarts = self.status.restarts + 1
            self.status = ProcessStatus(
                "restarting", reason, restarts, max(1, round(wait + self._startup_s))
            )
            logger.warning("%s; restarting it in %.0f s (restart %d)", reason, wait, restarts)
            if self._stopping.wait(wait):
                return False
            try:
                self._on_restart()
                self.child.stop(timeout_s=5)  # whatever is left of the old process group
                self.child = self._start()
            except Exception as error:  # any failure is retried: the watcher must not die
                reason = f"the {self.name} failed to start again ({error})".splitlines()[0]
                logger.warning("%s", reason)
                continue
            self.status = ProcessStatus("up", restarts=restarts)
            logger.warning("the %s is back after restart %d", self.name, restarts)
            return True
        return False

    def _give_up(self, reason: str) -> None:
        window = f"{self.policy.window_s:.0f} s"
        detail = (
            f"{reason}; gave up after {self.policy.max_restarts} restarts within {window}: "
            f"fix the cause (see the {self.name}'s log) and restart `gemlora serve`"
        )
        self.status = ProcessStatus("gave up", detail, self.status.restarts, retry_after_s=600)
        logger.error("%s", detail)
