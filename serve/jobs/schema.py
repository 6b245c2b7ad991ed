"""POST /v1/fine_tuning/jobs: the request, and the training config it becomes (validated in the
gateway's process: `gemlora.train.config` loads no torch).

The OpenAI fields map onto a gemlora training config (`gemlora.train.TrainConfig`, the same one
`gemlora train` reads from configs/train/*.yaml):

    model                             base.model (a catalogue base of the served family), or
                                      an adapter (NAME, NAME@ALIAS, NAME/VERSION): its base,
                                      and base.init_adapter = that version (train further)
    training_file / validation_file   data.train_file / data.eval_file (the stored files)
    method.type                       method: supervised (the default), dpo or
                                      reinforcement; the hyperparameters below may also
                                      come in method.supervised / method.dpo /
                                      method.reinforcement, as the SDK sends them
    method.dpo.hyperparameters.beta   dpo.beta
    method.reinforcement.grader       reinforcement.grader (validated as graders.validate)
    method.reinforcement.hyperparameters
        compute_multiplier            reinforcement.generations = round(4 x multiplier), >= 2
        eval_interval                 training.eval_steps
        eval_samples                  reinforcement.eval_generations
        reasoning_effort              refused: Gemma 3 has no reasoning effort
    hyperparameters.n_epochs          training.epochs
    hyperparameters.batch_size        training.batch_size
    hyperparameters.learning_rate_multiplier
                                      training.lr = multiplier x gemlora.training.lr (2e-4)
    seed                              training.seed
    suffix                            the adapter's registry name: SUFFIX-<job> (else
                                      ft-BASE-<job>), which is `fine_tuned_model`

and the extra field `gemlora` holds any other section of that config, e.g.
`{"lora": {"r": 16, "alpha": 32}, "training": {"max_steps": 30}, "eval": {...}}`. The fields
the job itself sets (base.model, data.train_file, data.eval_file, output.name, output.dir,
output.tracking_uri, output.register_adapter, output.register_checkpoints, and output.verify's
engine_url, engine_base and dtype: the gateway's engine verifies each job's version) cannot be
set there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gemlora.adapters.refs import NAME_PATTERN
from gemlora.train.config import ConfigError, TrainConfig, parse_config, uses_a_judge

Auto = Literal["auto"]

# Fields of the training config that the job owns, by section.
JOB_FIELDS = {
    "base": ("model",),
    "data": ("train_file", "eval_file"),
    "output": ("name", "dir", "tracking_uri", "register_adapter", "register_checkpoints"),
}


def _invalid(message: str) -> PydanticCustomError:
    """A validation error whose message is shown as it is (no "Value error, " prefix)."""
    return PydanticCustomError("value_error", message)


def _above_zero(value: float | str) -> float | str:
    if value != "auto" and value <= 0:
        raise _invalid("must be above 0 (or 'auto')")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Hyperparameters(_Strict):
    """OpenAI's supervised hyperparameters; `auto` keeps gemlora's default."""

    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"

    @field_validator("n_epochs", "batch_size", "learning_rate_multiplier")
    @classmethod
    def _positive(cls, value: float | str) -> float | str:
        return _above_zero(value)


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters: the supervised ones and `beta`."""

    beta: float | Auto = "auto"

    @field_validator("beta")
    @classmethod
    def _positive_beta(cls, value: float | str) -> float | str:
        return _above_zero(value)


class ReinforcementHyperparameters(Hyperparameters):
    """OpenAI's reinforcement hyperparameters; `reasoning_effort` is refused by name."""

    compute_multiplier: float | Auto = "auto"
    eval_interval: int | Auto = "auto"
    eval_samples: int | Auto = "auto"
    reasoning_effort: str | None = None

    @field_validator("compute_multiplier", "eval_interval", "eval_samples")
    @classmethod
    def _positive_setting(cls, value: float | str) -> float | str:
        return _above_zero(value)

    @field_validator("reasoning_effort")
    @classmethod
    def _no_reasoning_effort(cls, value: str | None) -> str | None:
        if value is not None:
            raise _invalid("not supported: Gemma 3 has no reasoning effort to set; leave it out")
        return value


