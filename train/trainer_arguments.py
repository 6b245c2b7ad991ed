"""What every training method's Trainer shares: its `TrainingArguments` fields from the config's
`training` section, and its callbacks (MLflow + progress, early stopping). Imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gemlora.rundir import CHECKPOINTS_DIR
from gemlora.train.config import TrainConfig
from gemlora.train.dataset import TrainingData
from gemlora.train.model import resolve_dtype
from gemlora.train.tracking import MlflowProgressCallback

if TYPE_CHECKING:
    from gemlora.rundir import ProgressLog


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
