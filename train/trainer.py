"""The trainer of a supervised run: TRL's SFTTrainer with PEFT LoRA, gemlora's collator, and
the LM head on labelled positions only (see `gemlora.train.loss_head`); and the Trainer
arguments every method shares. Imports torch and TRL: import it when a run starts.

A method module (this one; `gemlora.train.dpo`) has `build_trainer` and `held_out_scores`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from trl import SFTConfig, SFTTrainer

from gemlora.rundir import CHECKPOINTS_DIR
from gemlora.train.collator import Gemma3ChatCollator
from gemlora.train.config import TrainConfig
from gemlora.train.dataset import LENGTH_COLUMN, TrainingData, to_hf_dataset
from gemlora.train.init_adapter import trainable_model
from gemlora.train.loss_head import fast_loss_head
from gemlora.train.model import resolve_dtype
from gemlora.train.tracking import MlflowProgressCallback

if TYPE_CHECKING:
    from gemlora.train.init_adapter import InitAdapter
    from gemlora.train.model import LoadedBase
    from gemlora.train.tracking import ProgressLog


class GemloraSFTTrainer(SFTTrainer):
    """Every loss, in training and in eval, goes through TRL's fused head on the labelled
    positions only."""

    def compute_loss(self, *args, **kwargs):
        with fast_loss_head():
            return super().compute_loss(*args, **kwargs)


def build_trainer(
    config: TrainConfig,
    loaded: LoadedBase,
    data: TrainingData,
    run_dir: Path,
    progress: ProgressLog | None,
    init: InitAdapter | None = None,
):
    """The run's `SFTTrainer`, checkpointing into `run_dir`; `progress` (main process only)
    receives the MLflow/progress callback. `init`: the adapter to continue, else a new one."""
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
    config: TrainConfig, trainer, loaded: LoadedBase, data: TrainingData, progress: ProgressLog
) -> dict[str, float]:
    """The eval loss on the held-out examples (logged to MLflow by the callback)."""
    return {"eval_loss": trainer.evaluate()["eval_loss"]}


def trainer_arguments(config: TrainConfig, data: TrainingData, run_dir: Path) -> dict:
    """The `TrainingArguments` fields of `SFTConfig` and `DPOConfig` alike: the `training`
    section, checkpoints in `run_dir`, precision and device."""
    training = config.training
    evaluate_during = bool(data.eval) and training.eval_steps is not None
    return dict(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
        max_steps=training.max_steps or -1,
        num_train_epochs=training.epochs,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation,
        learning_rate=training.lr,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        optim=training.optimizer,
        seed=training.seed,
        gradient_checkpointing=training.gradient_checkpointing,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=training.eval_steps,
        # Early stopping: the best checkpoint by eval loss is loaded at the end, and registered.
        load_best_model_at_end=training.early_stopping_patience is not None,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=training.logging_steps,
        bf16=resolve_dtype(config.base.compute_dtype) == "bf16",
        # TRL's bf16 needs use_cpu on a CPU-only machine.
        use_cpu=not torch.cuda.is_available(),
        report_to="none",  # MLflow is logged by our callback, into the run we manage
        # Every LoRA weight takes part in every step: DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
    )


def callbacks(progress: ProgressLog | None, early_stopping_patience: int | None = None) -> list:
    found = [MlflowProgressCallback(progress)] if progress is not None else []
    if early_stopping_patience is not None:
        from transformers import EarlyStoppingCallback

        found.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    return found
