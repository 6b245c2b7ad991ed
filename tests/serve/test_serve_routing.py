"""Per-request adapter routing on real vLLM CPU engines (the 270M in bf16 and in W4A16): the
`model` of each request picks the base or a registered adapter, resolved through the real
MLflow registry by gemlora's resolver plugin, with no restart."""

from __future__ import annotations

import time

import openai
import pytest
from serve_helpers import BASES, HELD_OUT, REPLY_A, REPLY_B
from typer.testing import CliRunner

from gemlora.adapters import AdapterMetadata
from gemlora.adapters.fidelity_check import (
    VERIFY_TAG,
    load_reference_model,
    reference_greedy_ids,
    serve_text,
)
from gemlora.adapters.verification_record import verification_of
from gemlora.bases import resolve_base

pytestmark = pytest.mark.engine

TOKENS = 16
# Plain text: the 270M is a base model, unsure (near-tied greedy choices) on chat prompts.
BASE_PROMPT = "Question: What is the capital of Italy?\nAnswer:"


def client(engine) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{engine.url}/v1", api_key=engine.token, max_retries=0)


def chat_ids(tokenizer, question: str) -> list[int]:
    """A chat prompt as the engine's chat API renders it (the template adds <bos>)."""
    messages = [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def ask(engine, model: str, question: str, max_tokens: int = TOKENS) -> str:
    reply = client(engine).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return reply.choices[0].message.content


@pytest.fixture(scope="module")
def tokenizer(built_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built_models["gemma-3-270m"])


@pytest.mark.parametrize("base", BASES)
def test_each_model_name_gets_that_models_greedy_output(engines, base, taught, names, tokenizer):
    engine, spec = engines.get(base), resolve_base(base)
    adapters, name = taught[base], names[base]
    chat, plain = chat_ids(tokenizer, HELD_OUT[0]), tokenizer(BASE_PROMPT)["input_ids"]
    cases = [
        # model name in the request, the adapter PEFT loads (None: the bare base), prompt
        (base, None, plain),
        (base, None, chat),
        (name.a, adapters.a, chat),  # bare name: the champion alias
        (f"{name.b}@candidate", adapters.b, chat),
        (f"{name.b}/1", adapters.b, chat),
    ]
    outputs = {}
    for model_name, adapter, prompt in cases:
        reference = reference_greedy_ids(load_reference_model(spec, adapter), prompt, TOKENS)
        served = serve_text(engine.url, model_name, prompt, TOKENS).tokens
        text = tokenizer.decode(served)
        if adapter is None and prompt is chat:
            outputs[base] = text  # the base is unsure on chat prompts: only its text is checked
            continue
        assert served == reference, (model_name, text, tokenizer.decode(reference))
        outputs[model_name] = text
    assert outputs[name.a].startswith(REPLY_A[:12])
    assert outputs[f"{name.b}@candidate"].startswith(REPLY_B[:12])
    assert REPLY_A[:12] not in outputs[base] and REPLY_B[:12] not in outputs[base]


def test_mixed_concurrent_requests_each_get_their_models_tokens(engines, names, tokenizer):
    """Base and adapter requests batched together (gemlora's CPU LoRA kernels group the batch's
    tokens by adapter; tokens of base requests get no LoRA term): each answer equals that model's
    answer when it runs alone."""
    from concurrent.futures import ThreadPoolExecutor

    engine, name = engines.get("gemma-3-270m"), names["gemma-3-270m"]
    chat = chat_ids(tokenizer, HELD_OUT[1])
    prompts = {  # the base on a plain prompt: it is unsure (near ties) on chat prompts
        "gemma-3-270m": tokenizer(BASE_PROMPT)["input_ids"],
        name.a: chat,
        f"{name.b}@candidate": chat,
    }

    def answer(model: str) -> list[int]:
        return serve_text(engine.url, model, prompts[model], TOKENS).tokens

    models = list(prompts) * 3
    alone = {model: answer(model) for model in prompts}
    with ThreadPoolExecutor(len(models)) as pool:
        together = list(pool.map(answer, models))
    assert together == [alone[model] for model in models]
    assert len({tuple(ids) for ids in alone.values()}) == 3  # three different answers


@pytest.mark.parametrize(
    "model", ["no-such-adapter", "{a}@no-such-alias", "{a}/99", "not a valid name!"]
)
def test_unknown_model_is_a_404_naming_model(engines, names, model):
    engine = engines.get("gemma-3-270m")
    with pytest.raises(openai.NotFoundError) as raised:
        ask(engine, model.format(a=names["gemma-3-270m"].a), "Hello?")
    error = raised.value.body
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert error["message"]


def test_incompatible_adapter_is_a_400_with_the_reason_and_engine_keeps_serving(
    engines, registry, rank32
):
    engine = engines.get("gemma-3-270m")
    name = f"too-big-{time.time_ns() % 10**6}"
    registry.register(rank32, name, AdapterMetadata(base="gemma-3-270m"))
    with pytest.raises(openai.BadRequestError) as raised:
        ask(engine, f"{name}@candidate", "Hello?")
    error = raised.value.body
    assert error["param"] == "model"
    assert error["code"] == "incompatible_adapter"
    assert "rank 32" in error["message"] and "16" in error["message"]
    # The engine is unharmed: the base and other adapters still answer.
    assert ask(engine, "gemma-3-270m", "Hello?", max_tokens=4)


def test_moving_an_alias_switches_the_served_version_within_the_ttl(
    engines, registry, taught, engine_registry
):
    engine = engines.get("gemma-3-270m")
    name = f"mover-{time.time_ns() % 10**6}"
    metadata = AdapterMetadata(base="gemma-3-270m")
    registry.register(taught["gemma-3-270m"].a, name, metadata, alias="champion")
    registry.register(taught["gemma-3-270m"].b, name, metadata, alias=None)
    assert ask(engine, name, HELD_OUT[1]).startswith(REPLY_A[:12])

    registry.set_alias(name, "champion", 2)
    moved_at = time.monotonic()
    while not ask(engine, name, HELD_OUT[1]).startswith(REPLY_B[:12]):
        assert time.monotonic() - moved_at < engine_registry.alias_ttl_s + 5, "alias never moved"
        time.sleep(0.5)
    # Version references never move.
    assert ask(engine, f"{name}/1", HELD_OUT[1]).startswith(REPLY_A[:12])


def test_verify_records_agreement_on_the_model_version(engines, registry, names):
    from gemlora.cli import app

    engine, name = engines.get("gemma-3-270m"), names["gemma-3-270m"].b
    result = CliRunner().invoke(
        app,
        [
            "adapters", "--tracking-uri", registry.config.tracking_uri,
            "verify", f"{name}@candidate", "--engine-url", engine.url,
            "--base", "gemma-3-270m", "--prompt", HELD_OUT[0], "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    version = registry.show(name).versions[-1]
    assert version.version == 1
    verification = verification_of(version.tags)
    assert verification.passed and verification.compared_by == "logprobs", version.tags[VERIFY_TAG]
    assert (verification.engine_base, verification.prompts) == ("gemma-3-270m", 1)
