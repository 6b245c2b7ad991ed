"""Fidelity check: does the engine serve exactly what was trained?

The same prompts (as token ids, so tokenization cannot differ) go through PEFT + transformers on
the served base and through the running engine with the adapter's reference as `model`; the
greedy tokens are compared position by position. The result is recorded on the model version as
the tag `gemlora.verify`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from gemlora.adapters.errors import AdapterError
from gemlora.bases import BaseSpec

VERIFY_TAG = "gemlora.verify"

# Held-out prompts when the caller gives none: short, plain and unlike any training set here.
DEFAULT_PROMPTS = (
    "The capital of France is called",
    "Question: What is the capital of Italy?\nAnswer:",
    "Monday, Tuesday, Wednesday,",
    "Write one sentence about the sea.",
)


class PromptAgreement(BaseModel):
    prompt: str
    reference: list[int] = Field(description="PEFT + transformers greedy token ids.")
    served: list[int] = Field(description="The engine's greedy token ids.")

    @property
    def agreeing_prefix(self) -> int:
        """How many leading tokens are equal."""
        for index, (ours, theirs) in enumerate(zip(self.reference, self.served, strict=False)):
            if ours != theirs:
                return index
        return min(len(self.reference), len(self.served))


class VerifyReport(BaseModel):
    ref: str
    version_ref: str
    base: str
    tokens: int
    prompts: list[PromptAgreement]
    checked_at: datetime

    @property
    def agreement(self) -> float:
        """The fraction of compared tokens inside agreeing prefixes (1.0: identical output)."""
        total = sum(len(p.reference) for p in self.prompts)
        return sum(p.agreeing_prefix for p in self.prompts) / total if total else 0.0

    @property
    def identical(self) -> bool:
        return all(p.reference == p.served for p in self.prompts)

    def to_tag(self) -> str:
        return json.dumps(
            {
                "agreement": round(self.agreement, 4),
                "identical": self.identical,
                "base": self.base,
                "prompts": len(self.prompts),
                "tokens": self.tokens,
                "checked_at": self.checked_at.isoformat(timespec="seconds"),
            }
        )


# --- greedy tokens, both ways -----------------------------------------------------------------


def load_reference_model(spec: BaseSpec, adapter_dir: Path | None, dtype: str = "auto"):
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


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


def reference_greedy_ids(model, ids: list[int], tokens: int) -> list[int]:
    import torch

    inputs = torch.tensor([ids])
    with torch.no_grad():
        output = model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=tokens,
            do_sample=False,
        )
    return output[0, len(ids) :].tolist()


def engine_greedy_ids(engine_url: str, model: str, ids: list[int], tokens: int) -> list[int]:
    """Greedy token ids from the engine's completions API for a tokenized prompt."""
    response = httpx.post(
        f"{engine_url}/v1/completions",
        json={
            "model": model,
            "prompt": ids,
            "max_tokens": tokens,
            "temperature": 0,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        },
        timeout=300,
    )
    if response.status_code != 200:
        raise AdapterError(f"the engine at {engine_url} refused {model!r}: {response.text}")
    tokens_out = response.json()["choices"][0]["logprobs"]["tokens"]
    return [int(token.removeprefix("token_id:")) for token in tokens_out]


def compare(
    engine_url: str,
    model_name: str,
    reference_model,
    tokenizer,
    prompts: list[str],
    tokens: int,
) -> list[PromptAgreement]:
    results = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt)
        results.append(
            PromptAgreement(
                prompt=prompt,
                reference=reference_greedy_ids(reference_model, ids, tokens),
                served=engine_greedy_ids(engine_url, model_name, ids, tokens),
            )
        )
    return results


def verify_adapter(
    registry,
    ref: str,
    engine_url: str,
    base: str,
    prompts: list[str] | None = None,
    tokens: int = 16,
    record: bool = True,
    dtype: str = "auto",
) -> VerifyReport:
    """Compare PEFT + transformers with the engine at `engine_url` (serving `base` in `dtype`,
    the engine config's) on `ref`, and record the result as the `gemlora.verify` tag of the
    version `ref` points at."""
    from transformers import AutoTokenizer

    from gemlora.adapters.registry import served_base

    spec = served_base(base)
    resolved = registry.resolve(ref, base=spec)
    tokenizer = AutoTokenizer.from_pretrained(spec.location, revision=spec.revision)
    model = load_reference_model(spec, resolved.path, dtype)
    report = VerifyReport(
        ref=ref,
        version_ref=resolved.version_ref,
        base=spec.name,
        tokens=tokens,
        prompts=compare(
            engine_url, ref, model, tokenizer, list(prompts or DEFAULT_PROMPTS), tokens
        ),
        checked_at=datetime.now(UTC),
    )
    if record:
        registry.set_version_tag(resolved.name, resolved.version, VERIFY_TAG, report.to_tag())
    return report
