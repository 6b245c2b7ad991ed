"""`gemlora eval SPEC.yaml [--set KEY=VALUE]... [--json]`: models side by side on graders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gemlora.config import ConfigError

console = Console()
errors = Console(stderr=True)


def eval_command(
    spec_path: Annotated[
        Path, typer.Argument(metavar="SPEC.yaml", help="An eval spec (configs/eval/).")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a spec field (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run every model on every item through the endpoint, grade the answers, compare each model
    with the baseline (mean difference, paired bootstrap interval, wins/ties/losses) and record
    it in MLflow as GenAI evaluation (traces with assessments)."""
    from gemlora.data import DatasetError
    from gemlora.evals.errors import GraderError
    from gemlora.evals.items import ItemsError, load_items
    from gemlora.evals.run import run_eval
    from gemlora.evals.spec import load_eval_spec
    from gemlora.evals.tracking import record_eval

    try:
        spec = load_eval_spec(spec_path, overrides or [])
        items = load_items(spec.items)
        result = run_eval(spec, items)
    except (ConfigError, ItemsError, GraderError, DatasetError) as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    result = record_eval(spec, items, result)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    print_result(result)


def print_result(result) -> None:
    graders = list(result.models[0].scores)
    means = Table(title=f"{result.name}: {result.items} items, mean score (items graded)")
    means.add_column("model")
    for grader in graders:
        means.add_column(grader, justify="right")
    for model in result.models:
        cells = []
        for grader in graders:
            mean, graded = model.mean(grader), sum(s is not None for s in model.scores[grader])
            cells.append("-" if mean is None else f"{mean:.3f} ({graded})")
        means.add_row(model.model, *cells)
    console.print(means)
    if result.comparisons:
        console.print(comparison_table(result))
    for model in result.models:
        for grader, problems in model.grading_errors.items():
            first = problems[0]
            errors.print(f"{model.model} / {grader}: {len(problems)} not graded, e.g. {first}")
    if result.mlflow_url:
        console.print(f"MLflow: {result.mlflow_url}")


def comparison_table(result) -> Table:
    level = f"{result.comparisons[0].confidence:.0%}"
    table = Table(title=f"against {result.baseline} (paired bootstrap, {level} interval)")
    for column in ("model", "grader", "difference", "interval", "wins/ties/losses", "verdict"):
        table.add_column(column)
    for c in result.comparisons:
        verdict = "better" if c.low > 0 else "worse" if c.high < 0 else "no clear difference"
        table.add_row(
            c.model,
            c.grader,
            f"{c.difference:+.3f}",
            f"[{c.low:+.3f}, {c.high:+.3f}]",
            f"{c.wins}/{c.ties}/{c.losses}",
            verdict,
        )
    return table
