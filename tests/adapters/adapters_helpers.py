"""Building and breaking PEFT adapters for the registry tests."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The language model of a Gemma3ForConditionalGeneration, and its SigLIP tower.
MM_TEXT_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
MM_VISION_TARGETS = r".*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(server, cache_dir: Path, **overrides):
    from gemlora.adapters import RegistryConfig

    return RegistryConfig(tracking_uri=server.url, cache_dir=cache_dir, **overrides)


def save_adapter(model, out: Path, config, seed: int = 0):
    """Save a randomly initialised adapter of `config` on `model`; returns the bare model again."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return peft_model.unload()


def lora_config(r: int = 8, alpha: int = 16, targets=None):
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets or TEXT_TARGETS, init_lora_weights=False
    )


def copy_adapter(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def edit_config(adapter_dir: Path, **changes) -> Path:
    path = adapter_dir / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    return adapter_dir


def edit_tensors(adapter_dir: Path, edit) -> Path:
    """Rewrite adapter_model.safetensors with `edit(dict of tensors)` applied in place."""
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return adapter_dir


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
