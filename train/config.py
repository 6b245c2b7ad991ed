"""The training config: one YAML file, validated, every field documented with its default.

    config = load_config("configs/train/style-270m.yaml", ["training.lr=1e-4"])

Sections: `base` (model, quantization, dtype, the adapter to start from), `lora`, `data`,
`training`, `dpo` (with `method: dpo`), `reinforcement` (with `method: reinforcement`), `eval`,
`output`. `method` picks supervised fine-tuning (chat data), DPO (preference pairs) or
reinforcement fine-tuning against a grader (GRPO, prompt-only data). Unknown fields and wrong
types are errors that name the field (`training.lr: ...`). Relative paths in a YAML file are
relative to that file; paths given with `--set` are relative to the current directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gemlora.adapters.refs import validate_alias, validate_name
from gemlora.adapters.verification_record import DEFAULT_TOLERANCE, PromotionRule
from gemlora.bases import load_catalogue
from gemlora.config import ConfigError as ConfigError  # re-exported: train.ConfigError
from gemlora.config import apply_override, read_yaml_mapping, validate
from gemlora.evals.spec import Endpoint

Quantization = Literal["none", "bnb-nf4", "bnb-int8", "dequantized"]
Method = Literal["supervised", "dpo", "reinforcement"]
# TRL 1.16 `DPOConfig.loss_type` values (trl/trainer/dpo_trainer.py `_compute_loss`).
DpoLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]
# The losses built on the chosen-minus-rejected reward difference: the only ones TRL lets
# `f_divergence_type` generalize.
F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop")
CHAT_FORMATS = ("openai", "hf", "sharegpt")
PREFERENCE_FORMATS = ("openai-preference", "trl-preference")
PROMPT_FORMATS = ("openai-reinforcement",)
# The data each method trains on, and its formats.
METHOD_DATA = {
    "supervised": ("chat", CHAT_FORMATS),
    "dpo": ("preference", PREFERENCE_FORMATS),
    "reinforcement": ("prompt-only", PROMPT_FORMATS),
}
# TRL 1.16 `GRPOConfig.loss_type` values that need no other setting.
GrpoLoss = Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"]

LANGUAGE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VISION_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

FP16_REFUSED = (
    "fp16 is refused for Gemma 3: Gemma 3 was trained in bf16 and its activations exceed "
    "fp16's range (max 65504), so fp16 training overflows to inf/NaN; use bf16, or fp32 on "
    "hardware without bf16"
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseSection(Section):
    """The base model LoRA is trained on."""

    model: str = Field(
        default="gemma-3-270m",
        description="A name from `gemlora models list`, a model directory or a Hugging Face "
        "Hub id.",
    )
    revision: str | None = Field(
        default=None, description="Hub revision (commit, tag or branch); None: the catalogue's."
    )
    quantization: Quantization = Field(
        default="none",
        description="How the base is loaded: `none` (its own dtype), `bnb-nf4` (QLoRA, 4-bit "
        "NF4), `bnb-int8` (8-bit), or `dequantized`: a compressed-tensors base (the W4A16 base "
        "you serve) unpacked to the compute dtype, so the adapter is trained on the base you "
        "serve.",
    )
    compute_dtype: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="Weights and compute dtype. `auto`: bf16 where the hardware runs it natively "
        "(CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), else fp32 (elsewhere bf16 matmuls "
        "are emulated, 50x slower). fp16 is refused for Gemma 3.",
    )

    init_adapter: str | None = Field(
        default=None,
        description="Start from an existing LoRA adapter instead of a new one: `NAME@ALIAS` or "
        "`NAME/VERSION` from the registry (`output.tracking_uri`), or a PEFT adapter directory. "
        "It must fit the base (same family, layers that exist). Its own LoRA settings (rank, "
        "alpha, dropout, targets, rsLoRA) are what is trained: the `lora` section is not used. "
        "The usual pipeline is SFT, then DPO from the SFT version; with DPO its starting "
        "weights are also the reference. None: a new adapter from the `lora` section.",
    )

    @field_validator("compute_dtype", mode="before")
    @classmethod
    def _refuse_fp16(cls, value: Any) -> Any:
        if str(value).lower() in ("fp16", "float16", "half"):
            raise ValueError(FP16_REFUSED)
        return value

    @model_validator(mode="after")
    def _dequantized_needs_quantized_base(self) -> BaseSection:
        spec = load_catalogue().get(self.model)
        if spec is None:
            return self  # a directory or hub id: checked when it is loaded
        if self.quantization == "dequantized" and spec.quantization == "none":
            raise ValueError(
                f"quantization 'dequantized' needs a compressed-tensors base, but {spec.name} "
                "is not quantized: use quantization 'none' (or a '-w4a16'/'-int4' base)"
            )
        if self.quantization != "dequantized" and spec.quantization != "none":
            raise ValueError(
                f"{spec.name} is a {spec.quantization} base, which can only be trained "
                "dequantized: set base.quantization to 'dequantized'"
            )
        return self


class LoraSection(Section):
    """The LoRA adapter (PEFT `LoraConfig`); not used with `base.init_adapter`, whose own LoRA
    settings are trained."""

    r: int = Field(default=16, ge=1, le=512, description="Rank.")
    alpha: float = Field(default=32, gt=0, description="Scaling numerator (lora_alpha).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LANGUAGE_TARGETS),
        min_length=1,
        description="Projections of the language model to adapt (attention and MLP by default); "
        "the vision tower is never matched by these.",
    )
    train_vision_tower: bool = Field(
        default=False, description="Also adapt the SigLIP vision tower (multimodal bases)."
    )
    vision_target_modules: list[str] = Field(
        default_factory=lambda: list(VISION_TARGETS),
        description="Vision tower projections adapted when `train_vision_tower` is set.",
    )
    use_rslora: bool = Field(default=False, description="Rank-stabilized scaling alpha/sqrt(r).")
    use_dora: bool = Field(
        default=False,
        description="Weight-decomposed LoRA. vLLM cannot serve DoRA adapters, so it needs "
        "`output.register_adapter: false`.",
    )


class DataSection(Section):
    """The dataset, read and validated by `data/`."""

    train_file: Path = Field(
        description="Required. Training data. `method: supervised`: OpenAI chat JSONL, a Hugging "
        "Face dataset (directory, parquet or jsonl) or ShareGPT/LLaVA JSON. `method: dpo`: "
        "preference pairs, OpenAI preference JSONL or TRL conversational preference rows "
        "(prompt/chosen/rejected, optional images; JSONL, parquet or a saved dataset). "
        "`method: reinforcement`: prompts, OpenAI reinforcement JSONL (messages ending with a "
        "user turn, plus the item fields the grader reads)."
    )
    eval_file: Path | None = Field(
        default=None, description="Held-out data; None: split `eval_fraction` off the train file."
    )
    eval_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Share of the train file held out (by content hash) when there is no "
        "eval file; 0: no evaluation.",
    )
    format: (
        Literal[
            "openai",
            "hf",
            "sharegpt",
            "openai-preference",
            "trl-preference",
            "openai-reinforcement",
        ]
        | None
    ) = Field(
        default=None,
        description="Dataset format; None: detected. `openai`, `hf`, `sharegpt` for supervised "
        "runs; `openai-preference`, `trl-preference` for DPO; `openai-reinforcement` for "
        "reinforcement.",
    )
    max_length: int | None = Field(
        default=None,
        ge=16,
        description="Token limit per example (DPO: per prompt + reply, both replies; "
        "reinforcement: prompt + `reinforcement.max_completion_tokens`); None: the base's context.",
    )
    overlong: Literal["refuse", "drop"] = Field(
        default="refuse",
        description="Examples over `max_length` (DPO: pairs whose longer side is): `refuse` fails "
        "the run, `drop` leaves them out with a warning. Never truncated.",
    )
    max_images: int = Field(default=8, ge=0, description="Images per example at most.")
    max_image_bytes: int = Field(default=20_000_000, gt=0, description="Bytes per image at most.")
    max_image_pixels: int = Field(default=50_000_000, gt=0, description="Pixels per image at most.")


class TrainingSection(Section):
    """The optimisation (TRL `SFTConfig`; `DPOConfig` with `method: dpo`; `GRPOConfig` with
    `method: reinforcement`)."""

    max_steps: int | None = Field(
        default=None, ge=1, description="Optimizer steps; None: train for `epochs`."
    )
    epochs: float = Field(default=1.0, gt=0, description="Passes over the train set.")
    batch_size: int = Field(
        default=4,
        ge=1,
        description="Examples per device per micro-batch (reinforcement: prompts, each answered "
        "`reinforcement.generations` times).",
    )
    gradient_accumulation: int = Field(
        default=1, ge=1, description="Micro-batches per optimizer step."
    )
    lr: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="Share of the steps spent warming up."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    optimizer: str = Field(
        default="adamw_torch",
        description="A transformers optimizer name, e.g. `paged_adamw_8bit` for QLoRA on a GPU.",
    )
    seed: int = Field(default=42, description="Seed for initialisation and data order.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward: less memory, ~30% slower."
    )
    padding_free: bool = Field(
        default=True,
        description="Supervised runs on text-only bases: lay each batch's examples end to end in "
        "one row, with no padding (same loss, less compute). Multimodal and DPO batches are "
        "padded.",
    )
    group_by_length: bool = Field(
        default=False,
        description="Supervised runs: batch examples of similar token length together (less "
        "padding when lengths vary a lot). Changes the order of examples, and so the loss curve.",
    )
    save_steps: int = Field(default=50, ge=1, description="Checkpoint every N optimizer steps.")
    save_total_limit: int = Field(default=2, ge=1, description="Checkpoints kept on disk.")
    eval_steps: int | None = Field(
        default=None, ge=1, description="Eval loss every N steps; None: once, after training."
    )
    logging_steps: int = Field(default=1, ge=1, description="Log metrics every N steps.")
    early_stopping_patience: int | None = Field(
        default=None,
        ge=1,
        description="Stop once the eval loss has not improved for this many evaluations (one "
        "every `eval_steps`); the best checkpoint, not the last, is registered. Needs held-out "
        "data, `eval_steps`, and `save_steps` a multiple of it. None: train to the end.",
    )


class DpoSection(Section):
    """Direct preference optimisation (TRL `DPOConfig`), read with `method: dpo`. The reference
    model is the policy with its adapter switched off (the base), or the starting weights of
    `base.init_adapter`: never a second copy of the model."""

    beta: float = Field(
        default=0.1,
        gt=0,
        description="How far the policy may move from the reference (beta): higher stays closer. "
        "For `ipo` it is the regularization tau.",
    )
    loss_type: DpoLoss = Field(
        default="sigmoid",
        description="The preference loss (loss_type): `sigmoid` is DPO; also `hinge`, `ipo`, "
        "`exo_pair`, `nca_pair`, `robust`, `bco_pair`, `sppo_hard`, `aot`, `aot_unpaired`, "
        "`apo_zero`, `apo_down`, `discopop`, `sigmoid_norm`.",
    )
    rpo_alpha: float | None = Field(
        default=None,
        gt=0,
        description="RPO: add the negative log-likelihood of the chosen reply, with this weight, "
        "to the preference loss (TRL loss_type [loss_type, 'sft'], loss_weights [1, rpo_alpha]). "
        "None: the preference loss alone.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="Probability that a preference label is flipped (label_smoothing), for "
        "`robust` and `exo_pair` (which needs it above 0, e.g. 1e-3) and the `aot` losses.",
    )
    f_divergence_type: Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"] = (
        Field(
            default="reverse_kl",
            description="Divergence from the reference (f_divergence_type); `reverse_kl` is DPO's. "
            "Others only with the losses built on the reward difference (sigmoid, sigmoid_norm, "
            "hinge, ipo, exo_pair, robust, discopop).",
        )
    )
    f_alpha_divergence_coef: float = Field(
        default=0.5, description="Alpha of `alpha_divergence` (f_alpha_divergence_coef)."
    )
    ld_alpha: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="LD-DPO (ld_alpha): weight of the reply tokens past the shorter reply's "
        "length, against verbosity; None: no weighting.",
    )
    use_weighting: bool = Field(
        default=False,
        description="WPO weighting of pairs by the policy's probability of them (use_weighting).",
    )
    discopop_tau: float = Field(
        default=0.05, gt=0, description="Temperature of the `discopop` loss (discopop_tau)."
    )
    disable_dropout: bool = Field(
        default=True,
        description="Turn dropout off, LoRA dropout included, so that policy and reference "
        "see the same network (disable_dropout).",
    )

    @model_validator(mode="after")
    def _trl_combinations(self) -> DpoSection:
        if self.loss_type == "exo_pair" and self.label_smoothing == 0:
            _field_error(
                ("label_smoothing",), "the exo_pair loss needs it above 0 (the EXO paper: 1e-3)"
            )
        if self.f_divergence_type != "reverse_kl" and self.loss_type not in F_DIVERGENCE_LOSSES:
            _field_error(
                ("f_divergence_type",),
                f"{self.f_divergence_type!r} does not apply to the {self.loss_type} loss: only "
                f"to {', '.join(F_DIVERGENCE_LOSSES)}",
            )
        if self.use_weighting and self.loss_type in ("aot", "aot_unpaired"):
            _field_error(("use_weighting",), f"TRL has no WPO weighting for {self.loss_type}")
        return self

    def loss_types(self) -> tuple[list[str], list[float]]:
        """TRL's `loss_type` and `loss_weights`."""
        if self.rpo_alpha is None:
            return [self.loss_type], [1.0]
        return [self.loss_type, "sft"], [1.0, self.rpo_alpha]


