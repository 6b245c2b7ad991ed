"""An fp32 run on a bf16 checkpoint keeps Gemma 3's tied 262k-word embedding in bf16 (half its
memory) and computes exactly what the fully upcast model computes, on the real 270M."""

from __future__ import annotations

import pytest
import torch

from gemlora.bases import resolve_base
from gemlora.train.bf16_embedding import Bf16Embedding, Bf16Head
from gemlora.train.config import BaseSection
from gemlora.train.model import load_base

PROMPT = "The three primary colours are"


def load_270m(compute_dtype: str, model: str = "gemma-3-270m", quantization: str = "none"):
    settings = BaseSection(model=model, compute_dtype=compute_dtype, quantization=quantization)
    return load_base(settings, resolve_base(model))


@pytest.fixture(scope="module")
def models(built_models):
    from transformers import AutoModelForCausalLM

    ours = load_270m("fp32")
    upcast = AutoModelForCausalLM.from_pretrained(built_models["gemma-3-270m"], dtype=torch.float32)
    return ours, upcast.eval()


def test_only_the_tied_embedding_stays_bf16(models):
    ours, _ = models
    model = ours.model
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(embedding, Bf16Embedding) and isinstance(head, Bf16Head)
    assert embedding.weight is head.weight and embedding.weight.dtype == torch.bfloat16
    others = {p.dtype for p in model.parameters() if p is not embedding.weight}
    buffers = {b.dtype for b in model.buffers() if b.is_floating_point()}
    assert others == {torch.float32} and buffers <= {torch.float32}
    assert model.config.dtype == torch.float32


def test_logits_and_generation_equal_the_upcast_model(models):
    ours, upcast = models
    inputs = ours.processor(PROMPT, return_tensors="pt")
    with torch.no_grad():
        our_logits = ours.model.eval()(**inputs).logits
        their_logits = upcast(**inputs).logits
        # the embedding rows and scale are exactly the upcast model's
        assert torch.equal(
            ours.model.get_input_embeddings()(inputs["input_ids"]),
            upcast.get_input_embeddings()(inputs["input_ids"]),
        )
        ours_text = ours.model.generate(**inputs, max_new_tokens=8, do_sample=False)
        their_text = upcast.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert our_logits.dtype == torch.float32
    torch.testing.assert_close(our_logits, their_logits, rtol=1e-5, atol=1e-4)
    assert torch.equal(ours_text, their_text)


def test_a_bf16_compute_run_loads_as_before(built_models):
    loaded = load_270m("bf16")
    embedding = loaded.model.get_input_embeddings()
    assert not isinstance(embedding, Bf16Embedding) and embedding.weight.dtype == torch.bfloat16


def test_the_dequantized_w4a16_base_keeps_its_embedding_in_bf16_too(built_models):
    """The demo trains the served W4A16 base unpacked: its embedding (never quantized) is cast
    back to the checkpoint's bf16, and the logits stay those of the plain dequantized load."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    ours = load_270m("fp32", "gemma-3-270m-w4a16", "dequantized")
    plain = AutoModelForCausalLM.from_pretrained(
        built_models["gemma-3-270m-w4a16"],
        dtype=torch.float32,
        quantization_config=CompressedTensorsConfig(dequantize=True),
    )
    assert isinstance(ours.model.get_input_embeddings(), Bf16Embedding)
    assert ours.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert ours.model.model.layers[0].mlp.down_proj.weight.dtype == torch.float32
    inputs = ours.processor(PROMPT, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            ours.model.eval()(**inputs).logits, plain.eval()(**inputs).logits, rtol=1e-5, atol=1e-4
        )
