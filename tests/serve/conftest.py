"""Fixtures for the routing tests: two taught adapters registered on the session's MLflow server,
which the session's engines (tests/conftest.py) resolve adapter names through."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from serve_helpers import BASES, REPLY_A, REPLY_B, teach_reply

from gemlora.adapters import AdapterMetadata, AdapterRegistry


@dataclass(frozen=True)
class Taught:
    """Adapters trained on one base."""

    base: str
    a: Path  # answers everything with REPLY_A (pirate)
    b: Path  # answers everything with REPLY_B (robot)


@pytest.fixture(scope="session")
def taught(built_models, tmp_path_factory) -> dict[str, Taught]:
    """A and B for each base, trained on that base (~1 minute each)."""
    out = tmp_path_factory.mktemp("taught")
    return {
        base: Taught(
            base,
            teach_reply(base, REPLY_A, out / base / "a"),
            teach_reply(base, REPLY_B, out / base / "b"),
        )
        for base in BASES
    }


@pytest.fixture(scope="session")
def rank32(built_models, tmp_path_factory) -> Path:
    """A random LoRA of rank 32 on gemma-3-270m: over the engines' max LoRA rank (16)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("rank32")
    model = AutoModelForCausalLM.from_pretrained(built_models["gemma-3-270m"], dtype=torch.bfloat16)
    get_peft_model(model, LoraConfig(r=32, target_modules=["q_proj"])).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def registry(engine_registry, tmp_path_factory) -> AdapterRegistry:
    """The engines' registry, with a cache of its own (the engines keep theirs)."""
    config = engine_registry.model_copy(update={"cache_dir": tmp_path_factory.mktemp("cache")})
    return AdapterRegistry(config)


@dataclass(frozen=True)
class Names:
    a: str  # version 1 = taught A, alias champion
    b: str  # version 1 = taught B, alias candidate


@pytest.fixture(scope="session")
def names(registry, taught) -> dict[str, Names]:
    """Per base, A and B registered under fresh names (the MLflow server is shared)."""
    registered = {}
    for base, adapters in taught.items():
        suffix = f"{base.removeprefix('gemma-3-')}-{uuid.uuid4().hex[:6]}"
        names = registered[base] = Names(a=f"pirate-{suffix}", b=f"robot-{suffix}")
        metadata = AdapterMetadata(base=base)
        registry.register(adapters.a, names.a, metadata, alias="champion")
        registry.register(adapters.b, names.b, metadata, alias="candidate")
    return registered
