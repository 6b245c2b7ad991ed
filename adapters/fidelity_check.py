"""Fidelity check: does the engine serve exactly what was trained?

The same prompts go through PEFT + transformers on the served base and through the running
engine with the adapter's reference as `model`. Text prompts go to the engine as token ids (so
tokenization cannot differ); on a multimodal base, image prompts go through its chat API, and
the prompt ids the engine reports must equal transformers' (same template, same image tokens).

Each prompt is judged by log-probabilities, always: teacher-forced on the engine's answer, PEFT
must give the engine's top tokens the log-probabilities the engine gave them, within `tolerance`
nats at every position. Equal greedy tokens are not enough: a small difference (an adapter whose
vision-tower weights were dropped, say) can move every log-probability without flipping a greedy
choice. Unequal greedy tokens are not a failure on their own: a random tiny model's next-token
distribution is nearly flat, so float noise flips its greedy choices, within the tolerance.

The result is recorded on the model version as the tag `gemlora.verify`
(`gemlora.adapters.verification_record`): passed or failed when the check ran, `error` with the
reason when it broke (an exception inside the check), never left unverified.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field

from gemlora.adapters.errors import AdapterError
from gemlora.adapters.verification_record import (
    DEFAULT_TOLERANCE,
    VERIFY_TAG,
    Verification,
    error_record,
)
from gemlora.bases import BaseSpec
from gemlora.engine_token import TOKEN_ENV, engine_headers

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

# Held-out prompts when the caller gives none: short, plain and unlike any training set here.
DEFAULT_PROMPTS = (
    "The capital of France is called",
    "Question: What is the capital of Italy?\nAnswer:",
    "Monday, Tuesday, Wednesday,",
    "Write one sentence about the sea.",
)
TOP_LOGPROBS = 5  # the engine's top tokens compared at each position


@dataclass(frozen=True)
class VerifyPrompt:
    """A prompt, with an image on a multimodal base; `source` says where the image came from."""

    text: str
    image: Image | None = None
    source: str = ""


def builtin_image_prompts() -> list[VerifyPrompt]:
    """Two drawn images, used when the run's held-out images are not known."""
    from PIL import Image, ImageDraw

    square = Image.new("RGB", (96, 96), (255, 255, 255))
    ImageDraw.Draw(square).rectangle((24, 24, 72, 72), fill=(200, 30, 30))
    stripes = Image.new("RGB", (96, 96), (20, 40, 160))
    for x in range(0, 96, 16):
        ImageDraw.Draw(stripes).rectangle((x, 0, x + 7, 95), fill=(240, 200, 40))
    return [
        VerifyPrompt("What is in this picture?", square, "built-in: red square"),
        VerifyPrompt("Describe the colours in this image.", stripes, "built-in: stripes"),
    ]


