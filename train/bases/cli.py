"""`gemlora models build|list`."""

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)


@app.command()
def build(
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to build (default: all local bases).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if already built.")] = False,
    method: Annotated[
        str | None,
        typer.Option(
            help="Quantization for gemma-3-270m-w4a16: gptq (calibrated, ~3 min on 2 CPU cores) "
            "or rtn (round-to-nearest, seconds). Default: keep what is built, else gptq."
        ),
    ] = None,
) -> None:
    """Build local Gemma 3 bases into $GEMLORA_HOME/models (a no-op for built ones)."""
    from gemlora.train.bases.build import build_model, buildable_models

    wanted = names or buildable_models()
    unknown = sorted(set(wanted) - set(buildable_models()))
    if unknown:
        raise typer.BadParameter(
            f"cannot build {', '.join(unknown)}; buildable: {', '.join(buildable_models())}",
            param_hint="NAMES",
        )
    for name in wanted:
        typer.echo(f"==> {name}")
        result = build_model(name, force=force, method=method)
        state = "built" if result.built else "already built (use --force to rebuild)"
        typer.echo(f"{name}: {state} at {result.path}")


@app.command("list")
def list_models() -> None:
    """Show every base in the catalogue and whether it is built here."""
    from gemlora.bases import load_catalogue
    from gemlora.train.bases.build import read_manifest

    table = Table("name", "family", "source", "quantization", "multimodal", "status", "location")
    for spec in load_catalogue().values():
        manifest = read_manifest(spec.path or _local_path(spec)) if spec.source == "local" else None
        if spec.source == "hub":
            status = "hub (GPU machines)"
        elif manifest:
            status = f"built ({manifest.get('quantization', {}).get('method', 'bf16')})"
        else:
            status = "not built"
        table.add_row(
            spec.name,
            spec.family,
            spec.source,
            spec.quantization,
            "yes" if spec.multimodal else "no",
            status,
            spec.location,
        )
    Console(width=200).print(table)


def _local_path(spec):
    from pathlib import Path

    return Path(spec.location)
