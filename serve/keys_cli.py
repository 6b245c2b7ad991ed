"""`gemlora keys new ID --file KEYS.yaml`: a new API key for the gateway, stored hashed in a
keys file (the format: `gemlora.serve.auth`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(no_args_is_help=True, help="Create API keys for the gateway.")


@app.command("new")
def new_key_command(
    key_id: Annotated[str, typer.Argument(help="Name of the key in logs and metrics.")],
    keys_file: Annotated[
        Path, typer.Option("--file", help="Keys file to add the key to (created if missing).")
    ],
    models: Annotated[
        list[str] | None,
        typer.Option("--model", help="fnmatch pattern of models it may use (repeatable)."),
    ] = None,
    rpm: Annotated[
        int | None, typer.Option("--rpm", help="Requests per minute (default: unlimited).")
    ] = None,
) -> None:
    """Create an API key: its sha256 goes into the keys file, the key is printed once."""
    from gemlora.serve.auth import ApiKey, hash_key, keys_document, new_key, parse_keys

    try:
        existing = parse_keys(keys_file.read_text(), str(keys_file)) if keys_file.exists() else []
    except ValueError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    if any(key.id == key_id for key in existing):
        errors.print(f"[red]error:[/red] {keys_file} already has a key {key_id!r}")
        raise typer.Exit(1)
    secret = new_key()
    try:
        key = ApiKey(
            id=key_id,
            sha256=hash_key(secret),
            models=tuple(models or ["*"]),
            requests_per_minute=rpm,
        )
    except ValueError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    keys_file.write_text(keys_document([*existing, key]))
    keys_file.chmod(0o600)
    console.print(f"added key {key_id!r} to {keys_file}; the key (shown only now):")
    typer.echo(secret)
