"""The catalogue of Gemma 3 bases gemlora trains on and serves (`configs/bases/*.yaml`).

A base is either built locally by `gemlora models build` (small models for CPU machines and
tests) or pulled from the Hugging Face Hub by id on a GPU machine. Both resolve to one
`BaseSpec` whose `location` is what transformers' and vLLM's loaders take.
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from gemlora.paths import CONFIGS_DIR, models_dir

Quantization = Literal["none", "compressed-tensors-w4a16"]


class BaseSpec(BaseModel):
    """One base model: where it comes from and what an adapter trained on it fits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Catalogue name, used in configs and on the CLI.")
    family: str = Field(
        description="Adapters trained on one member of a family fit every member "
        "(e.g. the bf16 base and its INT4 quantization)."
    )
    source: Literal["local", "hub"] = Field(description="`local`: built by `gemlora models build`.")
    hub_id: str | None = Field(default=None, description="Hub repository id for `source: hub`.")
    revision: str | None = Field(default=None, description="Hub revision (commit, tag or branch).")
    quantization: Quantization = Field(default="none", description="How the weights are stored.")
    multimodal: bool = Field(default=False, description="Takes images (Gemma 3 4B and up).")
    max_model_len: int = Field(default=8192, description="Context length the engine serves.")
    description: str = Field(default="", description="Shown by `gemlora models list`.")
    path: Path | None = Field(default=None, description="Set for a base given as a directory.")

    @property
    def location(self) -> str:
        """What `from_pretrained` and vLLM's `--model` take: a local directory or a hub id."""
        if self.path is not None:
            return str(self.path)
        if self.source == "hub":
            return self.hub_id or self.name
        return str(models_dir() / self.name)

    def is_built(self) -> bool:
        return self.source == "hub" or Path(self.location, "config.json").is_file()


def load_catalogue(directory: Path = CONFIGS_DIR / "bases") -> dict[str, BaseSpec]:
    specs = [BaseSpec(**yaml.safe_load(p.read_text())) for p in sorted(directory.glob("*.yaml"))]
    return {spec.name: spec for spec in specs}


def resolve_base(name_or_path: str) -> BaseSpec:
    """A catalogue name, a model directory, or a hub id -> `BaseSpec`.

    Raises `LookupError` with what to do when a local base is not built yet.
    """
    catalogue = load_catalogue()
    if name_or_path in catalogue:
        spec = catalogue[name_or_path]
        if not spec.is_built():
            raise LookupError(
                f"base {spec.name!r} is not built yet: run `gemlora models build {spec.name}`"
            )
        return spec
    directory = Path(name_or_path).expanduser()
    if directory.is_dir():
        return _spec_from_directory(directory)
    if "/" in name_or_path:
        return BaseSpec(name=name_or_path, family=name_or_path, source="hub", hub_id=name_or_path)
    raise LookupError(
        f"unknown base {name_or_path!r}: use a name from `gemlora models list` "
        f"({', '.join(sorted(catalogue))}), a model directory, or a hub id"
    )


def _spec_from_directory(directory: Path) -> BaseSpec:
    """A directory built by gemlora carries its catalogue name in `gemlora-manifest.json`."""
    import json

    manifest = directory / "gemlora-manifest.json"
    if manifest.is_file():
        name = json.loads(manifest.read_text())["name"]
        known = load_catalogue().get(name)
        if known is not None:
            return known.model_copy(update={"path": directory.resolve()})
    resolved = directory.resolve()
    return BaseSpec(name=resolved.name, family=resolved.name, source="local", path=resolved)
