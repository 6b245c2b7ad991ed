"""`base.init_adapter`: a run that continues an existing LoRA adapter instead of a new one.

    SFT run -> registered `support-bot/3` -> DPO run with `init_adapter: support-bot/3`

The adapter comes from the registry (`NAME@ALIAS`, `NAME/VERSION`, or `NAME` for the default
alias) or from a PEFT directory, is checked against the base before anything loads (same
family, every target layer present with matching shapes: `gemlora.adapters.compat`), and is
loaded trainable. Its own LoRA settings are trained, not the config's `lora` section. Both
methods load it here; with DPO, TRL keeps a frozen copy of its starting weights (LoRA weights
only, not the model) as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemlora.bases import BaseSpec
from gemlora.train.config import ConfigError, LoraSection

FIELD = "base.init_adapter"


@dataclass(frozen=True)
class InitAdapter:
    path: Path  # a local PEFT directory
    ref: str  # as configured
    version_ref: str | None  # `NAME/VERSION` when it came from the registry
    run_id: str | None  # the MLflow run that trained that version
    lora: dict[str, Any]  # its adapter_config.json

    @property
    def parent(self) -> str:
        """What a run records as where it started: `NAME/VERSION`, or the directory."""
        return self.version_ref or str(self.path)

    def target_modules(self) -> list[str] | str:
        targets = self.lora.get("target_modules")
        return sorted(targets) if isinstance(targets, list) else targets


def resolve_init_adapter(ref: str, base: BaseSpec, tracking_uri: str) -> InitAdapter:
    """`ref` -> a checked local adapter for training on `base`. A directory that exists is a
    directory; anything else is a registry reference. Raises `ConfigError` naming the field."""
    from gemlora.adapters import AdapterNotFoundError, IncompatibleAdapterError, InvalidRefError
    from gemlora.adapters.compat import check_compatibility
    from gemlora.adapters.metadata import read_adapter_config

    directory = Path(ref).expanduser()
    if directory.is_dir():
        compatibility = check_compatibility(directory, base)
        if not compatibility.ok:
            _refuse(ref, base, "; ".join(compatibility.reasons))
        return InitAdapter(directory.resolve(), ref, None, None, read_adapter_config(directory))
    if ref.startswith(("/", ".", "~")):
        _refuse(ref, base, "no such directory")
    registry = _registry(tracking_uri)
    try:
        resolved = registry.resolve(ref, base=base)  # checks it against the base
        run_id = registry.lookup(resolved.version_ref).run_id
    except (AdapterNotFoundError, IncompatibleAdapterError, InvalidRefError) as error:
        _refuse(ref, base, str(error))
    return InitAdapter(
        resolved.path, ref, resolved.version_ref, run_id, read_adapter_config(resolved.path)
    )


def trainable_model(loaded, lora: LoraSection, init: InitAdapter | None):
    """(model, peft_config) for a TRL trainer: the base and a new LoRA config (TRL wraps it),
    or the base with `init` loaded trainable, and no config."""
    from gemlora.train.model import lora_config

    if init is None:
        return loaded.model, lora_config(lora, loaded.multimodal)
    from peft import PeftModel

    return PeftModel.from_pretrained(loaded.model, str(init.path), is_trainable=True), None


def _registry(tracking_uri: str):
    from gemlora.adapters import AdapterRegistry, RegistryConfig

    return AdapterRegistry(RegistryConfig(tracking_uri=tracking_uri))


def _refuse(ref: str, base: BaseSpec, reason: str):
    raise ConfigError([f"{FIELD}: {ref!r} cannot be trained on {base.name}: {reason}"])
