"""An eval's items and the prompt each one sends.

Items from a file are its JSON objects, line by line. Items from a training run are its
held-out examples, split exactly as the run split them (its resolved config: the eval file, or
the train file's `eval_fraction` by content hash): the prompt is every message before the last
assistant turn, images inline as data URLs, and `reference` is that turn's text; a
reinforcement run's prompts are items with their own fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from gemlora.data import (
    Example,
    PromptExample,
    is_prompt_file,
    read_dataset,
    read_prompts,
    split_examples,
)
from gemlora.data.formats.openai import openai_record
from gemlora.data.images import data_url
from gemlora.evals.errors import GraderError
from gemlora.evals.spec import EvalSpec, ItemsSource
from gemlora.evals.templates import render


class ItemsError(ValueError):
    """Items that cannot be evaluated: names the file and line."""


def load_items(source: ItemsSource | None) -> list[dict[str, Any]]:
    if source is None:
        raise ItemsError("items: required, e.g. {file: items.jsonl} or {run: RUN_DIR}")
    if source.file is not None:
        items = _file_items(source.file)
    elif source.dataset is not None:
        items = held_out_items(read_dataset(source.dataset).examples)
    else:
        items = _held_out_items(source.run)
    if not items:
        raise ItemsError(f"no items in {source.file or source.dataset or source.run}")
    return items[: source.limit]


def prompt_messages(spec: EvalSpec, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages sent for `item`: the spec's templates filled in, or its own."""
    if spec.messages is None:
        messages = item.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ItemsError("the item has no `messages` and the spec gives none")
        return messages
    try:
        return [_render_message(message, item) for message in spec.messages]
    except GraderError as error:
        raise ItemsError(f"messages: {error}") from None


def _render_message(message: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        return message | {"content": render(content, {}, item)}
    parts = []
    for part in content or []:
        if part.get("type") == "text":
            parts.append(part | {"text": render(part["text"], {}, item)})
        elif part.get("type") == "image_url":
            url = render(part["image_url"]["url"], {}, item)
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            parts.append(part)
    return message | {"content": parts}


def _file_items(path: Path) -> list[dict[str, Any]]:
    items = []
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ItemsError(f"cannot read items file {path}: {error.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ItemsError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise ItemsError(f"{path}:{number}: an item must be a JSON object")
        items.append(item)
    return items


class RunData(BaseModel):
    """What a run's resolved config says of its data (run.json), all an eval needs of it."""

    model_config = ConfigDict(extra="ignore")

    train_file: Path
    eval_file: Path | None = None
    eval_fraction: float = 0.1


def _held_out_items(run_dir: Path) -> list[dict[str, Any]]:
    from gemlora.rundir import read_state

    state = read_state(run_dir)
    if state is None or not isinstance((state.config or {}).get("data"), dict):
        raise ItemsError(f"{run_dir} is not a training run's directory (no run.json config)")
    data = RunData.model_validate(state.config["data"])
    read = read_prompts if is_prompt_file(data.train_file) else read_dataset
    if data.eval_file is not None:
        examples = read(data.eval_file).examples
    else:
        examples = split_examples(read(data.train_file).examples, data.eval_fraction).eval
    return held_out_items(examples)


def held_out_items(examples: list[Example] | list[PromptExample]) -> list[dict[str, Any]]:
    """Items from held-out examples. A chat example: the prompt before the last assistant turn
    (images inline) as `messages`, that turn's text as `reference`. A prompt (reinforcement
    data): its messages, and its item fields as they are."""
    return [
        prompt_item(example) if isinstance(example, PromptExample) else item_of(example)
        for example in examples
        if isinstance(example, PromptExample) or _last_assistant(example) is not None
    ]


def item_of(example: Example) -> dict[str, Any]:
    last = _last_assistant(example)
    prompt = Example(example.messages[:last], example.images)
    messages = openai_record(prompt, lambda index: data_url(example.images[index]))["messages"]
    return {"messages": messages, "reference": example.messages[last].text}


def prompt_item(prompt: PromptExample) -> dict[str, Any]:
    example = prompt.prompt_example()
    messages = openai_record(example, lambda index: data_url(example.images[index]))["messages"]
    return {**prompt.item, "messages": messages}


def _last_assistant(example: Example) -> int | None:
    turns = [i for i, m in enumerate(example.messages) if m.role == "assistant"]
    return turns[-1] if turns else None
