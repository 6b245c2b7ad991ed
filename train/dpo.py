"""The trainer of a DPO run (`method: dpo`): TRL's DPOTrainer with PEFT LoRA on preference
pairs, and what the held-out pairs are scored by. Imports torch and TRL: import it when a run
starts.

    pairs (`PreferenceExample.to_trl_row()`) -> DPOTrainer(ref_model=None) -> rewards/*, per step
    held-out pairs -> eval_loss, eval_rewards/* -> log-prob margins, base vs adapter

The reference model is the policy itself: TRL computes the reference log-probabilities with
the adapter switched off (the base), or, when the run starts from `base.init_adapter`, with a
frozen copy of the starting LoRA weights. No second copy of the model is ever loaded. The LM
head runs on the reply tokens only, with gemlora's CPU kernel (`gemlora.train.loss_head`), for
the policy and the reference alike; the loss is TRL's.

The pairs were validated and length-checked by `data/` (prompt + each reply within
`data.max_length`, refused or dropped), so TRL is told not to truncate (`max_length=None`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from trl import DPOConfig, DPOTrainer

from gemlora import run_events
from gemlora.data import PreferenceExample
from gemlora.train.config import TrainConfig
from gemlora.train.dataset import TrainingData
from gemlora.train.init_adapter import trainable_model
from gemlora.train.loss_head import fast_loss_head
from gemlora.train.methods import TrainingMethod
from gemlora.train.trainer_arguments import callbacks, trainer_arguments

if TYPE_CHECKING:
    from gemlora.rundir import ProgressLog
    from gemlora.train.init_adapter import InitAdapter
    from gemlora.train.model import LoadedBase

# TRL's per-pair metrics (means over the pairs of a batch), in MLflow as they are named here
# and, on held-out pairs, with the `eval_` prefix.
PAIR_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


class GemloraDPOTrainer(DPOTrainer):
    """TRL's DPO loss, with the LM head on reply tokens only (gemlora's loss head), and the pair
    metrics averaged over pairs: TRL averages batch means, which weighs the pairs of a short
    last batch more (10 held-out pairs in batches of 4, 4 and 2 would count the last two
    double, and a 9-of-10 accuracy could read 0.83)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pairs: dict[str, list[int]] = defaultdict(list)  # pairs per logged batch, by mode

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with fast_loss_head():
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        self._pairs[mode].append(inputs["input_ids"].shape[0] // 2)  # rows: chosen, rejected
        return result

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        pair_means(self._metrics[mode], self._pairs[mode])
        self._pairs[mode].clear()
        super().log(logs, start_time)


def pair_means(metrics: dict[str, list[float]], pairs: list[int]) -> None:
    """Replace the batch means of each of `PAIR_METRICS` by their mean over pairs (`pairs[i]`:
    the pairs of batch i), in place; TRL then averages the single value as it is."""
    for key in PAIR_METRICS:
        values = metrics.get(key)
        if values and len(values) == len(pairs):
            metrics[key] = [sum(v * n for v, n in zip(values, pairs, strict=True)) / sum(pairs)]


class DpoMethod(TrainingMethod):
    name = "dpo"

    def build_trainer(
        self,
        config: TrainConfig,
        loaded: LoadedBase,
        data: TrainingData,
        run_dir: Path,
        progress: ProgressLog | None,
        init: InitAdapter | None = None,
    ) -> GemloraDPOTrainer:
        dpo = config.dpo
        loss_types, loss_weights = dpo.loss_types()
        args = DPOConfig(
            **trainer_arguments(config, data, run_dir),
            beta=dpo.beta,
            loss_type=loss_types,
            loss_weights=loss_weights,
            label_smoothing=dpo.label_smoothing,
            f_divergence_type=dpo.f_divergence_type,
            f_alpha_divergence_coef=dpo.f_alpha_divergence_coef,
            ld_alpha=dpo.ld_alpha,
            use_weighting=dpo.use_weighting,
            discopop_tau=dpo.discopop_tau,
            disable_dropout=dpo.disable_dropout,
            # Validated lengths: TRL would otherwise cut pairs at its default of 1,024 tokens.
            max_length=None,
            precompute_ref_log_probs=False,  # the reference is the adapter-less policy, per batch
        )
        model, peft_config = trainable_model(loaded, config.lora, init)
        return GemloraDPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=preference_dataset(data.train, loaded.multimodal),
            eval_dataset=preference_dataset(data.eval, loaded.multimodal) if data.eval else None,
            processing_class=loaded.processor,
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
        """TRL's eval on the held-out pairs (`eval_loss`, `eval_rewards/*`, logged by the callback),
        then the log-prob margins of base and adapter on up to `eval.margin_pairs` of them. The
        scores (registry tags, `promote_if`): `eval_loss`, `eval_rewards_accuracy`,
        `eval_rewards_margin`, `logp_margin`, `base_logp_margin`."""
        import mlflow

        metrics = trainer.evaluate()
        scores = {
            "eval_loss": metrics["eval_loss"],
            "eval_rewards_accuracy": metrics["eval_rewards/accuracies"],
            "eval_rewards_margin": metrics["eval_rewards/margins"],
        }
        count = min(len(data.eval), config.eval.margin_pairs)
        if not count:
            return scores
        report = logp_margins(trainer, data.eval[:count])
        margins = report.scores()
        step = trainer.state.global_step
        names = {
            "base_logp_margin": "eval_base_logp_margin",
            "logp_margin": "eval_adapter_logp_margin",
        }
        mlflow.log_metrics({names[score]: value for score, value in margins.items()}, step=step)
        mlflow.log_table(report.table(), artifact_file="eval/margins.json")
        progress.write(run_events.MarginEval(step=step, pairs=count, **margins))
        return scores | margins


def preference_dataset(pairs: list[PreferenceExample], multimodal: bool):
    """TRL's conversational preference rows (`PreferenceExample.to_trl_row`); for a multimodal
    base every row has `images` (empty for text-only pairs), so TRL feeds pixels through the
    processor."""
    from datasets import Dataset, Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    messages = List({"role": Value("string"), "content": List(part)})
    features = {"prompt": messages, "chosen": messages, "rejected": messages}
    rows = [pair.to_trl_row() for pair in pairs]
    if multimodal:
        features["images"] = List(Image())
        rows = [{"images": []} | row for row in rows]
    return Dataset.from_list(rows, features=Features(features))


# --- log-probability margins --------------------------------------------------------------------


@dataclass
class PairMargin:
    prompt: str  # the last user turn's text
    chosen: str
    rejected: str
    base: float  # log p(chosen) - log p(rejected) under the base, summed over reply tokens
    adapter: float  # the same under the adapter


@dataclass
class MarginEval:
    pairs: list[PairMargin] = field(default_factory=list)

    def scores(self) -> dict[str, float]:
        """`base_logp_margin`, `logp_margin` (the adapter's): mean margins in nats."""
        if not self.pairs:
            return {}
        count = len(self.pairs)
        return {
            "base_logp_margin": sum(p.base for p in self.pairs) / count,
            "logp_margin": sum(p.adapter for p in self.pairs) / count,
        }

    def table(self) -> dict[str, list]:
        rows = [asdict(p) for p in self.pairs]
        return {column: [row[column] for row in rows] for column in PairMargin.__annotations__}


def logp_margins(trainer, pairs: list[PreferenceExample]) -> MarginEval:
    """How much more likely the chosen reply of each of `pairs` (the first of the trainer's eval
    set) is than the rejected one, in nats, under the base (adapter disabled) and under the
    adapter. Scored as DPO scores the policy: TRL's tokenization and collator, log-probabilities
    summed over each reply's tokens (`<end_of_turn>` included), the LM head on those only."""
    from torch.utils.data import DataLoader

    model = trainer.model
    batches = DataLoader(
        trainer.eval_dataset.select(range(len(pairs))),
        batch_size=trainer.args.per_device_eval_batch_size,
        collate_fn=trainer.data_collator,
    )
    base: list[float] = []
    adapter: list[float] = []
    model.eval()
    with torch.no_grad(), fast_loss_head():
        for batch in batches:
            inputs = {key: value.to(model.device) for key, value in batch.items()}
            with model.disable_adapter():
                base += _margins(model, inputs)
            adapter += _margins(model, inputs)
    result = MarginEval()
    for pair, before, after in zip(pairs, base, adapter, strict=True):
        last_user = next(m for m in reversed(pair.prompt) if m.role == "user")
        result.pairs.append(
            PairMargin(last_user.text, pair.chosen.text, pair.rejected.text, before, after)
        )
    return result


def _margins(model, inputs: dict) -> list[float]:
    """log p(chosen) - log p(rejected) of each pair of a DPO batch (chosen rows, then rejected)."""
    completion = inputs["completion_mask"]
    labels = inputs["input_ids"].masked_fill(completion == 0, -100)
    kwargs = {key: value for key, value in inputs.items() if key != "completion_mask"}
    log_probs = model(**kwargs, labels=labels, fused_lm_head=True).log_probs.sum(dim=1)
    chosen, rejected = log_probs.chunk(2)
    return (chosen - rejected).tolist()
