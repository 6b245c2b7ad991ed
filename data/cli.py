"""`gemlora data validate|preview|split|samples`.

Everything heavy (transformers, datasets, PIL) is imported inside the commands, so that
`gemlora --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from gemlora.data.example import DatasetError, Problem
from gemlora.data.formats.common import (
    PREFERENCE_FORMATS,
    PROMPT_FORMATS,
    AnyFormat,
    DatasetFormat,
)
from gemlora.data.tokens import OverlongPolicy

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)

DEFAULT_PREVIEW_MODEL = "gemma-3-270m"
DatasetKind = Literal["chat", "preference", "prompt"]

FileArgument = Annotated[
    Path, typer.Argument(help="A JSONL/JSON file, parquet file or dataset dir.")
]
FormatOption = Annotated[
    DatasetFormat | None,
    typer.Option("--format", "-f", help="openai, hf or sharegpt (default: detected)."),
]
AnyFormatOption = Annotated[
    AnyFormat | None,
    typer.Option(
        "--format",
        "-f",
        help="Chat: openai, hf, sharegpt; preference: openai-preference, trl-preference; "
        "reinforcement prompts: openai-reinforcement (default: detected).",
    ),
]
MaxImagesOption = Annotated[int, typer.Option(help="Most images one example may have.")]
AllowRemoteOption = Annotated[
    bool, typer.Option(help="Fetch https image URLs (under the SSRF policy); off by default.")
]


@app.callback()
def callback() -> None:
    """Validate and preview chat, preference and reinforcement prompt datasets."""


@app.command()
def validate(
    file: FileArgument,
    format: AnyFormatOption = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Base whose processor measures token lengths."),
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Most tokens per example (default: the base's context).")
    ] = None,
    overlong: Annotated[
        OverlongPolicy, typer.Option(help="Over-long examples: refuse (error) or drop (warning).")
    ] = "refuse",
    completion_tokens: Annotated[
        int,
        typer.Option(
            min=0,
            help="Reinforcement prompts: tokens each completion may take, counted with the "
            "prompt against the max length.",
        ),
    ] = 0,
    max_images: MaxImagesOption = 8,
    allow_remote: AllowRemoteOption = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first error.")] = False,
) -> None:
    """Check a dataset and report counts, token lengths, images and every problem.

    Preference (DPO) datasets are told apart by their records and checked as pairs: a prompt
    ending with a user turn, two different one-message assistant replies, and prompt + each
    reply within the max length. Reinforcement prompt (RFT) datasets, whose conversations end
    with a user turn, are checked as prompts: the prompt rendered with the generation prompt
    plus --completion-tokens within the max length; their other fields are the grader's item.
    Exits 1 when there is any error.
    """
    kind = _kind(file, format)
    if completion_tokens and kind != "prompt":
        raise typer.BadParameter(
            "only reinforcement prompt datasets have completions to leave room for",
            param_hint="--completion-tokens",
        )
    options = _read_options(max_images, allow_remote, strict)
    check = _validator(kind, completion_tokens)
    try:
        report = check(
            file, format, options=options, model=model, max_length=max_length, overlong=overlong
        )
    except DatasetError as error:
        _print_problems(error.problems)
        raise typer.Exit(1) from None
    except LookupError as error:
        raise typer.BadParameter(str(error), param_hint="--model") from None
    _print_summary(report)
    _print_problems(report.problems)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def preview(
    file: FileArgument,
    n: Annotated[int, typer.Option("-n", help="How many examples to show.")] = 3,
    format: AnyFormatOption = None,
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Base whose chat template and processor render the examples."
        ),
    ] = DEFAULT_PREVIEW_MODEL,
    max_images: MaxImagesOption = 8,
    allow_remote: AllowRemoteOption = False,
) -> None:
    """Print the first valid examples exactly as the model will see them.

    The base's chat template is rendered and tokenized by its processor, images expanded to
    their tokens, and the token ids decoded back to text. For a preference pair: the prompt up
    to the opening of the model's turn, then the chosen and the rejected reply. For a
    reinforcement prompt: the prompt up to the opening of the model's turn, then its item (the
    fields a grader reads).
    """
    from gemlora.data.tokens import load_token_counter

    kind = _kind(file, format)
    read_file = _reader(kind)
    try:
        read = read_file(
            file, format, options=_read_options(max_images, allow_remote, False), limit=n
        )
        counter = load_token_counter(model)
    except DatasetError as error:
        _print_problems(error.problems)
        raise typer.Exit(1) from None
    except LookupError as error:
        raise typer.BadParameter(str(error), param_hint="--model") from None
    if any(example.images for example in read.examples) and not counter.multimodal:
        console.print(
            f"[red]{counter.name} is a text-only base and these examples have images: "
            "pass --model with a multimodal base (e.g. tiny-gemma-3-mm or gemma-3-4b-it)[/]"
        )
        raise typer.Exit(1)
    for example in read.examples:
        if kind == "preference":
            _preview_pair(counter, example)
            continue
        if kind == "prompt":
            _preview_prompt(counter, example)
            continue
        ids = counter.encode(example)
        console.rule(f"{example.source} · {len(ids)} tokens · {_images(example)}")
        typer.echo(counter.tokenizer.decode(ids, skip_special_tokens=False))
    if read.errors:
        console.print(f"[yellow]{len(read.errors)} invalid records skipped (see `validate`)[/]")
    if not read.examples:
        raise typer.Exit(1)


@app.command()
def split(
    file: Annotated[Path, typer.Argument(help="A JSON Lines dataset.")],
    eval_fraction: Annotated[float, typer.Option(help="Share of examples for eval.")] = 0.1,
    seed: Annotated[str, typer.Option(help="Changes which examples go to eval.")] = "",
    format: FormatOption = None,
    allow_remote: AllowRemoteOption = False,
) -> None:
    """Split a JSON Lines dataset into FILE-train.jsonl and FILE-eval.jsonl by example content.

    The files are written next to FILE, so relative image paths keep working; invalid records
    go to neither. Appending records never moves an existing one to the other side.
    """
    from gemlora.data.reader import read_dataset
    from gemlora.data.records import is_json_lines
    from gemlora.data.split import split_examples

    if not is_json_lines(file):
        raise typer.BadParameter(
            "split copies lines: give a JSON Lines file (from Python, "
            "`gemlora.data.split_examples` splits any format)",
            param_hint="FILE",
        )
    try:
        read = read_dataset(file, format, options=_read_options(8, allow_remote, False))
    except DatasetError as error:
        _print_problems(error.problems)
        raise typer.Exit(1) from None
    halves = split_examples(read.examples, eval_fraction, seed=seed)
    for side, examples in (("train", halves.train), ("eval", halves.eval)):
        out = file.with_name(f"{file.stem}-{side}.jsonl")
        _copy_lines(file, out, {example.source.line for example in examples})
        console.print(f"{side}: {len(examples)} examples -> {out}")
    _print_problems(read.problems)


@app.command()
def samples(
    out: Annotated[Path | None, typer.Option(help="Directory to write into.")] = None,
) -> None:
    """Write the sample datasets; the same bytes every run.

    shapes-vqa and style-chat (OpenAI chat JSONL), style-preference (OpenAI preference JSONL),
    say-the-word (OpenAI reinforcement JSONL).
    """
    from gemlora.data.sample_sets import SAMPLES_DIR, write_samples

    target = out or SAMPLES_DIR
    for name, counts in write_samples(target).items():
        console.print(f"{name}: {counts['train']} train, {counts['eval']} eval -> {target / name}")


def _kind(file: Path, format: AnyFormat | None) -> DatasetKind:
    """Which kind of dataset the file is: the named format's, or told by its records."""
    from gemlora.data.reader import is_preference_file, is_prompt_file

    if format:
        preference, prompt = format in PREFERENCE_FORMATS, format in PROMPT_FORMATS
    else:
        preference = is_preference_file(file)
        prompt = not preference and is_prompt_file(file)
    return "preference" if preference else "prompt" if prompt else "chat"