class SupervisedMethod(_Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class DpoMethod(_Strict):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class ReinforcementMethod(_Strict):
    grader: dict[str, Any] = Field(description="The reward: a grader in OpenAI's format.")
    hyperparameters: ReinforcementHyperparameters = Field(
        default_factory=ReinforcementHyperparameters
    )

    @field_validator("grader")
    @classmethod
    def _valid_grader(cls, grader: dict[str, Any]) -> dict[str, Any]:
        from gemlora.evals import GraderError, validate_grader

        try:
            validate_grader(grader)
        except GraderError as error:
            raise _invalid(str(error)) from None
        return grader


MethodType = Literal["supervised", "dpo", "reinforcement"]
DEFAULT_GENERATIONS = 4  # reinforcement.generations at compute_multiplier 1


class Method(_Strict):
    type: MethodType = Field(
        description="Supervised fine-tuning (SFT), preference tuning (DPO) or reinforcement "
        "fine-tuning against a grader (GRPO)."
    )
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = Field(default=None, validate_default=True)

    @field_validator("reinforcement")
    @classmethod
    def _grader_for_reinforcement(
        cls, settings: ReinforcementMethod | None, info: ValidationInfo
    ) -> ReinforcementMethod | None:
        if settings is None and info.data.get("type") == "reinforcement":
            raise _invalid("required with method.type 'reinforcement': its grader is the reward")
        return settings

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> Method:
        for other in ("supervised", "dpo", "reinforcement"):
            if other != self.type and getattr(self, other) is not None:
                raise _invalid(f"method.{other}: given, but method.type is {self.type!r}")
        return self

    def hyperparameters(self) -> Hyperparameters | None:
        settings = getattr(self, self.type)
        return None if settings is None else settings.hyperparameters


class CreateJobRequest(_Strict):
    model: str = Field(
        min_length=1, description="The base (a catalogue name) or an adapter to train further."
    )
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    integrations: list[dict[str, Any]] | None = None
    gemlora: dict[str, dict[str, Any]] | None = Field(
        default=None, description="Other sections of the training config (lora, training, ...)."
    )

    @field_validator("suffix")
    @classmethod
    def _name_safe(cls, suffix: str | None) -> str | None:
        if suffix is not None and not NAME_PATTERN.fullmatch(suffix):
            raise _invalid(
                "use letters, digits, '.', '_' and '-', starting with a letter or digit "
                "(it becomes part of the adapter's registry name)"
            )
        return suffix

    @field_validator("integrations")
    @classmethod
    def _no_integrations(cls, integrations: list | None) -> list | None:
        if integrations:
            raise _invalid(
                "not supported: every job is tracked in MLflow (its run is in the job's "
                "`integrations`)"
            )
        return integrations

    @model_validator(mode="after")
    def _hyperparameters_once(self) -> CreateJobRequest:
        if self.hyperparameters is not None and self.method and self.method.hyperparameters():
            raise _invalid(
                "hyperparameters: give them either at the top level or in "
                f"method.{self.method.type}.hyperparameters, not both"
            )
        return self

    @property
    def method_type(self) -> MethodType:
        return self.method.type if self.method is not None else "supervised"

    def resolved_hyperparameters(self) -> Hyperparameters:
        if self.method is not None and (chosen := self.method.hyperparameters()) is not None:
            return chosen
        if self.method_type == "dpo":
            return DpoHyperparameters(**dict(self.hyperparameters or {}))
        if self.method_type == "reinforcement":
            return ReinforcementHyperparameters(**dict(self.hyperparameters or {}))
        return self.hyperparameters or Hyperparameters()


def fine_tuned_model_name(request: CreateJobRequest, job_id: str) -> str:
    """The registry name of the job's adapter, unique per job."""
    short = job_id.rsplit("-", 1)[-1][:8]
    return f"{request.suffix}-{short}" if request.suffix else f"ft-{request.model}-{short}"


class TrainSettingsError(ValueError):
    """The request cannot become a valid training config: `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


def job_training_config(
    request: CreateJobRequest,
    *,
    base_model: str,
    init_adapter: str | None,
    quantized_base: bool,
    name: str,
    train_file: Path,
    eval_file: Path | None,
    run_dir: Path,
    tracking_uri: str,
    job_id: str,
    verify_on: JobVerification,
) -> TrainConfig:
    """The job's training config, validated here, in the gateway's process (training itself runs
    in a worker). Raises `TrainSettingsError` naming the request field that makes it invalid."""
    sections = {key: dict(value) for key, value in (request.gemlora or {}).items()}
    for section, fields in JOB_FIELDS.items():
        for field in fields:
            if field in sections.get(section, {}):
                raise TrainSettingsError(
                    f"gemlora.{section}.{field}", "set by the job from the request; leave it out"
                )
    base = sections.setdefault("base", {})
    base["model"] = base_model
    if init_adapter is not None:
        base["init_adapter"] = init_adapter
    if quantized_base:
        # A compressed-tensors base trains unpacked: the adapter fits the weights served.
        base.setdefault("quantization", "dequantized")
    _apply_hyperparameters(request, sections.setdefault("training", {}))
    if request.method_type == "dpo":
        sections["method"] = "dpo"  # a top-level field of the training config
        _apply_dpo_hyperparameters(request, sections.setdefault("dpo", {}))
    if request.method_type == "reinforcement":
        sections["method"] = "reinforcement"
        _apply_reinforcement(request, sections, verify_on)
    sections.setdefault("data", {}).update(
        train_file=str(train_file), eval_file=str(eval_file) if eval_file else None
    )
    output = sections.setdefault("output", {})
    # Every checkpoint is registered, so that each one the job lists can be called.
    output.update(name=name, dir=str(run_dir), tracking_uri=tracking_uri, register_checkpoints=True)
    output.setdefault("run_name", job_id)
    output["tags"] = {**output.get("tags", {}), "gemlora.job_id": job_id}
    output["verify"] = _verify_settings(output.get("verify"), verify_on)
    try:
        config = parse_config(sections, source="job")
    except ConfigError as error:
        raise _settings_error(error.problems) from None
    multiplier = request.resolved_hyperparameters().learning_rate_multiplier
    if multiplier != "auto":
        # OpenAI's multiplier scales the rate training would use (the default or gemlora's).
        config.training.lr *= multiplier
    return config


class JobVerification(BaseModel):
    """`output.verify` fields the gateway sets: its own engine checks each job's version."""

    engine_url: str | None
    engine_base: str
    dtype: str


def _verify_settings(given: dict[str, Any] | None, verify_on: JobVerification) -> dict[str, Any]:
    verify = dict(given or {})
    for field in JobVerification.model_fields:
        if field in verify:
            raise TrainSettingsError(
                f"gemlora.output.verify.{field}",
                "set by the gateway, whose engine verifies the job's adapter; leave it out",
            )
    return verify | verify_on.model_dump()


def _apply_hyperparameters(request: CreateJobRequest, training: dict[str, Any]) -> None:
    chosen = request.resolved_hyperparameters()
    for ours, theirs in (("epochs", "n_epochs"), ("batch_size", "batch_size")):
        value = getattr(chosen, theirs)
        if value == "auto":
            continue
        if ours in training:
            raise TrainSettingsError(
                f"hyperparameters.{theirs}",
                f"also set as gemlora.training.{ours}; set it in one place",
            )
        training[ours] = value
    if request.seed is not None:
        training["seed"] = request.seed


def _apply_dpo_hyperparameters(request: CreateJobRequest, dpo: dict[str, Any]) -> None:
    beta = request.resolved_hyperparameters().beta
    if beta == "auto":
        return
    if "beta" in dpo:
        raise TrainSettingsError(
            "method.dpo.hyperparameters.beta", "also set as gemlora.dpo.beta; set it in one place"
        )
    dpo["beta"] = beta


def _apply_reinforcement(
    request: CreateJobRequest, sections: dict[str, Any], verify_on: JobVerification
) -> None:
    """The grader, and OpenAI's reinforcement hyperparameters in gemlora's terms."""
    rl = sections.setdefault("reinforcement", {})
    if "grader" in rl:
        raise TrainSettingsError(
            "gemlora.reinforcement.grader", "set by method.reinforcement.grader; leave it out"
        )
    rl["grader"] = request.method.reinforcement.grader
    if uses_a_judge(rl["grader"]) and "judge" not in rl and verify_on.engine_url:
        # The judge answers on the gateway's engine (with its internal token, from the worker).
        rl["judge"] = {"url": f"{verify_on.engine_url}/v1", "api_key_env": None}
    chosen = request.resolved_hyperparameters()
    mapped = (
        ("compute_multiplier", rl, "generations",
         lambda m: max(2, round(DEFAULT_GENERATIONS * m))),
        ("eval_interval", sections.setdefault("training", {}), "eval_steps", int),
        ("eval_samples", rl, "eval_generations", int),
    )  # fmt: skip
    for theirs, section, ours, convert in mapped:
        value = getattr(chosen, theirs)
        if value == "auto":
            continue
        if ours in section:
            raise TrainSettingsError(
                f"method.reinforcement.hyperparameters.{theirs}",
                f"also set in gemlora ({ours}); set it in one place",
            )
        section[ours] = convert(value)


def _settings_error(problems: list[str]) -> TrainSettingsError:
    """The first problem validation found, named as the request's `gemlora.<path>`."""
    path, _, message = problems[0].partition(": ")
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return TrainSettingsError(f"gemlora.{path}", message + more)


def effective_hyperparameters(config: TrainConfig, request: CreateJobRequest) -> dict[str, Any]:
    """What the job object reports: the values training uses."""
    epochs = config.training.epochs
    multiplier = request.resolved_hyperparameters().learning_rate_multiplier
    effective = {
        "n_epochs": int(epochs) if float(epochs).is_integer() else epochs,
        "batch_size": config.training.batch_size,
        "learning_rate_multiplier": 1.0 if multiplier == "auto" else multiplier,
    }
    if request.method_type == "dpo":
        effective["beta"] = config.dpo.beta
    if request.method_type == "reinforcement":
        rl = config.reinforcement
        effective |= {
            "compute_multiplier": rl.generations / DEFAULT_GENERATIONS,
            "eval_interval": config.training.eval_steps or "auto",
            "eval_samples": rl.eval_generations,
        }
    return effective
