"""Helpers shared by the training tests: dataset subsets, examples built in code, YAML configs,
reading adapters, and running `gemlora train` as a subprocess."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gemlora.data import Example, ImageLimits, ImagePart, Message, TextPart, decode_image


def tiny_document(shapes: tuple[Path, Path], *, name: str, tracking_uri: str, run_dir: Path):
    """A training config (as a document) for tiny-gemma-3-mm on the shapes subset: 4 steps,
    checkpoints every 2, a 2-example generation eval, logging to `tracking_uri`."""
    train_file, eval_file = shapes
    return {
        "base": {"model": "tiny-gemma-3-mm"},
        "lora": {"r": 4, "alpha": 8},
        "data": {"train_file": str(train_file), "eval_file": str(eval_file)},
        "training": {"max_steps": 4, "batch_size": 2, "lr": 1e-3, "save_steps": 2},
        "eval": {"generation_examples": 2, "max_new_tokens": 4},
        "output": {
            "name": name,
            "tracking_uri": tracking_uri,
            "dir": str(run_dir),
            "system_metrics_interval_s": 1,
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subset(source: Path, destination: Path, count: int) -> Path:
    """The first `count` records of a JSONL file, next to it (relative image paths still work)."""
    lines = source.read_text().splitlines()[:count]
    destination.write_text("\n".join(lines) + "\n")
    return destination


def write_jsonl_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def png(colour: str = "red", size: tuple[int, int] = (64, 64)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def text(role: str, content: str, weight: int = 0) -> Message:
    return Message(role, (TextPart(content),), weight)


def example(*messages: Message, images: int = 0) -> Example:
    pictures = tuple(decode_image(png(), ImageLimits()) for _ in range(images))
    return Example(tuple(messages), pictures)


def with_image(content: str) -> Message:
    """A user turn: one image, then text."""
    return Message("user", (ImagePart(0), TextPart(content)))


def write_config(config, path: Path) -> Path:
    """A TrainConfig as a YAML file, e.g. for `gemlora train` in a subprocess."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def lora_tensors(path: Path) -> dict:
    """The LoRA tensors of an adapter or checkpoint directory."""
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def changed(before: dict, after: dict) -> int:
    """How many tensors differ between two LoRA state dicts of the same keys."""
    import torch

    assert before.keys() == after.keys()
    return sum(not torch.equal(before[key], after[key]) for key in before)


def events(run_dir: Path) -> list:
    """The run's progress events, each parsed as its model (a line that is not fails here)."""
    from gemlora.rundir import ProgressLog

    return ProgressLog.of(run_dir).read(strict=True)


def start_train(config_path: Path, log: Path, *args: str) -> subprocess.Popen:
    """`gemlora train CONFIG [args]` in a subprocess, output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gemlora.cli", "train", str(config_path), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(condition, process: subprocess.Popen, log: Path, timeout_s: float = 240):
    """Poll `condition()` until it returns something truthy; fail if the process ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            code = process.returncode
            raise AssertionError(f"gemlora train exited with {code}:\n{log_tail(log)}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"timed out after {timeout_s} s:\n{log_tail(log)}")


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
