"""A local MLflow tracking server: SQLite backend, proxied artifact store, loopback only.

<home>/mlflow/mlflow.db        runs, metrics, registered models, aliases
<home>/mlflow/artifacts/       run artifacts, adapter files included
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class MlflowServer:
    """A running `mlflow server` process (its own process group)."""

    url: str
    home: Path
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM the whole group (uvicorn runs workers), SIGKILL what is left after
        `timeout_s`."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=5)

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def server_command(home: Path, port: int, host: str, workers: int) -> list[str]:
    data = home / "mlflow"
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{data / 'mlflow.db'}",
        "--artifacts-destination", str(data / "artifacts"),
        "--serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "true"
    # The job runner starts a pool of huey consumers for GenAI jobs gemlora never submits.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def start_mlflow_server(
    home: Path,
    port: int = 5000,
    host: str = "127.0.0.1",
    *,
    workers: int = 1,
    timeout_s: float = 120,
) -> MlflowServer:
    """Start `mlflow server` on `host:port` with its data under `home/mlflow/` and wait until
    `/health` answers. Only loopback addresses are accepted."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the MLflow server binds loopback addresses only, not {host}")
    home = Path(home)
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    log_path = home / "mlflow" / f"server-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            server_command(home, port, host, workers),
            env=server_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = MlflowServer(f"http://{host}:{port}", home, process, log_path)
    _wait_healthy(server, timeout_s)
    return server


def _wait_healthy(server: MlflowServer, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with code {server.process.returncode}; "
                f"log {server.log_path}:\n{_tail(server.log_path)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    server.stop()
    raise TimeoutError(
        f"mlflow server not healthy after {timeout_s:.0f}s; log {server.log_path}:\n"
        f"{_tail(server.log_path)}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
