"""`gemlora serve CONFIG.yaml`: MLflow (when the registry is a local server that is not running),
the vLLM engine and the gateway, in the foreground; Ctrl-C (or SIGTERM) stops all three. A
crashed engine or MLflow server is restarted (`serve/supervisor.py`, the config's `restarts:`).

It starts the whole stack, so it sits beside the gateway and the engine rather than in either.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def serve_command(
    config_path: Annotated[Path, typer.Argument(help="Serve config (configs/serve/*.yaml).")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field: --set gateway.port=8001 (repeatable)."),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="No API keys (local use only: binds 127.0.0.1)."),
    ] = False,
) -> None:
    """Serve the config's base and registry adapters behind the OpenAI-compatible gateway.

    Starts MLflow if the registry is a local server that is not running, then the vLLM engine
    (1-3 minutes on CPU), then the gateway; Ctrl-C or SIGTERM stops all of them. A crashed
    engine or MLflow server is started again (backoff, and a limit: the config's `restarts`)."""
    from gemlora.config import ConfigError
    from gemlora.serve.config import load_serve_config
    from gemlora.signals import sigterm_as_ctrl_c

    overrides = list(overrides or [])
    if no_auth:
        overrides += ["gateway.auth=false", "gateway.host=127.0.0.1"]
    try:
        config = load_serve_config(config_path, overrides)
    except ConfigError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    _log_supervisor_to_stderr()
    # uvicorn stops the gateway on SIGTERM, then raises it again: as KeyboardInterrupt, so that
    # the engine and MLflow stop too.
    sigterm_as_ctrl_c()
    with contextlib.ExitStack() as running:
        try:
            _start_mlflow_if_local(config, running)
            supervisor = _start_engine(config, running)
            _run_gateway(config, supervisor)
        except KeyboardInterrupt:
            console.print("stopping ...")
        except (RuntimeError, TimeoutError, ValueError, LookupError) as error:
            errors.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from None
    console.print("stopped")


def _log_supervisor_to_stderr() -> None:
    """Crashes and restarts are news for whoever runs `gemlora serve`."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    supervisor_log = logging.getLogger("gemlora.supervisor")
    supervisor_log.addHandler(handler)
    supervisor_log.setLevel(logging.INFO)


def _start_mlflow_if_local(config, running: contextlib.ExitStack) -> None:
    from gemlora.adapters import start_mlflow_server
    from gemlora.paths import gemlora_home
    from gemlora.serve.supervisor import Supervisor

    registry = config.registry
    if registry is None:
        return
    url = urlparse(registry.tracking_uri)
    if url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost"):
        return  # a remote server or a database: not ours to start
    if _answers(f"{registry.tracking_uri.rstrip('/')}/health"):
        console.print(f"registry: MLflow already running at {registry.tracking_uri}")
        return

    def healthy_server():
        return start_mlflow_server(gemlora_home(), url.port or 80)

    supervisor = Supervisor("MLflow server", healthy_server, config.restarts)
    with console.status(f"starting MLflow at {registry.tracking_uri} ..."):
        server = supervisor.start()
    running.callback(supervisor.stop)
    console.print(f"registry: started MLflow at {server.url} (data in {gemlora_home()}/mlflow)")


def _start_engine(config, running: contextlib.ExitStack):
    """The engine under a supervisor that restarts it when it crashes."""
    from gemlora.paths import gemlora_home
    from gemlora.serve.engine import start_engine
    from gemlora.serve.supervisor import Supervisor

    log = gemlora_home() / "logs" / f"engine-{config.engine.port}.log"

    def healthy_engine():
        engine = start_engine(config.engine, log, registry=config.registry, wait=False)
        try:
            engine.wait_ready()
        except BaseException:  # also Ctrl-C during start-up: no engine left behind
            engine.stop()
            raise
        return engine

    def answers(engine, timeout_s: float) -> bool:
        # liveness: a stopped or wedged engine has a live process and no answers
        import httpx

        return httpx.get(f"{engine.url}/health", timeout=timeout_s).status_code == 200

    supervisor = Supervisor("engine", healthy_engine, config.restarts, probe=answers)
    with console.status(f"starting vLLM on {config.engine.base} (log: {log}) ..."):
        engine = supervisor.start()
    running.callback(supervisor.stop)
    console.print(f"engine: {engine.url} serving {engine.served_name!r}")
    return supervisor


def _run_gateway(config, supervisor) -> None:
    from gemlora.adapters import AdapterRegistry
    from gemlora.serve.gateway import GatewaySettings, run_gateway

    gateway, engine = config.gateway, supervisor.child
    registry = AdapterRegistry(config.registry) if config.registry else None
    settings = GatewaySettings(
        gateway,
        engine.url,
        config.engine.base,
        engine.served_name,
        registry,
        engine_dtype=config.engine.dtype,
        jobs=config.jobs,
        engine_status=lambda: supervisor.status,
        engine_token=lambda: supervisor.child.token,  # a restart's new token, at once
    )
    auth = "API keys required" if gateway.auth else "no auth (loopback only)"
    console.print(f"gateway: http://{gateway.host}:{gateway.port}/v1 ({auth}); Ctrl-C stops")
    if config.jobs is not None:
        store, workers = config.jobs.store_dir(), config.jobs.max_concurrent
        console.print(
            f"fine-tuning jobs: /v1/files, /v1/fine_tuning/jobs ({store}, {workers} worker(s))"
        )
    run_gateway(settings)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