class ReinforcementSection(Section):
    """Reinforcement fine-tuning against a grader (TRL `GRPOConfig`), read with `method:
    reinforcement`: each prompt is answered `generations` times by the policy, the grader
    scores every answer, and the policy moves towards the answers that beat their group's mean.
    The KL reference is the policy with its adapter switched off: never a second model copy."""

    grader: dict[str, Any] | None = Field(
        default=None,
        description="Required. The reward: a grader in OpenAI's format (string_check, "
        "text_similarity, python, score_model, label_model, multi), reading `{{sample."
        "output_text}}` and the prompt's item fields (`{{item.answer}}`).",
    )
    generations: int = Field(
        default=4,
        ge=2,
        description="Answers sampled per prompt (num_generations): the group whose mean each "
        "reward is compared with.",
    )
    max_completion_tokens: int = Field(
        default=64, ge=1, description="Tokens per sampled answer at most (max_completion_length)."
    )
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling.")
    top_k: int | None = Field(default=None, ge=1, description="Top-k sampling; None: off.")
    beta: float = Field(
        default=0.0,
        ge=0,
        description="KL weight towards the reference (the base: the adapter switched off); 0: no "
        "KL term and no reference pass (TRL's default).",
    )
    loss_type: GrpoLoss = Field(
        default="dapo",
        description="How token losses are aggregated (loss_type): `dapo` (TRL's default), "
        "`grpo`, `dr_grpo`, `bnpo`, `cispo`, `sapo`.",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group",
        description="Advantages divided by the reward's std within the group, the batch, or not "
        "at all (Dr. GRPO).",
    )
    epsilon: float = Field(default=0.2, gt=0, description="The policy ratio's clipping range.")
    mask_truncated_completions: bool = Field(
        default=False,
        description="Leave answers cut at `max_completion_tokens` out of the loss.",
    )
    eval_generations: int = Field(
        default=1,
        ge=1,
        description="Answers sampled per held-out prompt when the reward is evaluated every "
        "`training.eval_steps` (the jobs API's eval_samples).",
    )
    eval_prompts: int = Field(
        default=32,
        ge=0,
        description="Held-out prompts the base and the adapter answer greedily after training, "
        "graded by `grader` (scores `reward` and `base_reward`); 0: skip.",
    )
    judge: Endpoint | None = Field(
        default=None,
        description="Where a score_model or label_model grader's judge model answers (an "
        "OpenAI-compatible /v1 URL, e.g. gemlora's gateway); required for those graders.",
    )
    generation: Literal["transformers", "vllm-colocate"] = Field(
        default="transformers",
        description="How the answers are sampled: `transformers` generate with the adapter on "
        "(CPU or GPU), or `vllm-colocate` (GPU only): a vLLM engine inside the training "
        "process, the LoRA merged into its weights after every step (TRL's colocate mode); "
        "needs base.quantization none.",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="`vllm-colocate`: the share of the GPU's memory the colocated engine takes.",
    )

    @field_validator("grader")
    @classmethod
    def _valid_grader(cls, grader: dict[str, Any] | None) -> dict[str, Any] | None:
        from gemlora.evals import validate_grader

        if grader is not None:
            validate_grader(grader)
        return grader

    @model_validator(mode="after")
    def _judge_for_model_graders(self) -> ReinforcementSection:
        if self.grader is not None and self.judge is None and uses_a_judge(self.grader):
            _field_error(
                ("judge",),
                "the grader asks a judge model (score_model or label_model): set the endpoint "
                "that serves it, e.g. {url: http://127.0.0.1:8000/v1}",
            )
        return self


