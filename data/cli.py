"""`gemlora data validate|preview` (placeholder until the data package lands)."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Validate and preview chat datasets."""
