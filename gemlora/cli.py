"""The `gemlora` command. Each package contributes its sub-commands from its own CLI modules
(`cli.py`; serve: `engine_cli.py`, `launcher.py`, `keys_cli.py`); this module only mounts them,
so `gemlora --help` stays fast (torch loads on first use)."""

import typer

from gemlora.adapters.cli import app as adapters_app
from gemlora.data.cli import app as data_app
from gemlora.evals.cli import eval_command
from gemlora.serve.engine_cli import app as engine_app
from gemlora.serve.keys_cli import app as keys_app
from gemlora.serve.launcher import serve_command
from gemlora.train.bases.cli import app as models_app
from gemlora.train.cli import train_command, ui_command

app = typer.Typer(
    name="gemlora",
    help="LoRA fine-tuning and adapter serving for Gemma 3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models", help="Build and list the local Gemma 3 bases.")
app.add_typer(
    data_app,
    name="data",
    help="Validate and preview chat, preference and reinforcement prompt datasets.",
)
app.add_typer(adapters_app, name="adapters", help="Register, alias and resolve LoRA adapters.")
app.command("train")(train_command)
app.command("ui")(ui_command)
app.command("eval")(eval_command)
app.add_typer(engine_app, name="engine", help="Start, stop and inspect the vLLM engine.")
app.command("serve")(serve_command)
app.add_typer(keys_app, name="keys", help="Create API keys for the gateway.")


@app.command()
def version() -> None:
    """Print gemlora's version."""
    from gemlora import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
