"""`gemlora engine start|stop|status`: the vLLM engine as a background service.

A started engine is recorded in `$GEMLORA_HOME/run/engine-<port>.json` (pid, base, URL, log),
which `status` and `stop` read; a record whose process is gone is reported and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from gemlora.config import ConfigError
from gemlora.engine_token import token_path
from gemlora.paths import gemlora_home

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigArgument = Annotated[Path, typer.Argument(help="Serve config (configs/serve/*.yaml).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field: --set engine.port=8200 (repeatable)."),
]


class EngineRecord(BaseModel):
    pid: int
    port: int
    base: str
    served_name: str
    url: str
    log: str
    tracking_uri: str | None
    started_at: float


def run_dir() -> Path:
    return gemlora_home() / "run"


def record_path(port: int) -> Path:
    return run_dir() / f"engine-{port}.json"


def read_records() -> list[EngineRecord]:
    paths = sorted(run_dir().glob("engine-*.json")) if run_dir().is_dir() else []
    return [EngineRecord.model_validate_json(p.read_text()) for p in paths]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@app.command()
def start(
    config_path: ConfigArgument,
    overrides: SetOption = None,
    foreground: Annotated[
        bool, typer.Option(help="Stay attached and stop the engine on Ctrl-C.")
    ] = False,
) -> None:
    """Start vLLM's OpenAI server on 127.0.0.1 for the config's base, routing adapter names
    through the config's registry; returns once it is healthy (1-3 minutes on CPU)."""
    from gemlora.serve.config import load_serve_config
    from gemlora.serve.engine import start_engine

    try:
        config = load_serve_config(config_path, overrides or [])
    except ConfigError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    engine_config = config.engine
    if any(r.port == engine_config.port and process_alive(r.pid) for r in read_records()):
        errors.print(
            f"[red]error:[/red] an engine already runs on port {engine_config.port}; "
            f"`gemlora engine stop --port {engine_config.port}` first, or --set engine.port=..."
        )
        raise typer.Exit(1)
    log = gemlora_home() / "logs" / f"engine-{engine_config.port}.log"
    with console.status(f"starting vLLM on {engine_config.base} (log: {log}) ..."):
        try:
            engine = start_engine(engine_config, log, registry=config.registry)
        except (RuntimeError, TimeoutError, LookupError) as error:
            errors.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from None
    record = EngineRecord(
        pid=engine.process.pid,
        port=engine_config.port,
        base=engine_config.base,
        served_name=engine.served_name,
        url=engine.url,
        log=str(log),
        tracking_uri=config.registry.tracking_uri if config.registry else None,
        started_at=time.time(),
    )
    run_dir().mkdir(parents=True, exist_ok=True)
    record_path(record.port).write_text(record.model_dump_json(indent=2))
    console.print(f"engine ready: {engine.url}/v1 (model {engine.served_name!r}; log {log})")
    console.print(
        f"its internal token (gemlora's tools read it; anything else gets a 401): "
        f"{token_path(engine_config.port)}"
    )
    if foreground:
        with contextlib.suppress(KeyboardInterrupt):
            engine.process.wait()
        engine.stop()
        record_path(record.port).unlink(missing_ok=True)


@app.command()
def stop(
    port: Annotated[
        int | None, typer.Option(help="The engine's port (default: every engine).")
    ] = None,
) -> None:
    """Stop a background engine (SIGTERM, then SIGKILL after 30 s)."""
    from gemlora.serve.engine import stop_process_group

    records = [r for r in read_records() if port is None or r.port == port]
    if not records:
        errors.print(f"no engine recorded{f' on port {port}' if port else ''}")
        raise typer.Exit(1)
    for record in records:
        stop_process_group(record.pid)
        record_path(record.port).unlink(missing_ok=True)
        token_path(record.port).unlink(missing_ok=True)
        console.print(f"stopped the engine on port {record.port} (pid {record.pid})")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show every recorded engine: base, URL, process and health."""
    from gemlora.serve.engine import is_healthy

    rows = []
    for record in read_records():
        alive = process_alive(record.pid)
        state = ("healthy" if is_healthy(record.url) else "starting/unhealthy") if alive else "dead"
        if not alive:
            record_path(record.port).unlink(missing_ok=True)
        rows.append((record, state))
    if as_json:
        typer.echo(json.dumps([r.model_dump() | {"state": s} for r, s in rows], indent=2))
        return
    if not rows:
        console.print("no engines running (start one: gemlora engine start configs/serve/...)")
        return
    table = Table("port", "base", "model", "state", "pid", "registry", "log")
    for record, state in rows:
        table.add_row(
            str(record.port), record.base, record.served_name, state, str(record.pid),
            record.tracking_uri or "-", record.log,
        )  # fmt: skip
    console.print(table)
