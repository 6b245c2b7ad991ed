"""OpenAI's fine-tuning graders as pydantic models: the same JSON a user sends to OpenAI's
`/fine_tuning/alpha/graders/validate` is read here, field for field (openai.types.graders).

    grader = validate_grader({"type": "string_check", "name": "exact", "operation": "eq",
                              "input": "{{sample.output_text}}", "reference": "{{item.answer}}"})

Templates and formulas are checked when a grader is validated, so a bad grader is refused
before the first sample rather than on it. One difference from the SDK's types: a multi
grader's `graders` is a map of name to grader (as OpenAI's API reference has it, and as its
formula needs), where the generated SDK type reads a single grader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from gemlora.evals.errors import GraderError
from gemlora.evals.formula import check_formula
from gemlora.evals.templates import check_template

SimilarityMetric = Literal[
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StringCheckGrader(_Strict):
    """1.0 when the check holds, else 0.0. `like` is contains (case-sensitive), `ilike` the
    same ignoring case, as in OpenAI's graders guide."""

    type: Literal["string_check"]
    name: str
    input: str = Field(description="The text being checked; may hold templates.")
    reference: str = Field(description="The text checked against; may hold templates.")
    operation: Literal["eq", "ne", "like", "ilike"]

    @field_validator("input", "reference")
    @classmethod
    def _template(cls, template: str) -> str:
        check_template(template)
        return template


class TextSimilarityGrader(_Strict):
    """A similarity in [0, 1] between input and reference (see gemlora.evals.similarity)."""

    type: Literal["text_similarity"]
    name: str
    input: str = Field(description="The text being graded; may hold templates.")
    reference: str = Field(description="The text graded against; may hold templates.")
    evaluation_metric: SimilarityMetric

    @field_validator("input", "reference")
    @classmethod
    def _template(cls, template: str) -> str:
        check_template(template)
        return template


class PythonGrader(_Strict):
    """`source` defines `grade(sample, item) -> float`, run in a child interpreter (see
    gemlora.evals.python_grader). `image_tag` names an OpenAI sandbox image: it is accepted so
    that OpenAI's JSON reads unchanged, and otherwise unused: graders run on this interpreter."""

    type: Literal["python"]
    name: str
    source: str
    image_tag: str | None = None

    @field_validator("source")
    @classmethod
    def _compiles(cls, source: str) -> str:
        try:
            compile(source, "<grader>", "exec")
        except SyntaxError as error:
            raise GraderError(f"line {error.lineno}: {error.msg}") from None
        return source


# --- model graders: a judge model reads templated messages -------------------------------------


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class OutputText(_Strict):
    type: Literal["output_text"]
    text: str


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str
    detail: str | None = None


class InputAudio(_Strict):
    """Accepted so that OpenAI's JSON reads; refused when graded (Gemma 3 judges hear nothing)."""

    type: Literal["input_audio"]
    input_audio: dict[str, Any]


ContentPart = Annotated[
    InputText | OutputText | InputImage | InputAudio, Field(discriminator="type")
]


class JudgeMessage(_Strict):
    """One message to the judge; its text may hold templates."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | ContentPart | list[str | ContentPart]
    type: Literal["message"] | None = None

    @field_validator("content")
    @classmethod
    def _templates(cls, content: Any) -> Any:
        for part in content if isinstance(content, list) else [content]:
            text = part if isinstance(part, str) else getattr(part, "text", None)
            if text is not None:
                check_template(text)
        return content


class SamplingParams(_Strict):
    """The judge's sampling; `max_completions_tokens` is OpenAI's spelling in graders."""

    max_completions_tokens: int | None = None
    reasoning_effort: str | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None


class ScoreModelGrader(_Strict):
    """The judge's reply read as a number within `range` (default [0, 1]); that is the score."""

    type: Literal["score_model"]
    name: str
    model: str
    input: list[JudgeMessage]
    range: list[float] | None = None
    sampling_params: SamplingParams | None = None

    @field_validator("range")
    @classmethod
    def _two_bounds(cls, bounds: list[float] | None) -> list[float] | None:
        if bounds is not None and (len(bounds) != 2 or not bounds[0] < bounds[1]):
            raise GraderError(f"{bounds}: needs two numbers, low < high")
        return bounds

    @property
    def bounds(self) -> tuple[float, float]:
        low, high = self.range or (0.0, 1.0)
        return low, high


