"""Reinforcement fine-tuning against a grader (`method: reinforcement`): TRL's GRPOTrainer with
PEFT LoRA, the reward being `gemlora.evals`' grader implementation. Imports torch and TRL: import
it when a run starts.

    prompts (`PromptExample.to_trl_row()`: the prompt, the item as JSON, images)
      -> GRPOTrainer: `generations` sampled answers per prompt (transformers generate with the
         adapter on; vLLM colocated on a GPU), each graded by `GraderReward`, advantages within
         the group, the clipped policy loss (+ beta x KL to the base: the adapter switched off)
      -> reward, its parts, KL, completion length and the time split generate / score / train,
         per step; sampled completions with their scores as MLflow tables
    held-out prompts -> greedy answers of the base and the adapter, graded: `reward`,
      `base_reward` and the paired bootstrap interval of their difference

A grader that cannot score one answer (an exception in a python grader, a judge's unreadable
reply) scores it as OpenAI does, 0 with the error's flag, and the run goes on: the errors are
counted per step (`rewards/<grader>/errors`) and shown in the completions table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from trl import GRPOConfig, GRPOTrainer

from gemlora import run_events
from gemlora.data import DatasetError, Problem, PromptExample
from gemlora.data.example import IN_MEMORY
from gemlora.evals import GradeResult, GraderModel, PythonLimits, grade_or_failure, validate_grader
from gemlora.train.config import ConfigError, ReinforcementSection, TrainConfig
from gemlora.train.dataset import TrainingData
from gemlora.train.init_adapter import trainable_model
from gemlora.train.methods import TrainingMethod
from gemlora.train.trainer_arguments import callbacks, trainer_arguments

if TYPE_CHECKING:
    from gemlora.rundir import ProgressLog
    from gemlora.train.init_adapter import InitAdapter
    from gemlora.train.model import LoadedBase

COMPLETIONS_DIR = "completions"  # MLflow artifact folder of the sampled completions' tables


class GraderReward:
    """A TRL reward function: the grader on each sampled answer, with the prompt's item.

    Returns exactly the rewards `POST /v1/fine_tuning/alpha/graders/run` returns for the same
    sample and item (both call `grade_or_failure`). A multi grader's parts are logged as
    `rewards/<grader>/<part>`; answers the grader could not score, as `rewards/<grader>/errors`
    (their share of the batch) and in the completions table's `grader_error` column."""

    def __init__(
        self,
        grader: GraderModel,
        judge: Callable | None = None,
        limits: PythonLimits | None = None,
    ) -> None:
        self.grader = grader
        self.judge = judge
        self.limits = limits or PythonLimits()
        self.__name__ = grader.name  # TRL names the reward after it (`rewards/<name>/mean`)
        self.errors = 0  # answers not scored, over the whole run

    def __call__(self, prompts, completions, item, log_metric=None, log_extra=None, **_):
        results = [
            self.grade(answer_text(completion), json.loads(fields))
            for completion, fields in zip(completions, item, strict=True)
        ]
        errors = [_error_of(result) for result in results]
        self.errors += sum(error is not None for error in errors)
        if log_metric is not None:
            log_metric(f"rewards/{self.__name__}/errors", _share(errors))
            for part, values in _parts(results).items():
                log_metric(f"rewards/{self.__name__}/{part}", sum(values) / len(values))
        if log_extra is not None:
            log_extra("grader_error", [error or "" for error in errors])
        return [result.reward for result in results]

    def grade(self, output_text: str, item: dict[str, Any]) -> GradeResult:
        return grade_or_failure(
            self.grader, {"output_text": output_text}, item, self.judge, self.limits
        )