def _reader(kind: DatasetKind) -> Callable:
    from gemlora.data.reader import read_dataset, read_preferences, read_prompts

    if kind == "prompt":
        return read_prompts
    return read_preferences if kind == "preference" else read_dataset


def _validator(kind: DatasetKind, completion_tokens: int) -> Callable:
    from gemlora.data.validation import validate_dataset, validate_preferences, validate_prompts

    if kind == "prompt":
        return partial(validate_prompts, completion_tokens=completion_tokens)
    return validate_preferences if kind == "preference" else validate_dataset


def _preview_pair(counter, example) -> None:
    from gemlora.data.tokens import encode_preference

    tokens = encode_preference(counter, example)
    console.rule(f"{example.source} · prompt {len(tokens.prompt)} tokens · {_images(example)}")
    typer.echo(counter.tokenizer.decode(tokens.prompt, skip_special_tokens=False))
    for title, ids in (("chosen", tokens.chosen), ("rejected", tokens.rejected)):
        console.rule(f"{title} · {len(ids)} tokens", align="left", style="dim")
        typer.echo(counter.tokenizer.decode(ids, skip_special_tokens=False))


def _preview_prompt(counter, example) -> None:
    import json

    ids = counter.encode(example.prompt_example(), add_generation_prompt=True)
    console.rule(f"{example.source} · prompt {len(ids)} tokens · {_images(example)}")
    typer.echo(counter.tokenizer.decode(ids, skip_special_tokens=False))
    console.rule("item (what the grader reads)", align="left", style="dim")
    typer.echo(json.dumps(example.item, indent=2, ensure_ascii=False, sort_keys=True))


