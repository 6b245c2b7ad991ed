"""Supervised fine-tuning (`method: supervised`): TRL's SFTTrainer with PEFT LoRA, gemlora's
collator, and the LM head on labelled positions only (see `gemlora.train.loss_head`). Imports
torch and TRL: loaded when a run starts (`gemlora.train.methods`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trl import SFTConfig, SFTTrainer

from gemlora.train.collator import Gemma3ChatCollator
from gemlora.train.config import TrainConfig
from gemlora.train.dataset import LENGTH_COLUMN, TrainingData, to_hf_dataset
from gemlora.train.init_adapter import trainable_model
from gemlora.train.loss_head import fast_loss_head
from gemlora.train.methods import TrainingMethod
from gemlora.train.trainer_arguments import callbacks, trainer_arguments

if TYPE_CHECKING:
    from gemlora.rundir import ProgressLog
    from gemlora.train.init_adapter import InitAdapter
    from gemlora.train.model import LoadedBase


class GemloraSFTTrainer(SFTTrainer):
    """Every loss, in training and in eval, goes through TRL's fused head on the labelled
    positions only."""

    def compute_loss(self, *args, **kwargs):
        with fast_loss_head():
            return super().compute_loss(*args, **kwargs)


class SupervisedMethod(TrainingMethod):
    name = "supervised"

    def build_trainer(
        self,
        config: TrainConfig,
        loaded: LoadedBase,
        data: TrainingData,
        run_dir: Path,
        progress: ProgressLog | None,
        init: InitAdapter | None = None,
    ) -> GemloraSFTTrainer:
        training = config.training
        args = SFTConfig(
            **trainer_arguments(config, data, run_dir),
            train_sampling_strategy="group_by_length" if training.group_by_length else "random",
            length_column_name=LENGTH_COLUMN,
            # The collator takes canonical examples and builds the labels itself; examples were
            # length-checked by the validation, so nothing is truncated.
            remove_unused_columns=False,
            dataset_kwargs={"skip_prepare_dataset": True},
            max_length=None,
        )
        padding_free = training.padding_free and not loaded.multimodal
        lengths = data.train_lengths if training.group_by_length else None
        model, peft_config = trainable_model(loaded, config.lora, init)
        return GemloraSFTTrainer(
            model=model,
            args=args,
            train_dataset=to_hf_dataset(data.train, loaded.multimodal, lengths),
            eval_dataset=to_hf_dataset(data.eval, loaded.multimodal) if data.eval else None,
            processing_class=loaded.processor,
            data_collator=Gemma3ChatCollator(loaded.processor, padding_free=padding_free),
            peft_config=peft_config,
            callbacks=callbacks(progress, config.training.early_stopping_patience),
        )

    def held_out_scores(
        self,
        config: TrainConfig,
        trainer,
        loaded: LoadedBase,
        data: TrainingData,
        progress: ProgressLog,
    ) -> dict[str, float]:
        """The eval loss on the held-out examples (logged to MLflow by the callback)."""
        return {"eval_loss": trainer.evaluate()["eval_loss"]}
