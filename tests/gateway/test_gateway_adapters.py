"""Adapter routing through the gateway: the request's `model` names an adapter registered in
MLflow (`NAME`, `NAME@ALIAS`, `NAME/VERSION`); the engine's resolver loads it from the registry.
"""

from __future__ import annotations

import openai
import pytest
from gateway_helpers import BASE
from openai import OpenAI

pytestmark = pytest.mark.engine

PROMPT = [{"role": "user", "content": "Tell me a story about a lighthouse."}]


def greedy(client: OpenAI, model: str):
    return client.chat.completions.create(model=model, messages=PROMPT, max_tokens=8, temperature=0)


def test_adapter_is_served_by_name_alias_and_version(gateway, keys, adapters):
    team = OpenAI(base_url=f"{gateway.url}/v1", api_key=keys.team, max_retries=0)
    base_text = greedy(team, BASE).choices[0].message.content
    answers = {}
    for model in (adapters.team, f"{adapters.team}@champion", f"{adapters.team}/1"):
        completion = greedy(team, model)
        assert completion.model == model
        answers[model] = completion.choices[0].message.content
    # One version behind the three names: the same greedy answer, and not the base's.
    assert len(set(answers.values())) == 1
    assert base_text not in answers.values()


def test_unknown_adapter_is_a_404_naming_model(gateway, keys):
    admin = OpenAI(base_url=f"{gateway.url}/v1", api_key=keys.admin, max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        greedy(admin, "no-such-adapter@champion")
    assert raised.value.body["param"] == "model"


def test_a_key_without_access_gets_403_before_the_engine(gateway, keys, adapters):
    team = OpenAI(base_url=f"{gateway.url}/v1", api_key=keys.team, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        greedy(team, adapters.secret)
    assert adapters.secret not in {m.id for m in team.models.list()}
