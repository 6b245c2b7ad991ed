"""`gemlora adapters list|show|alias|promote|rm|import|resolve|verify`.

Every command talks to the MLflow registry at `--tracking-uri` (default $MLFLOW_TRACKING_URI, else
the local server http://127.0.0.1:5000). Errors print one clear message and exit 1.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gemlora.adapters.errors import AdapterError, IncompatibleAdapterError
from gemlora.adapters.eval_record import describe_eval
from gemlora.adapters.registry import (
    CANDIDATE,
    DEFAULT_TRACKING_URI,
    AdapterRegistry,
    AdapterVersion,
    RegistryConfig,
)
from gemlora.adapters.verification_record import DEFAULT_TOLERANCE
from gemlora.adapters.verification_record import describe as describe_verification

app = typer.Typer(no_args_is_help=True)
# soft_wrap: messages stay one line each for scripts and grep; tables still fit the terminal.
console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

NameArgument = Annotated[str, typer.Argument(help="Adapter name.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# At a terminal a dead server should fail in seconds, not after MLflow's minutes of retries.
_CLI_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@dataclass
class _Options:
    tracking_uri: str | None
    cache_dir: Path | None
    default_alias: str | None


@app.callback()
def callback(
    ctx: typer.Context,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow server URL or database URI (default: $MLFLOW_TRACKING_URI, else "
            f"{DEFAULT_TRACKING_URI})."
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where resolved adapters are cached (default: $GEMLORA_HOME/adapter-cache)."
        ),
    ] = None,
    default_alias: Annotated[
        str | None, typer.Option(help="What a bare NAME resolves to (default: champion).")
    ] = None,
) -> None:
    """Register, alias, promote and resolve LoRA adapters in the MLflow Model Registry.

    References: NAME@ALIAS, NAME/VERSION, or NAME (the default alias when set, else the newest
    version).
    """
    ctx.obj = _Options(tracking_uri, cache_dir, default_alias)


@app.command("list")
def list_adapters(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List every adapter with its versions, aliases and base."""
    with _registry(ctx) as registry:
        adapters = registry.list()
    if as_json:
        console.print_json(data=[a.model_dump(mode="json") for a in adapters])
        return
    if not adapters:
        console.print(f"no adapters registered at {registry.config.tracking_uri}")
        return
    table = Table("Name", "Versions", "Latest", "Aliases", "Base", "Updated")
    for adapter in adapters:
        table.add_row(
            adapter.name,
            str(adapter.version_count),
            str(adapter.latest_version or "-"),
            _aliases(adapter.aliases),
            adapter.base or "-",
            f"{adapter.updated_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@app.command()
def show(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """Show one adapter: aliases and every version with its metadata."""
    with _registry(ctx) as registry:
        details = registry.show(name)
    if as_json:
        console.print_json(details.model_dump_json())
        return
    console.print(f"[bold]{escape(details.name)}[/bold]  {escape(details.description)}")
    console.print(f"aliases: {_aliases(details.aliases)}")
    table = Table(
        "Version", "Aliases", "Base", "Rank", "Targets", "Eval", "Verified", "Gate", "Digest",
        "Size", "Created",
    )  # fmt: skip
    for version in details.versions:
        table.add_row(*_version_row(version))
    console.print(table)


@app.command()
def alias(
    ctx: typer.Context,
    name: NameArgument,
    alias: Annotated[str, typer.Argument(help="Alias to set, move or delete.")],
    version: Annotated[int | None, typer.Argument(help="Version the alias points at.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Delete the alias.")] = False,
) -> None:
    """Point ALIAS of NAME at VERSION (set or move it), or delete it with --delete."""
    with _registry(ctx) as registry:
        if delete:
            registry.delete_alias(name, alias)
            console.print(f"deleted alias {name}@{alias}")
            return
        if version is None:
            raise AdapterError("give the VERSION the alias points at, or --delete")
        registry.set_alias(name, alias, version)
    console.print(f"{name}@{alias} -> version {version}")


@app.command()
def promote(
    ctx: typer.Context,
    name: NameArgument,
    version: Annotated[
        int | None, typer.Option(help=f"Version to promote (default: the {CANDIDATE} alias's).")
    ] = None,
    to: Annotated[str | None, typer.Option(help="Alias to move (default: champion).")] = None,
    from_alias: Annotated[
        str, typer.Option("--from", help="Alias whose version is promoted without --version.")
    ] = CANDIDATE,
) -> None:
    """Move the champion alias (or --to) to --version, or to the candidate's version."""
    with _registry(ctx) as registry:
        target = to or registry.config.default_alias
        promoted = registry.promote(name, version, to=target, from_alias=from_alias)
    console.print(f"{name}@{target} -> version {promoted}")


@app.command()
def rm(
    ctx: typer.Context,
    name: NameArgument,
    version: Annotated[int | None, typer.Option(help="Delete only this version.")] = None,
    all_versions: Annotated[
        bool, typer.Option("--all", help="Delete the adapter with every version and alias.")
    ] = False,
) -> None:
    """Delete one version (--version V) or the whole adapter (--all)."""
    with _registry(ctx) as registry:
        if version is not None:
            registry.delete_version(name, version)
            console.print(f"deleted {name}/{version}")
        elif all_versions:
            registry.delete_adapter(name)
            console.print(f"deleted {name} and all its versions")
        else:
            raise AdapterError(
                "pass --version V to delete one version, or --all to delete the adapter"
            )


@app.command("import")
def import_adapter(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="PEFT adapter directory.")],
    name: Annotated[str, typer.Option(help="Adapter name to register it under.")],
    base: Annotated[
        str, typer.Option(help="Base it was trained on: catalogue name, dir or hub id.")
    ],
    alias: Annotated[
        str | None, typer.Option(help="Alias to point at the new version; '' for none.")
    ] = CANDIDATE,
) -> None:
    """Register an adapter trained elsewhere, after checking it fits BASE."""
    with _registry(ctx) as registry:
        version = registry.import_adapter(directory, name, base, alias=alias or None)
    suffix = f" ({name}@{alias})" if alias else ""
    console.print(f"imported {directory} as {name}/{version}{suffix}")


