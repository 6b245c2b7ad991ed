"""Fine-tuning: LoRA and QLoRA on a Gemma 3 base with TRL, tracked in MLflow, registered in the
MLflow Model Registry through `adapters`.

    config = load_config("configs/train/style-270m.yaml", ["training.lr=1e-4"])
    result = run_training(config)          # resume=True continues a killed run
    result.name, result.version, result.eval_scores

`gemlora train CONFIG.yaml [--set KEY=VALUE]... [--resume]` runs the same from the shell.
Light to import: torch, transformers, TRL, PEFT and MLflow load on first use.
"""

from gemlora.train.collator import Gemma3ChatCollator
from gemlora.train.config import ConfigError, TrainConfig, load_config, parse_config
from gemlora.train.run import RunDirError, TrainingCancelled, TrainResult, run_training

__all__ = [
    "ConfigError",
    "Gemma3ChatCollator",
    "RunDirError",
    "TrainConfig",
    "TrainResult",
    "TrainingCancelled",
    "load_config",
    "parse_config",
    "run_training",
]
