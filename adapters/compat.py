"""Does an adapter fit a base? Checked when it is registered and again when it is served.

An adapter fits when it is a plain LoRA that vLLM can load, was trained on a member of the served
base's family (a differently quantized variant is fine and noted), stays within the engine's
maximum rank, and every LoRA tensor names a layer of the base with matching in/out features.
The check reads safetensors headers only (plus the adapter's own small tensors); it never loads
the base model, so it is safe to run inside the serving process.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemlora.adapters.errors import IncompatibleAdapterError
from gemlora.adapters.metadata import WEIGHTS_FILE, read_adapter_config
from gemlora.bases import BaseSpec, load_catalogue, resolve_base

# Reasons of one kind name at most this many modules or tensors, then count the rest.
MAX_EXAMPLES = 3

# PEFT features vLLM does not implement (mirrors vllm.lora.peft_helper.PEFTHelper).
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "LoRA bias (lora_bias)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "layer_replication": "layer_replication",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "use_qalora": "QALoRA (use_qalora)",
}
_PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")

_LORA_SUFFIXES = {
    ".lora_A.weight": ("A", False),
    ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True),
    ".lora_embedding_B": ("B", True),
}

# Exponent bits all set means NaN or infinity, for each float dtype safetensors stores.
_EXPONENT_MASKS = {
    "BF16": ("<u2", 0x7F80),
    "F16": ("<u2", 0x7C00),
    "F32": ("<u4", 0x7F800000),
    "F64": ("<u8", 0x7FF0000000000000),
}


# Gemma 3's vision parts: vLLM adapts them only with tower and connector LoRA enabled.
VISION_PARTS = (".vision_tower.", ".multi_modal_projector.")


@dataclass(frozen=True)
class TrainingBase:
    """The base an adapter was trained on, as far as the family check needs it."""

    name: str
    family: str
    quantization: str = "none"

    @classmethod
    def from_spec(cls, spec: BaseSpec, quantization: str | None = None) -> TrainingBase:
        return cls(spec.name, spec.family, quantization or spec.quantization)


@dataclass(frozen=True)
class Compatibility:
    """`reasons` make an adapter unusable on the base; `notes` are worth recording but fine."""

    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.reasons

    def raise_if_incompatible(self, subject: str, base: str) -> None:
        if self.reasons:
            raise IncompatibleAdapterError(subject, base, list(self.reasons))


def check_compatibility(
    adapter_dir: Path,
    base: BaseSpec,
    max_lora_rank: int | None = None,
    trained_on: TrainingBase | None = None,
    vision_lora: bool = True,
) -> Compatibility:
    """Check a PEFT adapter directory against the base it would be served on.

    `trained_on` defaults to the base named by `base_model_name_or_path` in the adapter config.
    `max_lora_rank` None skips the rank limit. `vision_lora` False: the engine applies LoRA to
    the language model only, so vision-tower or projector weights are a reason (vLLM would
    drop them silently). Never raises for a bad adapter: every problem is a reason.
    """
    try:
        config = read_adapter_config(adapter_dir)
    except (FileNotFoundError, ValueError) as error:
        return Compatibility(reasons=(str(error),))
    if config.get("peft_type") != "LORA":
        reason = f"peft_type is {config.get('peft_type')!r}: only LoRA adapters (LORA) are served"
        return Compatibility(reasons=(reason,))
    try:
        return _check_lora(Path(adapter_dir), config, base, max_lora_rank, trained_on, vision_lora)
    except Exception as error:  # a malformed adapter the checks below did not foresee
        return Compatibility(reasons=(f"cannot be checked: {type(error).__name__}: {error}",))


def _check_lora(
    adapter_dir: Path,
    config: dict[str, Any],
    base: BaseSpec,
    max_lora_rank: int | None,
    trained_on: TrainingBase | None,
    vision_lora: bool,
) -> Compatibility:
    reasons = _unsupported_features(config) + _rank_problems(config, max_lora_rank)
    family_reasons, notes = _family_check(config, base, trained_on)
    reasons += family_reasons
    layout = base_layout(base)
    if layout is None:
        notes.append(
            f"base {base.name} is not available locally: target modules and tensor shapes "
            "were not checked"
        )
    else:
        reasons += _missing_targets(config, layout, base.name)
    tensors, unreadable = _read_tensor_shapes(adapter_dir / WEIGHTS_FILE)
    if unreadable:
        reasons.append(unreadable)
    else:
        reasons += _tensor_problems(tensors, config, layout, base.name)
        reasons += _nonfinite_problems(adapter_dir / WEIGHTS_FILE)
        if not vision_lora:
            reasons += _vision_problems(tensors)
    return Compatibility(tuple(reasons), tuple(notes))


# --- configuration ------------------------------------------------------------------------------


def _unsupported_features(config: dict[str, Any]) -> list[str]:
    reasons = [
        f"uses {label}, which vLLM does not support"
        for flag, label in _UNSUPPORTED_FLAGS.items()
        if config.get(flag)
    ]
    if config.get("bias", "none") != "none":
        reasons.append(f"trains biases (bias={config['bias']!r}), which vLLM does not support")
    if config.get("modules_to_save"):
        reasons.append(
            f"saves whole modules {config['modules_to_save']} (modules_to_save), "
            "which vLLM does not load for generative models"
        )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        reasons.append(
            f"init_lora_weights={init!r} changes the base weights when loaded; convert it to a "
            "plain LoRA first"
        )
    return reasons


def _rank_problems(config: dict[str, Any], max_lora_rank: int | None) -> list[str]:
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        return [f"rank r={rank!r} is not a positive integer"]
    highest = max([rank, *(config.get("rank_pattern") or {}).values()])
    if max_lora_rank is not None and highest > max_lora_rank:
        return [f"rank {highest} exceeds the engine's max LoRA rank {max_lora_rank}"]
    return []


def _family_check(
    config: dict[str, Any], base: BaseSpec, trained_on: TrainingBase | None
) -> tuple[list[str], list[str]]:
    recorded = config.get("base_model_name_or_path")
    recorded_spec = lookup_base(recorded) if recorded else None
    if trained_on is None:
        if recorded_spec is None:
            reason = (
                f"cannot tell which base the adapter was trained on (base_model_name_or_path="
                f"{recorded!r}); register or import it with an explicit base"
            )
            return [reason], []
        trained_on = TrainingBase.from_spec(recorded_spec)
    elif _in_catalogue(recorded_spec) and recorded_spec.family != trained_on.family:
        reason = (
            f"adapter_config.json says it was trained on {recorded_spec.name} (family "
            f"{recorded_spec.family}), not on {trained_on.name} (family {trained_on.family})"
        )
        return [reason], []
    if trained_on.family != base.family:
        reason = (
            f"trained on {trained_on.name} (family {trained_on.family}), but base {base.name} "
            f"is family {base.family}"
        )
        return [reason], []
    if (trained_on.name, trained_on.quantization) != (base.name, base.quantization):
        note = (
            f"trained on {trained_on.name} ({trained_on.quantization}), served on {base.name} "
            f"({base.quantization})"
        )
        return [], [note]
    return [], []


def _in_catalogue(spec: BaseSpec | None) -> bool:
    """Only catalogue bases have a known family; any other directory is named after itself."""
    return spec is not None and spec.name in load_catalogue()


def lookup_base(name_or_path: str) -> BaseSpec | None:
    """A catalogue name, a catalogue hub id, a model directory or a hub id -> `BaseSpec`; None
    for a path that is not a directory here (the machine that trained it had it). Unlike
    `resolve_base`, an unbuilt local base of the catalogue is returned as is."""
    catalogue = load_catalogue()
    if name_or_path in catalogue:
        return catalogue[name_or_path]
    for spec in catalogue.values():
        if spec.hub_id == name_or_path:
            return spec
    if _looks_like_path(name_or_path) and not Path(name_or_path).expanduser().is_dir():
        return None  # a directory on the machine that trained it
    try:
        return resolve_base(name_or_path)
    except LookupError:
        return None


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.count("/") > 1


# --- the base's layers ------------------------------------------------------------------------


def canonical_module(name: str) -> str:
    """One name per layer across checkpoint and runtime layouts: `model.layers.0.mlp.up_proj`
    (Gemma3ForCausalLM), `language_model.model.layers.0...` (published multimodal checkpoints),
    `model.language_model.layers.0...` (transformers 5 modules, hence PEFT) all become
    `layers.0.mlp.up_proj`; the SigLIP tower becomes `vision_tower.encoder...`."""
    name = name.removeprefix("base_model.model.")
    name = name.replace("vision_tower.vision_model.", "vision_tower.")
    parts = name.split(".")
    while parts and parts[0] in ("model", "language_model"):
        parts.pop(0)
    return ".".join(parts)


def base_layout(base: BaseSpec) -> dict[str, tuple[int, int] | None] | None:
    """Canonical layer name -> weight shape [rows, cols] of every 2-D weight of a local base;
    None when the base's weights are not on this machine. Compressed-tensors layers are listed
    with their unpacked shape."""
    directory = Path(base.location)
    files = _weight_files(directory)
    if not files:
        return None
    stamp = tuple(path.stat().st_mtime_ns for path in files)
    return _read_layout(tuple(files), stamp)


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


@functools.lru_cache(maxsize=8)
def _read_layout(files: tuple[Path, ...], _stamp: tuple[int, ...]) -> dict:
    from safetensors import safe_open

    layout: dict[str, tuple[int, int] | None] = {}
    for path in files:
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith(".weight") and len(shape := f.get_slice(key).get_shape()) == 2:
                    layout[canonical_module(key.removesuffix(".weight"))] = (shape[0], shape[1])
                elif key.endswith(".weight_packed"):
                    layer = key.removesuffix(".weight_packed")
                    layout[canonical_module(layer)] = _unpacked_shape(f, layer)
    return layout


def _unpacked_shape(f, layer: str) -> tuple[int, int] | None:
    if f"{layer}.weight_shape" not in f.keys():  # noqa: SIM118
        return None
    rows, cols = (int(n) for n in f.get_tensor(f"{layer}.weight_shape"))
    return rows, cols


def _missing_targets(
    config: dict[str, Any], layout: dict[str, tuple[int, int] | None], base_name: str
) -> list[str]:
    targets = config.get("target_modules")
    if not isinstance(targets, list):
        return []  # a regex: the tensor check below sees what it matched
    missing = [t for t in targets if not any(_matches(m, canonical_module(t)) for m in layout)]
    return [f"target module {t!r} matches no layer of {base_name}" for t in missing]


def _matches(module: str, target: str) -> bool:
    return module == target or module.endswith("." + target)


# --- the adapter's tensors --------------------------------------------------------------------


def _read_tensor_shapes(path: Path) -> tuple[dict[str, list[int]], str | None]:
    if not path.is_file():
        legacy = path.with_name("adapter_model.bin")
        hint = " (only a pickled adapter_model.bin, which is refused)" if legacy.exists() else ""
        return {}, f"no {WEIGHTS_FILE}{hint}"
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {key: f.get_slice(key).get_shape() for key in f.keys()}, None  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error type and OSError
        return {}, f"{WEIGHTS_FILE} is not readable safetensors: {error}"


@dataclass
class _LoraModule:
    a: list[int] | None = None
    b: list[int] | None = None
    embedding: bool = False


def _tensor_problems(
    tensors: dict[str, list[int]],
    config: dict[str, Any],
    layout: dict[str, tuple[int, int] | None] | None,
    base_name: str,
) -> list[str]:
    modules, unexpected = _group_lora_tensors(tensors)
    if not modules:
        return [f"{WEIGHTS_FILE} holds no LoRA tensors"]
    halves, ranks, absent, shapes = [], [], [], []
    for key, module in modules.items():
        name = key.removeprefix("base_model.model.")
        if module.a is None or module.b is None:
            halves.append(f"{name} has only lora_{'A' if module.b is None else 'B'}")
            continue
        rank = _expected_rank(config, key)
        if module.a[0] != rank or module.b[1] != rank:
            ranks.append(f"{name} lora_A {module.a}, lora_B {module.b} (r={rank})")
        if layout is None:
            continue
        layer = canonical_module(name)
        if layer not in layout:
            absent.append(name)
        elif (expected := _expected_shapes(layout[layer], rank, module.embedding)) and (
            expected != (module.a, module.b)
        ):
            shapes.append(
                f"{name} has lora_A {module.a}, lora_B {module.b}; expected "
                f"{expected[0]}, {expected[1]}"
            )
    return (
        _summarize("unexpected tensors that are not LoRA weights", unexpected)
        + _summarize("incomplete LoRA pairs", halves)
        + _summarize("adapted layers whose rank is not the configured one", ranks)
        + _summarize(f"adapted layers that {base_name} does not have", absent)
        + _summarize(f"adapted layers whose shapes do not match {base_name}", shapes)
    )


def _vision_problems(tensors: dict[str, list[int]]) -> list[str]:
    modules, _ = _group_lora_tensors(tensors)
    vision = [
        key.removeprefix("base_model.model.")
        for key in modules
        if any(part in f".{key}." for part in VISION_PARTS)
    ]
    return _summarize(
        "vision-tower or projector layers with LoRA weights, which this engine does not apply "
        "(serve it with engine.vision_lora: true)",
        vision,
    )


def _group_lora_tensors(tensors: dict[str, list[int]]) -> tuple[dict[str, _LoraModule], list]:
    modules: dict[str, _LoraModule] = {}
    unexpected = []
    for key, shape in tensors.items():
        suffix = next((s for s in _LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            unexpected.append(key)
            continue
        half, embedding = _LORA_SUFFIXES[suffix]
        module = modules.setdefault(key.removesuffix(suffix), _LoraModule(embedding=embedding))
        setattr(module, half.lower(), list(shape))
    return modules, unexpected


def _expected_rank(config: dict[str, Any], module: str) -> int | None:
    # PEFT's rule: a pattern key matches a module name suffix at a "." boundary; first wins.
    name = module.removeprefix("base_model.model.")
    for pattern, rank in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return rank
    return config.get("r")


def _expected_shapes(
    weight: tuple[int, int] | None, rank: int, embedding: bool
) -> tuple[list[int], list[int]] | None:
    if weight is None:
        return None
    rows, cols = weight
    if embedding:  # Embedding weight [num_embeddings, dim]: A [r, num], B [dim, r]
        return [rank, rows], [cols, rank]
    return [rank, cols], [rows, rank]  # Linear weight [out, in]: A [r, in], B [out, r]


def _nonfinite_problems(path: Path) -> list[str]:
    import numpy as np

    with path.open("rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    bad = []
    for key, info in header.items():
        if key == "__metadata__" or info["dtype"] not in _EXPONENT_MASKS:
            continue
        dtype, mask = _EXPONENT_MASKS[info["dtype"]]
        start, end = info["data_offsets"]
        bits = data[start:end].view(dtype)
        if np.any((bits & mask) == mask):
            bad.append(key)
    return _summarize("tensors with NaN or infinite values", bad)


def _summarize(what: str, items: Iterable[str]) -> list[str]:
    items = list(items)
    if not items:
        return []
    shown = "; ".join(items[:MAX_EXAMPLES])
    more = f" (and {len(items) - MAX_EXAMPLES} more)" if len(items) > MAX_EXAMPLES else ""
    return [f"{len(items)} {what}: {shown}{more}"]
