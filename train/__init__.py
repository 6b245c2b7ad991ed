"""Fine-tuning: LoRA and QLoRA on a Gemma 3 base with TRL, tracked in MLflow, registered in the
MLflow Model Registry through `adapters`.

    config = load_config("configs/train/style-270m.yaml", ["training.lr=1e-4"])
    result = run_training(config)          # resume=True continues a killed run
    result.name, result.version, result.eval_scores

`gemlora train CONFIG.yaml [--set KEY=VALUE]... [--resume]` runs the same from the shell.
Light to import: the config (`gemlora.train.config`, which the jobs API validates jobs with)
loads no torch, transformers, TRL or PEFT; the names below that need them load on first use.
"""

from gemlora.train.config import ConfigError, TrainConfig, load_config, parse_config

# name -> module, imported on first use (PEP 562): they pull in torch and transformers.
_HEAVY = {
    "Gemma3ChatCollator": "gemlora.train.collator",
    "RunDirError": "gemlora.train.run",
    "TrainResult": "gemlora.train.run",
    "TrainingCancelled": "gemlora.train.run",
    "run_training": "gemlora.train.run",
}

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


def __getattr__(name: str):
    if name not in _HEAVY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HEAVY[name]), name)
