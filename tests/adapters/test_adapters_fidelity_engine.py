"""The fidelity check judges by log-probabilities, on the session's real vLLM engine serving the
real Gemma 3 270M. An adapter trained to give one fixed reply (confident token by token) served
whole passes. Served without part of it (the engine given the same adapter less its first
layer's q_proj LoRA, as an engine that drops some of an adapter's weights serves it), every
greedy token still equals PEFT's, which the check used to pass on its own, while the
log-probabilities move by several times the tolerance: it fails, and the version records the
failure.

This is the dropped-vision-tower case of issue 32 on a model where it can be shown: on the tiny
multimodal Gemma 3 every next-token distribution is within ~1.3 nats of uniform (64-dim tied
embeddings), so a dropped tower part that moves log-probabilities past the tolerance also flips
greedy tokens, which the old rule caught as well (tests/serve/test_serve_vision_verify.py)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from gemlora.adapters import AdapterMetadata
from gemlora.adapters.verification_record import (
    DEFAULT_TOLERANCE,
    allows_promotion,
    describe,
    state_of,
)

pytestmark = pytest.mark.engine

BASE = "gemma-3-270m"
DROPPED = "layers.0.self_attn.q_proj"  # the part of the adapter the engine leaves out


def _teach_reply():
    """tests/serve's teacher (the routing tests' adapters), loaded by path: pytest puts only
    the collected test directories on sys.path."""
    path = Path(__file__).parents[1] / "serve" / "serve_helpers.py"
    spec = importlib.util.spec_from_file_location("_serve_helpers_for_adapters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.teach_reply, module.REPLY_A


@pytest.fixture(scope="module")
def taught(built_models, tmp_path_factory) -> Path:
    """LoRA trained on the 270M to answer anything with one pirate reply (~1 minute)."""
    teach_reply, reply = _teach_reply()
    return teach_reply(BASE, reply, tmp_path_factory.mktemp("taught") / "pirate")


# The parameter puts the test with the other tests of the 270M's engine (tests/conftest.py).
@pytest.mark.parametrize("base", [BASE])
def test_an_adapter_served_without_part_of_it_fails_though_every_greedy_token_agrees(
    base, engines, registry, name, taught, tmp_path
):
    from gemlora.adapters.fidelity_check import Verifier

    engine = engines.get(base)
    metadata = AdapterMetadata(base=base)
    whole = registry.register(taught, name, metadata, alias=None)
    part = registry.register(
        _without(taught, DROPPED, tmp_path / "part"), name, metadata, alias=None
    )

    class EngineServingPartOfIt(Verifier):
        """PEFT gets the version asked for; the engine serves it less `DROPPED`."""

        def _check(self, model, ref, prompt):
            return super()._check(model, f"{name}/{part}", prompt)

    served_whole = Verifier(engine.url, base).verify(registry, f"{name}/{whole}")
    assert served_whole.passed and served_whole.identical, served_whole.prompts
    assert state_of(registry.lookup(f"{name}/{whole}").tags) == "passed"

    served_in_part = EngineServingPartOfIt(engine.url, base).verify(registry, f"{name}/{whole}")
    # Every greedy token agrees: equal tokens alone (the check before) passed this.
    assert served_in_part.identical and served_in_part.agreement == 1.0, served_in_part.prompts
    gaps = [check.max_logprob_gap for check in served_in_part.prompts]
    assert max(gaps) > 3 * DEFAULT_TOLERANCE, gaps
    assert not served_in_part.passed
    tags = registry.lookup(f"{name}/{whole}").tags
    assert state_of(tags) == "failed" and not allows_promotion(tags, "not_failed")
    assert describe(tags).startswith("failed (agreement 100%, gap "), describe(tags)


def _without(adapter_dir: Path, part: str, out_dir: Path) -> Path:
    """A copy of a PEFT adapter without the LoRA tensors whose names contain `part`."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter_dir, out_dir)
    weights = out_dir / "adapter_model.safetensors"
    tensors = load_file(weights)
    kept = {key: value for key, value in tensors.items() if part not in key}
    assert 0 < len(kept) < len(tensors), f"no tensor of {part} to leave out"
    save_file(kept, weights)
    return out_dir
