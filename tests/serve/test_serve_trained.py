"""The whole path with no manual step: `gemlora.train.run_training` registers an adapter in the
MLflow registry, and the running engine (started before the adapter existed) serves it by name."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import openai
import pytest

pytestmark = pytest.mark.engine

BASE = "tiny-gemma-3-mm"
QUESTION = "What shape is it?"
TOKENS = 8


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from gemlora.data.sample_sets import write_samples

    out = tmp_path_factory.mktemp("samples")
    write_samples(out)
    return out / "shapes-vqa"


def test_an_adapter_registered_by_training_is_served_at_once(
    engines, mlflow_server, shapes, tmp_path
):
    from gemlora.train import parse_config, run_training

    engine = engines.get(BASE)  # running before the adapter exists
    name = f"trained-{uuid.uuid4().hex[:8]}"
    config = parse_config(
        {
            "base": {"model": BASE},
            "lora": {"r": 4, "alpha": 8},
            "data": {
                "train_file": str(shapes / "train.jsonl"),
                "eval_file": str(shapes / "eval.jsonl"),
            },
            "training": {"max_steps": 2, "batch_size": 2, "lr": 1e-3},
            "eval": {"generation_examples": 1, "max_new_tokens": 2},
            "output": {"name": name, "tracking_uri": mlflow_server.url, "dir": str(tmp_path)},
        }
    )
    result = run_training(config)

    client = openai.OpenAI(base_url=f"{engine.url}/v1", api_key=engine.token, max_retries=0)
    reply = client.chat.completions.create(
        model=f"{name}@candidate",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=TOKENS,
        temperature=0,
    )
    assert reply.model == f"{name}@candidate"
    # It answers with the trained weights: the engine's greedy tokens are PEFT + transformers'
    # with the trained adapter, and teacher-forced on them PEFT gives the engine's top tokens
    # the engine's log-probabilities; the base alone does not (measured: 1e-6 nats off with
    # the adapter, 0.086 without it, after these two steps; the greedy tokens are the same).
    fidelity = compare_with_peft(engine, f"{name}@candidate", result.adapter_dir)
    assert fidelity.text == reply.choices[0].message.content
    assert fidelity.served == fidelity.peft_greedy
    assert fidelity.gap_with_adapter <= 1e-3
    assert fidelity.gap_without_adapter >= 0.01
    # ... and it is exactly the registered version: vLLM loaded the registry's verified copy.
    version = registry_version(mlflow_server, name, result.version)
    served = {m.id: m for m in client.models.list().data}
    assert f"{name}@candidate" in served
    assert served[f"{name}@candidate"].root.endswith(f"/{result.version}-{version.digest[:12]}")


@dataclass(frozen=True)
class Fidelity:
    text: str  # the engine's answer
    served: list[int]  # its tokens
    peft_greedy: list[int]  # PEFT + transformers' greedy tokens, with the adapter
    gap_with_adapter: float  # largest |engine - PEFT| log-prob of the engine's top tokens
    gap_without_adapter: float  # the same against the base alone


def compare_with_peft(engine, model_name: str, adapter_dir) -> Fidelity:
    """The engine's greedy answer to QUESTION (its chat API, with the prompt ids and top
    log-probs it used) against PEFT + transformers on the same ids, with the adapter at
    `adapter_dir` and without it."""
    import httpx
    import torch

    from gemlora.adapters.fidelity_check import (
        TOP_LOGPROBS,
        Served,
        load_reference_model,
        logprob_gap,
        reference_greedy_ids,
    )
    from gemlora.bases import resolve_base

    body = {
        "model": model_name,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
    }
    answer = httpx.post(
        f"{engine.url}/v1/chat/completions", json=body, headers=engine.headers, timeout=60
    ).json()
    positions = answer["choices"][0]["logprobs"]["content"]

    def token_id(token: str) -> int:
        return int(token.removeprefix("token_id:"))

    served = Served(
        prompt_ids=answer["prompt_token_ids"],
        tokens=[token_id(p["token"]) for p in positions],
        top_logprobs=[
            {token_id(top["token"]): top["logprob"] for top in p["top_logprobs"]} for p in positions
        ],
    )
    ids = served.prompt_ids
    model = load_reference_model(resolve_base(BASE), adapter_dir)
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids)).long()}
    peft_greedy = reference_greedy_ids(model, ids, TOKENS)
    gap = logprob_gap(model, inputs, served)
    with model.disable_adapter():
        base_gap = logprob_gap(model, inputs, served)
    text = answer["choices"][0]["message"]["content"]
    return Fidelity(text, served.tokens, peft_greedy, gap, base_gap)


def registry_version(mlflow_server, name: str, version: int):
    from gemlora.adapters import AdapterRegistry, RegistryConfig

    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url))
    return next(v for v in registry.show(name).versions if v.version == version)