@app.command()
def resolve(
    ctx: typer.Context,
    ref: Annotated[
        str,
        typer.Argument(
            help="NAME@ALIAS, NAME/VERSION, or NAME (the default alias if set, else the newest "
            "version)."
        ),
    ],
    base: Annotated[
        str | None, typer.Option(help="Also check the adapter fits this served base.")
    ] = None,
    max_lora_rank: Annotated[
        int | None, typer.Option(help="The engine's max LoRA rank (with --base).")
    ] = None,
) -> None:
    """Download (or find in the cache) the adapter REF points at and print its local directory."""
    with _registry(ctx) as registry:
        resolved = registry.resolve(ref, base=base, max_lora_rank=max_lora_rank)
    for note in resolved.notes:
        errors.print(f"note: {escape(note)}")
    typer.echo(str(resolved.path))


@app.command()
def verify(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Adapter reference: NAME, NAME@ALIAS, NAME/VERSION.")],
    engine_url: Annotated[
        str, typer.Option(help="The running engine serving the adapter (gemlora engine status).")
    ] = "http://127.0.0.1:8100",
    base: Annotated[
        str, typer.Option(help="The base that engine serves (catalogue name, dir or hub id).")
    ] = ...,
    prompt: Annotated[
        list[str] | None,
        typer.Option("--prompt", help="A held-out prompt (repeatable; default: built-in ones)."),
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(
            "--image",
            exists=True,
            dir_okay=False,
            help="A held-out image asked about on a multimodal base (repeatable; default: two "
            "built-in ones).",
        ),
    ] = None,
    tokens: Annotated[
        int, typer.Option(min=1, help="Tokens generated, and compared, per prompt.")
    ] = 16,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0, help="Largest log-probability gap (nats) that passes, at any position."
        ),
    ] = DEFAULT_TOLERANCE,
    dtype: Annotated[
        str,
        typer.Option(
            help="The engine's dtype (its config's engine.dtype): auto, bfloat16, float32."
        ),
    ] = "auto",
    record: Annotated[
        bool, typer.Option(help="Record the result as the version's gemlora.verify tag.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Check the engine serves exactly what was trained: PEFT + transformers vs the engine on
    held-out prompts (with images on a multimodal base), by the log-probabilities of the
    engine's top tokens at every position (equal greedy tokens are not enough). Exit code 1
    unless it passes; a check that breaks is recorded as `error` on the version."""
    from gemlora.adapters.fidelity_check import verify_adapter

    images = [_image_prompt(path) for path in image or []]
    with _registry(ctx) as registry:
        try:
            report = verify_adapter(
                registry, ref, engine_url, base, prompt, tokens, record, dtype,
                image_prompts=images, tolerance=tolerance,
            )  # fmt: skip
        except AdapterError:
            raise
        except Exception as error:  # the check broke: one message, not a traceback
            raise AdapterError(f"the check broke: {type(error).__name__}: {error}") from error
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        _print_report(ref, base, report)
    if not report.passed:
        raise typer.Exit(1)


def _image_prompt(path: Path):
    from PIL import Image

    from gemlora.adapters.fidelity_check import VerifyPrompt

    try:
        image = Image.open(path).convert("RGB")
    except OSError as error:
        raise typer.BadParameter(f"{path} is not an image: {error}", param_hint="--image") from None
    return VerifyPrompt("Describe this image.", image, str(path))


def _print_report(ref: str, base: str, report) -> None:
    if report.refused:
        errors.print(f"[red]failed:[/red] {escape(report.refused)}")
        return
    title = f"{ref} = {report.version_ref} on {base}"
    table = Table("prompt", "image", "agreeing tokens", "max log-prob gap", "passed", title=title)
    for check in report.prompts:
        table.add_row(
            escape(repr(check.prompt)),
            escape(check.image or "-"),
            f"{check.agreeing_prefix}/{len(check.reference)}",
            f"{check.max_logprob_gap:.4f}",
            "yes" if check.passed(report.tolerance) else "[red]no[/red]",
        )
    console.print(table)
    verdict = "passed" if report.passed else "[red]failed[/red]"
    tokens = "equal" if report.identical else "not all equal"
    console.print(
        f"{verdict}: agreement {report.agreement:.1%}, compared by log-probs within "
        f"{report.tolerance:g} nats (greedy tokens {tokens})"
    )


# --- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _registry(ctx: typer.Context) -> Iterator[AdapterRegistry]:
    """The configured registry; any registry error becomes a message and exit code 1."""
    options: _Options = ctx.obj
    settings = {
        "tracking_uri": options.tracking_uri,
        "cache_dir": options.cache_dir,
        "default_alias": options.default_alias,
    }
    try:
        with _env(_CLI_HTTP_ENV):
            config = RegistryConfig(**{k: v for k, v in settings.items() if v is not None})
            yield AdapterRegistry(config)
    except IncompatibleAdapterError as error:
        errors.print(f"[red]error:[/red] {escape(error.subject)} does not fit base {error.base}:")
        for reason in error.reasons:
            errors.print(f"  - {escape(reason)}")
        raise typer.Exit(1) from None
    except ValidationError as error:
        messages = (e["msg"].removeprefix("Value error, ") for e in error.errors())
        errors.print(f"[red]error:[/red] {escape('; '.join(messages))}")
        raise typer.Exit(1) from None
    except (AdapterError, ValueError) as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from None


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment defaults for one command and restore them after."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{alias}->{v}" for alias, v in sorted(aliases.items())) or "-"


def _version_row(version: AdapterVersion) -> list[str]:
    meta = version.metadata
    targets = meta.target_modules if meta else None
    scores = ", ".join(f"{k}={v:.4g}" for k, v in meta.eval_scores.items()) if meta else ""
    return [
        str(version.version),
        ", ".join(version.aliases) or "-",
        escape(meta.base) if meta else "-",
        str(meta.rank) if meta and meta.rank else "-",
        escape(", ".join(targets) if isinstance(targets, list) else str(targets or "-")),
        scores or "-",
        escape(describe_verification(version.tags)),
        escape(describe_eval(version.tags)),
        (version.digest or "-")[:12],
        _size(version.size_bytes),
        f"{version.created_at:%Y-%m-%d %H:%M}",
    ]


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
