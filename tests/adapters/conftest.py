"""Fixtures for the registry tests: real PEFT adapters on the local Gemma 3 bases, a registry
per test on the session's MLflow server, and a guard that fails any connection outside
127.0.0.0/8."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from adapters_helpers import (
    MM_TEXT_TARGETS,
    MM_VISION_TARGETS,
    lora_config,
    make_config,
    save_adapter,
)

from gemlora.adapters import AdapterRegistry


@pytest.fixture(autouse=True)
def _loopback_only(loopback_only) -> None:
    """Every test here: no connection outside 127.0.0.0/8."""


@dataclass(frozen=True)
class Adapters:
    """Adapters saved by PEFT, each in its own directory."""

    a: Path  # LoRA r=8 on every decoder linear of gemma-3-270m, seed 1
    b: Path  # the same, seed 2: different weights, different behaviour
    rank32: Path  # LoRA r=32 on gemma-3-270m's q_proj
    ia3: Path  # IA3 on gemma-3-270m
    tiny_text: Path  # LoRA r=4 on tiny-gemma-3-mm's language model
    tiny_vision: Path  # LoRA r=4 on tiny-gemma-3-mm's language model and SigLIP tower


@pytest.fixture(scope="session")
def base_270m(built_models):
    """gemma-3-270m in bf16, loaded once (also used to check adapters change its output)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(built_models["gemma-3-270m"], dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def adapters(built_models, base_270m, tmp_path_factory) -> Adapters:
    import torch
    from peft import IA3Config
    from transformers import Gemma3ForConditionalGeneration

    out = tmp_path_factory.mktemp("adapters")
    model = base_270m
    model = save_adapter(model, out / "a", lora_config(), seed=1)
    model = save_adapter(model, out / "b", lora_config(), seed=2)
    model = save_adapter(model, out / "rank32", lora_config(r=32, targets=["q_proj"]), seed=3)
    ia3 = IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
    )
    save_adapter(model, out / "ia3", ia3)

    tiny = Gemma3ForConditionalGeneration.from_pretrained(
        built_models["tiny-gemma-3-mm"], dtype=torch.bfloat16
    )
    tiny = save_adapter(tiny, out / "tiny_text", lora_config(4, 8, MM_TEXT_TARGETS), seed=4)
    both = f"{MM_TEXT_TARGETS}|{MM_VISION_TARGETS}"
    save_adapter(tiny, out / "tiny_vision", lora_config(4, 8, both), seed=5)
    return Adapters(*(out / name for name in Adapters.__dataclass_fields__))


@pytest.fixture
def registry(mlflow_server, tmp_path) -> AdapterRegistry:
    """A registry on the session's server with its own empty cache."""
    return AdapterRegistry(make_config(mlflow_server, tmp_path / "cache"))


@pytest.fixture
def name(request) -> str:
    """An adapter name no other test uses (the server is shared by the session)."""
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40]
    return f"{test}-{uuid.uuid4().hex[:6]}"