def uses_a_judge(grader: dict[str, Any]) -> bool:
    from gemlora.evals import LabelModelGrader, ScoreModelGrader, validate_grader, walk

    judged = (ScoreModelGrader, LabelModelGrader)
    return any(isinstance(node, judged) for _, node in walk(validate_grader(grader)))


class EvalSection(Section):
    """The generation eval after training: base and adapter answer held-out prompts (a DPO
    pair's prompt, its chosen reply the reference)."""

    generation_examples: int = Field(
        default=16,
        ge=0,
        description="Held-out examples to generate for (greedy), scored by exact and contains "
        "match against the reference answer; 0: skip.",
    )
    max_new_tokens: int = Field(default=64, ge=1, description="Tokens generated per answer.")
    margin_pairs: int = Field(
        default=64,
        ge=0,
        description="DPO runs: held-out pairs whose log-probability margin (chosen minus "
        "rejected reply, summed over its tokens) is measured with the base and with the "
        "adapter; 0: skip.",
    )
    graders: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Graders in OpenAI's format (gemlora.evals) for `promote_if.gate`: the "
        "new version and the alias's holder (or the base) answer the held-out prompts on the "
        "verifying engine, and each answer is graded.",
    )
    gate_items: int | None = Field(
        default=None, ge=2, description="Held-out examples the gate's eval uses; None: all."
    )

    @field_validator("graders")
    @classmethod
    def _valid_graders(cls, graders: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from gemlora.evals import validate_graders

        validate_graders(graders)
        return graders


class EvalGate(Section):
    """Promote only what is better with confidence: on `grader`, the new version's paired
    bootstrap interval against the alias's holder (or the base) lies above `margin`, and no
    other grader's mean falls by more than `tolerance`."""

    grader: str = Field(description="Required. The deciding grader's name (in eval.graders).")
    margin: float = Field(default=0.0, ge=0, description="The interval's lower bound must pass it.")
    tolerance: float = Field(
        default=0.05, ge=0, description="How far another grader's mean may fall."
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="The interval's level.")
    samples: int = Field(default=2000, ge=100, description="Bootstrap resamples.")


class PromoteIf(Section):
    """Move an alias to the new version when it beats the current holder: on an eval score
    (`metric`), or through the eval gate (`gate`: graders, paired, with confidence)."""

    metric: Literal[
        "exact",
        "contains",
        "base_exact",
        "base_contains",
        "eval_loss",
        "eval_rewards_accuracy",
        "eval_rewards_margin",
        "logp_margin",
        "reward",
        "base_reward",
    ] = Field(
        default="contains",
        description="An eval score: the adapter's `exact` or `contains` match rate, the base's "
        "(`base_exact`, `base_contains`), or `eval_loss` (with higher_is_better false). DPO "
        "runs also have `eval_rewards_accuracy` (share of held-out pairs whose chosen reply "
        "gets the higher reward), `eval_rewards_margin` (mean chosen minus rejected reward) and "
        "`logp_margin` (the adapter's mean log-probability margin of the chosen reply). "
        "Reinforcement runs have `reward` (the adapter's mean reward on held-out prompts, "
        "greedy) and `base_reward`.",
    )
    to: str = Field(default="champion", description="The alias to move.")
    higher_is_better: bool = Field(default=True, description="False for losses.")
    gate: EvalGate | None = Field(
        default=None,
        description="Decide by the eval gate instead of `metric` (needs eval.graders and "
        "output.verify.engine_url).",
    )
    verification: PromotionRule = Field(
        default="passed",
        description="What the version's verification (`output.verify`) must be: `passed` (the "
        "engine check passed; unverified versions and checks that broke stay unpromoted), "
        "`not_failed` (opt-in where no engine runs: passed, or never verified because no engine "
        "was reachable; a failure or an error still blocks), or `ignore`.",
    )

    @field_validator("to")
    @classmethod
    def _valid_alias(cls, alias: str) -> str:
        return validate_alias(alias)


class VerifySection(Section):
    """Verify the registered version on a running engine (`gemlora adapters verify`)."""

    engine_url: str | None = Field(
        default="http://127.0.0.1:8100",
        description="An engine serving this base's family (the jobs API sets its own); the "
        "check runs when it answers, else the version stays unverified. None: never verify.",
    )
    engine_base: str | None = Field(
        default=None,
        description="The base that engine serves (catalogue name); None: the name it lists "
        "in /v1/models.",
    )
    dtype: str = Field(
        default="auto", description="The engine's `engine.dtype` (PEFT computes in it too)."
    )
    tokens: int = Field(default=16, ge=1, le=256, description="Greedy tokens per prompt.")
    tolerance: float = Field(
        default=DEFAULT_TOLERANCE,
        gt=0,
        description="Largest log-probability gap (nats) between engine and PEFT that passes, "
        "at any position of any prompt.",
    )
    checkpoints: bool = Field(
        default=True,
        description="Also verify the versions registered for checkpoints "
        "(`register_checkpoints`), after the final one.",
    )
    image_prompts: int = Field(
        default=2,
        ge=0,
        description="Held-out images from the eval data used on a multimodal base (built-in "
        "ones when it has none).",
    )

    @field_validator("engine_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"engine_url must be an http(s) URL, got {url!r}")
        return url.rstrip("/") if url else url


class OutputSection(Section):
    """Where the run is tracked and how the adapter is registered."""

    name: str = Field(description="Required. The registered adapter (MLflow registered model).")
    alias: str | None = Field(
        default="candidate", description="Alias pointed at the new version; None: no alias."
    )
    register_adapter: bool = Field(
        default=True, description="Register the adapter in the MLflow registry after training."
    )
    promote_if: PromoteIf | None = Field(
        default=None, description="e.g. `{metric: contains, to: champion}`; None: never promote."
    )
    register_checkpoints: bool = Field(
        default=False,
        description="Register every checkpoint as a version too (tagged with its step, no "
        "alias), callable as NAME/VERSION while the run trains. The jobs API always does.",
    )
    verify: VerifySection = Field(
        default_factory=VerifySection,
        description="Verify each registered version on a running engine (greedy tokens and "
        "log-probs of PEFT vs the engine, images included on a multimodal base).",
    )
    register_retry_s: float = Field(
        default=600,
        ge=0,
        description="How long a trained run keeps retrying its registration while MLflow is "
        "unreachable (the adapter stays in the run directory either way).",
    )
    experiment: str = Field(default="gemlora-training", description="MLflow experiment.")
    run_name: str | None = Field(default=None, description="MLflow run name; None: generated.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow run tags.")
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow server URL or database URI; None: $MLFLOW_TRACKING_URI, else the "
        "local server `gemlora ui` starts (http://127.0.0.1:5000).",
    )
    dir: Path | None = Field(
        default=None,
        description="The run directory (checkpoints, progress.jsonl, adapter); None: "
        "$GEMLORA_HOME/runs/<name>/<timestamp>.",
    )
    system_metrics_interval_s: float = Field(
        default=10, gt=0, description="Seconds between MLflow system-metric samples."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return validate_name(name)

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, alias: str | None) -> str | None:
        return alias if alias is None else validate_alias(alias)

    @field_validator("tracking_uri")
    @classmethod
    def _server_or_database(cls, uri: str | None) -> str | None:
        from gemlora.adapters import RegistryConfig

        if uri is not None:
            try:
                RegistryConfig(tracking_uri=uri)
            except ValidationError as error:
                raise ValueError(error.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return uri

    def resolved_tracking_uri(self) -> str:
        from gemlora.adapters.registry import DEFAULT_TRACKING_URI

        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


DPO_METRICS = ("eval_rewards_accuracy", "eval_rewards_margin", "logp_margin")
REINFORCEMENT_METRICS = ("reward", "base_reward")


class TrainConfig(Section):
    """One fine-tune: `gemlora train CONFIG.yaml`."""

    method: Method = Field(
        default="supervised",
        description="`supervised`: fine-tune on chat examples (TRL SFTTrainer). `dpo`: direct "
        "preference optimisation on preference pairs (TRL DPOTrainer, the `dpo` section). "
        "`reinforcement`: GRPO against a grader on prompts (TRL GRPOTrainer, the "
        "`reinforcement` section).",
    )
    base: BaseSection = Field(default_factory=BaseSection, description="The base model.")
    lora: LoraSection = Field(default_factory=LoraSection, description="The adapter.")
    data: DataSection = Field(description="Required. The dataset.")
    training: TrainingSection = Field(
        default_factory=TrainingSection, description="The optimisation."
    )
    dpo: DpoSection = Field(
        default_factory=DpoSection, description="The preference loss, with `method: dpo`."
    )
    reinforcement: ReinforcementSection = Field(
        default_factory=ReinforcementSection,
        description="The grader and sampling, with `method: reinforcement`.",
    )
    eval: EvalSection = Field(default_factory=EvalSection, description="The generation eval.")
    output: OutputSection = Field(description="Required. Tracking and registration.")

    @model_validator(mode="after")
    def _method_settings(self) -> TrainConfig:
        """Settings of another method are refused rather than ignored."""
        kind, formats = METHOD_DATA[self.method]
        if self.data.format is not None and self.data.format not in formats:
            _field_error(
                ("data", "format"),
                f"method {self.method!r} trains on {kind} data: use one of "
                f"{', '.join(formats)}, or set `method` to match the data",
            )
        if self.method != "dpo" and self.dpo != DpoSection():
            _field_error(("dpo",), f"read only with `method: dpo`; this run is {self.method}")
        if self.method != "reinforcement" and self.reinforcement != ReinforcementSection():
            _field_error(
                ("reinforcement",),
                f"read only with `method: reinforcement`; this run is {self.method}",
            )
        if self.method != "supervised" and self.training.group_by_length:
            _field_error(("training", "group_by_length"), "supervised runs only")
        rule = self.output.promote_if
        for metrics, method in ((DPO_METRICS, "dpo"), (REINFORCEMENT_METRICS, "reinforcement")):
            if rule is not None and rule.metric in metrics and self.method != method:
                _field_error(
                    ("output", "promote_if", "metric"),
                    f"{rule.metric!r} is measured by {method} runs only (method: {method})",
                )
        return self

    @model_validator(mode="after")
    def _reinforcement_has_a_grader(self) -> TrainConfig:
        """The grader is the reward; with no `eval.graders` it is also what the gate grades."""
        if self.method != "reinforcement":
            return self
        grader = self.reinforcement.grader
        if grader is None:
            _field_error(
                ("reinforcement", "grader"),
                "required with method: reinforcement: the grader whose score is the reward",
            )
        if not self.eval.graders:
            self.eval.graders = [grader]
        if self.reinforcement.generation == "vllm-colocate" and self.base.quantization != "none":
            _field_error(
                ("reinforcement", "generation"),
                "vllm-colocate loads the base in vLLM and merges the LoRA into its weights: "
                "it needs base.quantization none (a bf16 base), not "
                f"{self.base.quantization!r}",
            )
        return self

    @model_validator(mode="after")
    def _early_stopping_evaluates(self) -> TrainConfig:
        training = self.training
        if training.early_stopping_patience is None:
            return self
        if training.eval_steps is None:
            _field_error(
                ("training", "eval_steps"),
                "set it: early_stopping_patience counts evaluations made every eval_steps",
            )
        if training.save_steps % training.eval_steps:
            _field_error(
                ("training", "save_steps"),
                f"must be a multiple of eval_steps ({training.eval_steps}) with "
                "early_stopping_patience, so that the best evaluated step has a checkpoint",
            )
        if self.data.eval_file is None and self.data.eval_fraction == 0:
            _field_error(
                ("training", "early_stopping_patience"),
                "needs held-out data: set data.eval_file or data.eval_fraction",
            )
        return self

    @model_validator(mode="after")
    def _gate_can_run(self) -> TrainConfig:
        """The eval gate needs its graders, an engine to answer on, and held-out prompts."""
        rule = self.output.promote_if
        if rule is None or rule.gate is None:
            return self
        names = [grader["name"] for grader in self.eval.graders]
        if rule.gate.grader not in names:
            _field_error(
                ("output", "promote_if", "gate", "grader"),
                f"{rule.gate.grader!r} is not one of eval.graders {names}",
            )
        if self.output.verify.engine_url is None:
            _field_error(
                ("output", "verify", "engine_url"),
                "the eval gate runs on the verifying engine: set it",
            )
        if self.data.eval_file is None and self.data.eval_fraction == 0:
            _field_error(
                ("output", "promote_if", "gate"),
                "needs held-out data: set data.eval_file or data.eval_fraction",
            )
        if self.method == "dpo":
            _field_error(
                ("output", "promote_if", "gate"), "supervised and reinforcement runs only, for now"
            )
        return self

    @model_validator(mode="after")
    def _dora_is_not_servable(self) -> TrainConfig:
        if self.lora.use_dora and self.output.register_adapter:
            raise ValueError(
                "lora.use_dora: vLLM cannot serve DoRA adapters, so the registry refuses them; "
                "set output.register_adapter to false to train one anyway"
            )
        return self

    def flat(self) -> dict[str, str]:
        """Every field as `section.field` -> text, for MLflow params."""
        return _flatten(self.model_dump(mode="json"))


# --- loading ----------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config, apply `--set` overrides, validate. Raises `ConfigError` naming every
    bad field."""
    path = Path(path)
    document = read_yaml_mapping(path, "sections (base:, data:, ...)")
    _resolve_paths(document, path.resolve().parent)
    for override in overrides:
        apply_override(document, override, str(path))
    _resolve_paths(document, Path.cwd())
    return parse_config(document, str(path))


def parse_config(document: dict[str, Any], source: str = "config") -> TrainConfig:
    return validate(TrainConfig, document, source)


_PATH_FIELDS = (("data", "train_file"), ("data", "eval_file"), ("output", "dir"))


def _resolve_paths(document: dict[str, Any], relative_to: Path) -> None:
    """Make relative paths absolute (each is resolved once: absolute paths stay as they are)."""
    for section, field in _PATH_FIELDS:
        node = document.get(section)
        if isinstance(node, dict) and isinstance(node.get(field), str):
            node[field] = os.path.normpath(relative_to / Path(node[field]).expanduser())
    # `base.init_adapter` is a registry reference unless a directory by that name exists there.
    base = document.get("base")
    if isinstance(base, dict) and isinstance(base.get("init_adapter"), str):
        directory = relative_to / Path(base["init_adapter"]).expanduser()
        if directory.is_dir():
            base["init_adapter"] = os.path.normpath(directory)


def _field_error(loc: tuple[str, ...], message: str):
    """Fail validation at `loc` (a path below the model being validated), so that the error
    names the field (`data.format: ...`) even when a whole-model rule found it."""
    error = PydanticCustomError("config", "{message}", {"message": message})
    raise ValidationError.from_exception_data(
        "config", [InitErrorDetails(type=error, loc=loc, input=None)]
    )


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in document.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