def prompts_digest(prompts: list[VerifyPrompt]) -> str:
    """What was asked, images by their pixels: equal digests mean the same check."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(prompt.text.encode())
        if prompt.image is not None:
            image = prompt.image.convert("RGB")
            digest.update(f"{image.size}".encode() + image.tobytes())
    return digest.hexdigest()[:16]


class PromptCheck(BaseModel):
    prompt: str
    image: str | None = Field(default=None, description="Where the prompt's image came from.")
    reference: list[int] = Field(description="PEFT + transformers greedy token ids.")
    served: list[int] = Field(description="The engine's greedy token ids.")
    max_logprob_gap: float = Field(
        description="Largest |engine - PEFT| log-probability of the engine's top tokens at any "
        "position, teacher-forced on the engine's answer."
    )

    @property
    def agreeing_prefix(self) -> int:
        """How many leading tokens are equal."""
        for index, (ours, theirs) in enumerate(zip(self.reference, self.served, strict=False)):
            if ours != theirs:
                return index
        return min(len(self.reference), len(self.served))

    @property
    def identical(self) -> bool:
        return self.reference == self.served

    def passed(self, tolerance: float) -> bool:
        """By the log-probability gap alone: equal greedy tokens prove too little (see above)."""
        return self.max_logprob_gap <= tolerance


class EngineRefusedError(AdapterError):
    """The engine would not serve the adapter (e.g. 400 incompatible_adapter)."""


class VerifyReport(BaseModel):
    ref: str
    version_ref: str
    base: str
    quantization: str
    dtype: str
    tokens: int
    tolerance: float
    prompts_digest: str
    prompts: list[PromptCheck]
    checked_at: datetime
    refused: str | None = Field(default=None, description="Why the engine refused the adapter.")

    @property
    def agreement(self) -> float:
        """The fraction of compared tokens inside agreeing prefixes (1.0: identical output)."""
        total = sum(len(p.reference) for p in self.prompts)
        return sum(p.agreeing_prefix for p in self.prompts) / total if total else 0.0

    @property
    def identical(self) -> bool:
        return all(p.identical for p in self.prompts)

    @property
    def passed(self) -> bool:
        return self.refused is None and all(p.passed(self.tolerance) for p in self.prompts)

    def verification(self) -> Verification:
        return Verification(
            passed=self.passed,
            agreement=round(self.agreement, 4),
            compared_by="logprobs",
            tolerance=self.tolerance,
            max_logprob_gap=round(max((p.max_logprob_gap for p in self.prompts), default=0), 4),
            prompts=len(self.prompts),
            image_prompts=sum(p.image is not None for p in self.prompts),
            prompts_digest=self.prompts_digest,
            engine_base=self.base,
            quantization=self.quantization,
            dtype=self.dtype,
            checked_at=self.checked_at,
            refused=self.refused,
        )


# --- the engine ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    prompt_ids: list[int]
    tokens: list[int]
    top_logprobs: list[dict[int, float]]  # per position: the engine's top tokens


def without_token(engine_url: str) -> str:
    return (
        f"the engine at {engine_url} refused gemlora without its internal token: run this as "
        f"the user who started it, or set ${TOKEN_ENV} to that start's token"
    )


def engine_base(engine_url: str) -> str | None:
    """The model name an engine serves its base under, or None when it is not reachable."""
    try:
        headers = engine_headers(engine_url)
        response = httpx.get(f"{engine_url}/v1/models", headers=headers, timeout=5)
        if response.status_code == 401:
            raise EngineRefusedError(without_token(engine_url))
        response.raise_for_status()
        models = response.json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    bases = [model["id"] for model in models if model.get("parent") is None]
    return bases[0] if bases else None


def serve_text(engine_url: str, model: str, ids: list[int], tokens: int) -> Served:
    """Greedy tokens and top log-probs from the engine's completions API, prompt as ids."""
    body = _engine_call(
        engine_url,
        "/v1/completions",
        {"model": model, "prompt": ids, "max_tokens": tokens, "logprobs": TOP_LOGPROBS},
    )
    logprobs = body["choices"][0]["logprobs"]
    return Served(
        prompt_ids=ids,
        tokens=[_token_id(token) for token in logprobs["tokens"]],
        top_logprobs=[
            {_token_id(token): value for token, value in top.items()}
            for top in logprobs["top_logprobs"]
        ],
    )


def serve_image(engine_url: str, model: str, prompt: VerifyPrompt, tokens: int) -> Served:
    """Greedy tokens and top log-probs from the engine's chat API for an image prompt."""
    content = [
        {"type": "image_url", "image_url": {"url": _data_url(prompt.image)}},
        {"type": "text", "text": prompt.text},
    ]
    body = _engine_call(
        engine_url,
        "/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": tokens,
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
            "return_token_ids": True,
        },
    )
    positions = body["choices"][0]["logprobs"]["content"]
    return Served(
        prompt_ids=body["prompt_token_ids"],
        tokens=[_token_id(position["token"]) for position in positions],
        top_logprobs=[
            {_token_id(top["token"]): top["logprob"] for top in position["top_logprobs"]}
            for position in positions
        ],
    )