def answer_text(completion) -> str:
    """A sampled answer's text: TRL gives conversational completions as a one-message list."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


def _error_of(result: GradeResult) -> str | None:
    flags = [name for name, set_ in result.metadata.errors if set_ is True]
    return ", ".join(flags) if flags else None


def _share(errors: list[str | None]) -> float:
    return sum(error is not None for error in errors) / max(len(errors), 1)


def _parts(results: list[GradeResult]) -> dict[str, list[float]]:
    parts: dict[str, list[float]] = {}
    for result in results:
        for name, value in result.sub_scores.items():
            parts.setdefault(name, []).append(value)
    return parts


class GemloraGRPOTrainer(GRPOTrainer):
    """TRL's GRPO, with the time of each step split into generate / score / train (forward and
    backward) as metrics, and the sampled completions with their rewards and advantages logged
    to MLflow as a table at every log step (`completions/step-NNNNN.json`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clock = {"generate": 0.0, "score": 0.0}

    def _generate(self, prompts):
        started = time.perf_counter()
        try:
            return super()._generate(prompts)
        finally:
            self._clock["generate"] += time.perf_counter() - started

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        started = time.perf_counter()
        try:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self._clock["score"] += time.perf_counter() - started

    def training_step(self, model, inputs, num_items_in_batch):
        self._clock = {"generate": 0.0, "score": 0.0}
        started = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        total = time.perf_counter() - started
        metrics = self._metrics["train"]
        metrics["time/generate_s"].append(self._clock["generate"])
        metrics["time/score_s"].append(self._clock["score"])
        metrics["time/train_s"].append(total - self._clock["generate"] - self._clock["score"])
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        training = self.model.training
        super().log(logs, start_time)
        if training and self.accelerator.is_main_process and self._logs["prompt"]:
            self._log_completions()

    def _log_completions(self) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        count = len(self._logs["completion"])
        table = {
            "step": [self.state.global_step] * count,
            "prompt": [_last_user_text(p) for p in list(self._logs["prompt"])[-count:]],
            "completion": [answer_text(c) for c in self._logs["completion"]],
            **{f"reward/{name}": list(v) for name, v in self._logs["rewards"].items()},
            "advantage": list(self._logs["advantages"]),
            **{name: list(v) for name, v in self._logs["extra"].items()},
        }
        step = self.state.global_step
        mlflow.log_table(table, artifact_file=f"{COMPLETIONS_DIR}/step-{step:05d}.json")


def _last_user_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    last = next(m for m in reversed(prompt) if m["role"] == "user")
    content = last["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


class ReinforcementMethod(TrainingMethod):
    name = "reinforcement"
    generation_eval = False  # prompts have no reference answer: the grader scores them

    def build_trainer(
        self,
        config: TrainConfig,
        loaded: LoadedBase,
        data: TrainingData,
        run_dir: Path,
        progress: ProgressLog | None,
        init: InitAdapter | None = None,
    ) -> GemloraGRPOTrainer:
        rl = config.reinforcement
        reward = grader_reward(rl)
        check_item_fields(reward.grader, data)
        arguments = trainer_arguments(config, data, run_dir)
        # `training.batch_size` counts prompts; TRL's batch counts answers.
        answers = config.training.batch_size * rl.generations
        arguments |= dict(per_device_train_batch_size=answers, per_device_eval_batch_size=answers)
        args = GRPOConfig(
            **arguments,
            num_generations=rl.generations,
            num_generations_eval=rl.eval_generations,
            max_completion_length=rl.max_completion_tokens,
            temperature=rl.temperature,
            top_p=rl.top_p,
            top_k=rl.top_k or 0,
            beta=rl.beta,
            loss_type=rl.loss_type,
            scale_rewards=rl.scale_rewards,
            epsilon=rl.epsilon,
            mask_truncated_completions=rl.mask_truncated_completions,
            remove_unused_columns=False,  # the reward reads the `item` column
            log_completions=False,  # ours go to MLflow (GemloraGRPOTrainer._log_completions)
            **generation_arguments(rl),
        )
        model, peft_config = trainable_model(loaded, config.lora, init)
        return GemloraGRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=args,
            train_dataset=prompt_dataset(data.train, loaded.multimodal),
            eval_dataset=_eval_dataset(config, data, loaded.multimodal),
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
        """The base and the adapter answer up to `reinforcement.eval_prompts` held-out prompts
        greedily; the grader scores both. Scores (registry tags, `promote_if`): `reward`,
        `base_reward`, `reward_difference_low` / `_high` (the paired bootstrap interval)."""
        import mlflow

        count = min(len(data.eval), config.reinforcement.eval_prompts)
        if not count:
            return {}
        reward = trainer.reward_funcs[0]
        report = held_out_rewards(
            trainer.model,
            loaded.processor,
            data.eval[:count],
            reward,
            config.eval.max_new_tokens,
            loaded.multimodal,
        )
        scores = report.scores()
        step = trainer.state.global_step
        mlflow.log_metrics({f"eval_{name}": value for name, value in scores.items()}, step=step)
        mlflow.log_table(report.table(), artifact_file="eval/rewards.json")
        progress.write(run_events.RewardEval(step=step, prompts=count, **scores))
        return scores


def generation_arguments(rl: ReinforcementSection) -> dict[str, Any]:
    """`GRPOConfig` fields of the sampling backend: TRL's vLLM colocate mode on a GPU (the
    engine shares the training process and its GPU; the LoRA is merged into the engine's
    weights after each step), else transformers generate."""
    if rl.generation == "transformers":
        return {}
    if not torch.cuda.is_available():
        raise ConfigError(
            ["reinforcement.generation: vllm-colocate needs a GPU; on a CPU, set it to "
             "transformers"]
        )  # fmt: skip
    return dict(
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=rl.vllm_gpu_memory_utilization,
    )


def grader_reward(rl: ReinforcementSection) -> GraderReward:
    judge = None
    if rl.judge is not None:
        from gemlora.evals.run import endpoint_judge

        judge = endpoint_judge(rl.judge)
    return GraderReward(validate_grader(rl.grader), judge)


def check_item_fields(grader: GraderModel, data: TrainingData) -> None:
    """Every prompt has the item fields the grader reads: a missing one is a data error found
    now, naming its line, not a reward of 0 at every step."""
    from gemlora.evals import GraderError
    from gemlora.evals.templates import check_item, item_paths

    paths = item_paths(grader.model_dump())
    for example in [*data.train, *data.eval]:
        try:
            check_item(paths, example.item)
        except GraderError as error:
            field = str(error).rsplit("looking up ", 1)[-1].rstrip(")")
            message = f"the grader reads {field}, which this prompt lacks (reinforcement.grader)"
            raise DatasetError(Problem(example.source or IN_MEMORY, field, message)) from None


def prompt_dataset(prompts: list[PromptExample], multimodal: bool):
    """TRL's conversational prompt rows (`PromptExample.to_trl_row`): `prompt`, and `item` (a
    JSON object as text); for a multimodal base every row has `images` (empty for text-only
    prompts), so TRL feeds pixels through the processor."""
    from datasets import Dataset, Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    messages = List({"role": Value("string"), "content": List(part)})
    features = {"prompt": messages, "item": Value("string")}
    rows = [prompt.to_trl_row() for prompt in prompts]
    if multimodal:
        features["images"] = List(Image())
        rows = [{"images": []} | row for row in rows]
    return Dataset.from_list(rows, features=Features(features))


def _eval_dataset(config: TrainConfig, data: TrainingData, multimodal: bool):
    """The held-out prompts TRL samples rewards on every `training.eval_steps`."""
    if not data.eval or config.training.eval_steps is None:
        return None
    return prompt_dataset(data.eval, multimodal)


# --- held-out rewards -----------------------------------------------------------------------


@dataclass
class PromptReward:
    prompt: str  # the last user turn's text
    item: str  # the item fields, as JSON
    base: str
    adapter: str
    base_reward: float
    reward: float


@dataclass
class RewardEval:
    prompts: list[PromptReward] = field(default_factory=list)

    def scores(self) -> dict[str, float]:
        """`reward`, `base_reward` (means) and `reward_difference_low` / `_high`: the paired
        bootstrap interval (95%) of the adapter's reward minus the base's."""
        from gemlora.evals.stats import compare

        if not self.prompts:
            return {}
        comparison = compare(
            "reward",
            "adapter",
            "base",
            [p.reward for p in self.prompts],
            [p.base_reward for p in self.prompts],
        )
        return {
            "reward": comparison.mean,
            "base_reward": comparison.baseline_mean,
            "reward_difference_low": comparison.low,
            "reward_difference_high": comparison.high,
        }

    def table(self) -> dict[str, list]:
        rows = [asdict(p) for p in self.prompts]
        return {column: [row[column] for row in rows] for column in PromptReward.__annotations__}


def held_out_rewards(
    model,
    processor,
    prompts: list[PromptExample],
    reward: GraderReward,
    max_new_tokens: int,
    multimodal: bool,
) -> RewardEval:
    """Greedy answers of the base (adapter disabled) and the adapter to each prompt, graded."""
    from gemlora.train.collator import message_text
    from gemlora.train.dataset import to_hf_dataset
    from gemlora.train.evaluate import generate_greedy, prompt_inputs

    result = RewardEval()
    rows = to_hf_dataset([prompt.prompt_example() for prompt in prompts], multimodal)
    model.eval()
    with torch.no_grad():
        for prompt, row in zip(prompts, rows, strict=True):
            inputs = prompt_inputs(processor, row).to(model.device)
            with model.disable_adapter():
                base = generate_greedy(model, processor, inputs, max_new_tokens)
            adapter = generate_greedy(model, processor, inputs, max_new_tokens)
            last_user = next(m for m in reversed(row["messages"]) if m["role"] == "user")
            result.prompts.append(
                PromptReward(
                    prompt=message_text(last_user),
                    item=json.dumps(prompt.item, sort_keys=True),
                    base=base,
                    adapter=adapter,
                    base_reward=reward.grade(base, prompt.item).reward,
                    reward=reward.grade(adapter, prompt.item).reward,
                )
            )
    return result