def _images(example) -> str:
    count = len(example.images)
    return f"{count} image{'s' * (count != 1)}"


def _read_options(max_images: int, allow_remote: bool, strict: bool):
    from gemlora.data.reader import ReadOptions
    from gemlora.data.safe_fetch import ImageFetcher

    fetcher = ImageFetcher() if allow_remote else None
    return ReadOptions(max_images=max_images, fetcher=fetcher, strict=strict)


def _print_summary(report) -> None:
    read = report.read
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("file", f"{read.path} ({read.format})")
    rejected = read.records - len(read.examples)
    left_out = len(read.examples) - len(report.examples)
    unit = _unit(read.format)
    table.add_row(
        f"{unit}s",
        f"{len(report.examples)} usable of {read.records} records "
        f"({rejected} invalid, {left_out} over-long)",
    )
    stats = report.length_stats()
    if stats:
        table.add_row(
            "tokens",
            f"min {stats.min}, median {stats.median}, p95 {stats.p95}, max {stats.max} "
            f"({_measured(report)}max length {report.max_length}, {report.model})",
        )
    elif report.model is None:
        table.add_row("tokens", "not measured: pass --model (e.g. --model gemma-3-270m)")
    per_example = ", ".join(f"{n}: {count}" for n, count in report.images_per_example().items())
    table.add_row(f"images/{unit}", per_example or "-")
    table.add_row("problems", f"{len(report.errors)} errors, {len(report.warnings)} warnings")
    console.print(table)


def _unit(format: AnyFormat) -> str:
    """What one record of the format is called in the summary."""
    if format in PREFERENCE_FORMATS:
        return "pair"
    return "prompt" if format in PROMPT_FORMATS else "example"


def _measured(report) -> str:
    """What the token lengths count, when it is not the whole example."""
    if report.read.format in PREFERENCE_FORMATS:
        return "prompt + longer reply, "
    if report.read.format in PROMPT_FORMATS:
        return f"prompt; + {report.completion_tokens} per completion within "
    return ""


def _print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        colour = "red" if problem.severity == "error" else "yellow"
        console.print(str(problem), style=colour, markup=False, soft_wrap=True)


def _copy_lines(source: Path, target: Path, lines: set[int]) -> None:
    with source.open("rb") as reader, target.open("wb") as writer:
        for number, line in enumerate(reader, start=1):
            if number in lines:
                writer.write(line if line.endswith(b"\n") else line + b"\n")