class LabelModelGrader(_Strict):
    """The judge's reply must be one of `labels`: 1.0 if it is a passing label, else 0.0."""

    type: Literal["label_model"]
    name: str
    model: str
    input: list[JudgeMessage]
    labels: list[str] = Field(min_length=1)
    passing_labels: list[str] = Field(min_length=1)

    @field_validator("passing_labels")
    @classmethod
    def _among_labels(cls, passing: list[str], info: ValidationInfo) -> list[str]:
        labels = info.data.get("labels", [])
        unknown = sorted(set(passing) - set(labels))
        if unknown:
            raise GraderError(f"{unknown} are not among labels {labels}")
        return passing


SubGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
    Field(discriminator="type"),
]


class MultiGrader(_Strict):
    """Named sub-graders combined by a formula over their names (see gemlora.evals.formula)."""

    type: Literal["multi"]
    name: str
    graders: dict[str, SubGrader] = Field(min_length=1)
    calculate_output: str

    @field_validator("calculate_output")
    @classmethod
    def _formula(cls, formula: str, info: ValidationInfo) -> str:
        check_formula(formula, info.data.get("graders", {}))  # graders is checked first
        return formula


GraderModel = Annotated[
    StringCheckGrader
    | TextSimilarityGrader
    | PythonGrader
    | ScoreModelGrader
    | LabelModelGrader
    | MultiGrader,
    Field(discriminator="type"),
]
Grader: TypeAdapter[GraderModel] = TypeAdapter(GraderModel)


def validate_grader(data: dict[str, Any]) -> GraderModel:
    """The grader, or a GraderError naming the field path of each problem."""
    try:
        return Grader.validate_python(data)
    except ValidationError as error:
        raise _invalid(error) from None


def parse_grader(data: dict[str, Any] | str | bytes) -> GraderModel:
    """A grader from its JSON text (a config file, a request body) or an already-parsed dict."""
    if isinstance(data, dict):
        return validate_grader(data)
    try:
        return Grader.validate_json(data)
    except ValidationError as error:
        raise _invalid(error) from None


def _invalid(error: ValidationError) -> GraderError:
    """One GraderError listing every problem by its field path; `param`: the first path."""
    lines, paths = [], []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"]) or "(grader)"
        cause = problem.get("ctx", {}).get("error")
        lines.append(f"  {path}: {cause if isinstance(cause, Exception) else problem['msg']}")
        paths.append(path)
    return GraderError("invalid grader:\n" + "\n".join(lines), param=paths[0] if paths else None)


def validate_graders(graders: list[dict[str, Any]]) -> list[GraderModel]:
    """A list of graders (a spec's, a config's): each valid, their names distinct. A problem is
    named by its position: `[1] string_check.operation: ...`."""
    checked = []
    for index, data in enumerate(graders):
        try:
            checked.append(validate_grader(data))
        except GraderError as error:
            problems = str(error).removeprefix("invalid grader:\n").strip()
            raise GraderError(f"[{index}] {problems}", param=f"[{index}].{error.param}") from None
    names = [grader.name for grader in checked]
    if len(set(names)) != len(names):
        raise GraderError(f"grader names must differ, got {names}")
    return checked


def walk(grader: GraderModel, path: str = "grader") -> Iterator[tuple[str, GraderModel]]:
    """The grader and, for a multi grader, each sub-grader (at any depth), with its field
    path: what a policy checks (no python graders, judges the caller may use)."""
    yield path, grader
    if isinstance(grader, MultiGrader):
        for name, sub in grader.graders.items():
            yield from walk(sub, f"{path}.graders.{name}")
