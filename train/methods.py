"""Training methods: where supervised, DPO and reinforcement runs part.

A method is a `TrainingMethod` in a module of its own (`gemlora.train.sft`, `gemlora.train.dpo`,
`gemlora.train.grpo`),
registered under its config name (`method:` in the training config) by an entry point of the
`gemlora.train_methods` group in pyproject.toml:

    [project.entry-points."gemlora.train_methods"]
    supervised = "gemlora.train.sft:SupervisedMethod"

`run_training` asks `training_method(config.method)` for it when a run starts; everything else in
a run (data, MLflow, checkpoints, registration, verification) is shared. A method module imports
torch and TRL, so it is loaded only then.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from transformers import Trainer

    from gemlora.rundir import ProgressLog
    from gemlora.train.config import TrainConfig
    from gemlora.train.dataset import TrainingData
    from gemlora.train.init_adapter import InitAdapter
    from gemlora.train.model import LoadedBase

ENTRY_POINT_GROUP = "gemlora.train_methods"


class TrainingMethod(ABC):
    """How one method trains and what its held-out data is scored by."""

    name: ClassVar[str]  # its `method:` value
    # Whether the generation eval (base and adapter answers scored against the held-out
    # references) applies: not to prompts without a reference answer.
    generation_eval: ClassVar[bool] = True

    @abstractmethod
    def build_trainer(
        self,
        config: TrainConfig,
        loaded: LoadedBase,
        data: TrainingData,
        run_dir: Path,
        progress: ProgressLog | None,
        init: InitAdapter | None,
    ) -> Trainer:
        """The run's Trainer, checkpointing into `run_dir`. `progress` is None on every process
        but the main one; `init` is the adapter to continue, else a new LoRA is made."""

    @abstractmethod
    def held_out_scores(
        self,
        config: TrainConfig,
        trainer: Trainer,
        loaded: LoadedBase,
        data: TrainingData,
        progress: ProgressLog,
    ) -> dict[str, float]:
        """Scores on the held-out data after training (they become the version's eval tags
        and what `promote_if` compares); called only when there is held-out data."""


def method_names() -> list[str]:
    """Every registered method."""
    return sorted(entry.name for entry in entry_points(group=ENTRY_POINT_GROUP))


def training_method(name: str) -> TrainingMethod:
    """The method registered as `name`. Imports its module (torch, TRL)."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise LookupError(
            f"no training method {name!r} is registered (known: {', '.join(method_names())}); "
            f"a method registers itself with an entry point of the {ENTRY_POINT_GROUP!r} group"
        )
    method = next(iter(found)).load()
    if not (isinstance(method, type) and issubclass(method, TrainingMethod)):
        raise TypeError(f"the {name!r} training method {method!r} is not a TrainingMethod")
    return method()