def _engine_call(engine_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    body |= {"temperature": 0, "return_tokens_as_token_ids": True, "skip_special_tokens": False}
    response = httpx.post(
        f"{engine_url}{path}", json=body, headers=engine_headers(engine_url), timeout=300
    )
    if response.status_code == 401:
        raise EngineRefusedError(without_token(engine_url))
    if response.status_code != 200:
        raise EngineRefusedError(
            f"the engine at {engine_url} refused {body['model']!r}: {response.text}"
        )
    return response.json()


def _token_id(token: str) -> int:
    return int(token.removeprefix("token_id:"))


def _data_url(image: Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- PEFT + transformers ------------------------------------------------------------------------


def load_reference_model(spec: BaseSpec, adapter_dir, dtype: str = "auto"):
    """The served base in transformers (a compressed-tensors base dequantized, as vLLM computes
    it) in the engine's dtype (`auto`: the precision rule the engine applies on this machine),
    with the adapter attached when given."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from gemlora.precision import torch_dtype

    kwargs: dict = {"dtype": torch_dtype(dtype), "revision": spec.revision}
    if spec.quantization == "compressed-tensors-w4a16":
        from transformers import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    auto = AutoModelForImageTextToText if spec.multimodal else AutoModelForCausalLM
    model = auto.from_pretrained(spec.location, **kwargs)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval()


def load_processor(spec: BaseSpec):
    """The base's processor (multimodal) or tokenizer (text only)."""
    from transformers import AutoProcessor, AutoTokenizer

    auto = AutoProcessor if spec.multimodal else AutoTokenizer
    return auto.from_pretrained(spec.location, revision=spec.revision)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


def reference_greedy_ids(model, ids: list[int], tokens: int) -> list[int]:
    import torch

    inputs = torch.tensor([ids])
    return _greedy(model, {"input_ids": inputs, "attention_mask": torch.ones_like(inputs)}, tokens)


def _greedy(model, inputs: dict, tokens: int) -> list[int]:
    import torch

    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def image_inputs(processor, prompt: VerifyPrompt) -> dict:
    """Transformers' inputs for an image prompt, rendered as the engine's chat API does."""
    content = [{"type": "image", "image": prompt.image}, {"type": "text", "text": prompt.text}]
    return dict(
        processor.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
    )


def logprob_gap(model, inputs: dict, served: Served) -> float:
    """Teacher-forced on the engine's answer: the largest difference between the log-probs the
    engine gave its top tokens and PEFT's for the same tokens at the same position."""
    import torch

    if not served.tokens:
        return 0.0
    answer = torch.tensor([served.tokens])
    forced = dict(inputs)
    forced["input_ids"] = torch.cat([inputs["input_ids"], answer], dim=1)
    for key, fill in (("attention_mask", 1), ("token_type_ids", 0), ("mm_token_type_ids", 0)):
        if key in inputs:
            forced[key] = torch.cat([inputs[key], torch.full_like(answer, fill)], dim=1)
    start = inputs["input_ids"].shape[1] - 1
    with torch.no_grad():
        logits = model(**forced).logits[0, start : start + len(served.tokens)]
    logprobs = logits.float().log_softmax(-1)
    return max(
        abs(value - float(logprobs[position, token]))
        for position, top in enumerate(served.top_logprobs)
        for token, value in top.items()
    )


def check_prompt(engine_url, model_name, reference_model, processor, prompt, tokens) -> PromptCheck:
    import torch

    if prompt.image is None:
        tokenizer = getattr(processor, "tokenizer", processor)
        ids = prompt_ids(tokenizer, prompt.text)
        inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids))}
        served = serve_text(engine_url, model_name, ids, tokens)
    else:
        inputs = image_inputs(processor, prompt)
        served = serve_image(engine_url, model_name, prompt, tokens)
        if inputs["input_ids"][0].tolist() != served.prompt_ids:
            raise AdapterError(
                f"the engine rendered the image prompt {prompt.text!r} differently from "
                "transformers (chat template or image tokens differ), so no comparison is fair"
            )
    return PromptCheck(
        prompt=prompt.text,
        image=(prompt.source or "image") if prompt.image is not None else None,
        reference=_greedy(reference_model, inputs, tokens),
        served=served.tokens,
        max_logprob_gap=round(logprob_gap(reference_model, inputs, served), 5),
    )


class Verifier:
    """PEFT + transformers on the served base, loaded once, against the engine at `engine_url`
    (serving that base in `dtype`, the engine config's); each `verify` attaches one adapter
    version, checks every prompt and detaches it. On a multimodal base, image prompts are added
    (`image_prompts`, else the built-in ones)."""

    def __init__(
        self,
        engine_url: str,
        base: str | BaseSpec,
        *,
        prompts: list[str] | None = None,
        image_prompts: list[VerifyPrompt] | None = None,
        tokens: int = 16,
        dtype: str = "auto",
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        from gemlora.adapters.registry import served_base

        self.engine_url, self.tokens, self.dtype, self.tolerance = (
            engine_url,
            tokens,
            dtype,
            tolerance,
        )
        self.spec = served_base(base)
        self.checks = [VerifyPrompt(text) for text in (prompts or DEFAULT_PROMPTS)]
        if self.spec.multimodal:
            self.checks += image_prompts if image_prompts else builtin_image_prompts()
        self.processor = load_processor(self.spec)
        self.base_model = load_reference_model(self.spec, None, dtype)

    def verify(self, registry, ref: str, record: bool = True) -> VerifyReport:
        """Check `ref` and record the result as the `gemlora.verify` tag of its version. An
        exception inside the check is recorded as `error` (with its reason) and raised."""
        version = registry.lookup(ref)  # the version to record on: missing, or MLflow down, raise
        try:
            return self._verify(registry, ref, record)
        except Exception as error:
            if record:
                record_error(registry, version.name, version.version, error, self.spec.name)
            raise

    def _verify(self, registry, ref: str, record: bool) -> VerifyReport:
        from peft import PeftModel

        from gemlora.precision import resolve_precision

        resolved = registry.resolve(ref, base=self.spec)
        model = PeftModel.from_pretrained(self.base_model, str(resolved.path)).eval()
        results, refused = [], None
        try:
            results = [self._check(model, ref, prompt) for prompt in self.checks]
        except EngineRefusedError as error:
            refused = str(error)
        finally:
            self.base_model = model.unload()  # the bare base again, for the next version
        report = VerifyReport(
            ref=ref,
            version_ref=resolved.version_ref,
            base=self.spec.name,
            quantization=self.spec.quantization,
            dtype=resolve_precision(self.dtype),
            tokens=self.tokens,
            tolerance=self.tolerance,
            prompts_digest=prompts_digest(self.checks),
            prompts=results,
            checked_at=datetime.now(UTC),
            refused=refused,
        )
        if record:
            tag = report.verification().to_tag()
            registry.set_version_tag(resolved.name, resolved.version, VERIFY_TAG, tag)
        return report

    def _check(self, model, ref: str, prompt: VerifyPrompt) -> PromptCheck:
        return check_prompt(self.engine_url, ref, model, self.processor, prompt, self.tokens)


def record_error(
    registry, name: str, version: int, error: BaseException | str, engine_base: str = ""
) -> bool:
    """Record that the check of `name/version` broke (`error`, with the reason) as its
    `gemlora.verify` tag; False when even that failed (e.g. MLflow is down: the version then
    stays unverified, which the default promotion rule refuses too)."""
    tag = error_record(error, engine_base).to_tag()
    try:
        registry.set_version_tag(name, version, VERIFY_TAG, tag)
    except AdapterError:
        logger.exception("could not record the verification error of %s/%s", name, version)
        return False
    return True


def verify_adapter(
    registry,
    ref: str,
    engine_url: str,
    base: str | BaseSpec,
    prompts: list[str] | None = None,
    tokens: int = 16,
    record: bool = True,
    dtype: str = "auto",
    *,
    image_prompts: list[VerifyPrompt] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> VerifyReport:
    """Verify one version (see `Verifier`)."""
    verifier = Verifier(
        engine_url, base, prompts=prompts, image_prompts=image_prompts, tokens=tokens,
        dtype=dtype, tolerance=tolerance,
    )  # fmt: skip
    return verifier.verify(registry, ref, record)
