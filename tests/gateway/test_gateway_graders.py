"""OpenAI's grader endpoints on the gateway, through the official openai client unchanged:
validate and run, a refused grader naming its field, python graders off unless the config
turns them on, judges under the caller's key, and a judge that is the real engine's model."""

from __future__ import annotations

import openai
import pytest
from gateway_helpers import BASE, GatewayServer, free_port
from openai import OpenAI

from gemlora.serve.gateway import GatewayConfig, GatewaySettings
from gemlora.serve.gateway.config import GradersPolicy

EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
SIGNED = {
    "type": "string_check",
    "name": "signed",
    "input": "{{sample.output_text}}",
    "reference": "Captain Gem",
    "operation": "like",
}
PYTHON = {
    "type": "python",
    "name": "length",
    "source": "def grade(sample, item):\n    return len(sample['output_text']) / 10\n",
}


def python_graders_gateway(keys) -> GatewayServer:
    """A gateway whose config allows python graders (5 s each), with no engine behind it."""
    settings = GatewaySettings(
        GatewayConfig(graders=GradersPolicy(python=True, python_timeout_s=5)),
        engine_url=f"http://127.0.0.1:{free_port()}",
        base=BASE,
        keys=keys.api_keys(),
    )
    return GatewayServer(settings, free_port())


def client(server: GatewayServer, key: str) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_graders_validate_and_run_through_the_openai_client(strict_gateway, keys):
    graders = client(strict_gateway, keys.team).fine_tuning.alpha.graders
    assert graders.validate(grader=EXACT).grader.name == "exact"

    hit = graders.run(grader=EXACT, model_sample="Paris", item={"answer": "Paris"})
    miss = graders.run(grader=EXACT, model_sample="Lyon", item={"answer": "Paris"})
    assert (hit.reward, miss.reward) == (1.0, 0.0)
    assert hit.metadata.name == "exact" and hit.metadata.type == "string_check"

    multi = {
        "type": "multi",
        "name": "both",
        "graders": {"exact": EXACT, "signed": SIGNED},
        "calculate_output": "0.75 * exact + 0.25 * signed",
    }
    answer = graders.run(grader=multi, model_sample="Ahoy. — Captain Gem", item={"answer": "x"})
    assert answer.reward == 0.25
    assert answer.sub_rewards == {"exact": 0.0, "signed": 1.0}


def test_a_bad_grader_or_item_is_a_400_naming_the_field(strict_gateway, keys):
    graders = client(strict_gateway, keys.team).fine_tuning.alpha.graders
    with pytest.raises(openai.BadRequestError) as refused:
        graders.validate(grader=EXACT | {"operation": "sounds_like"})
    assert refused.value.body["param"].startswith("grader.")
    assert "operation" in refused.value.body["param"]
    formula = {"type": "multi", "name": "m", "graders": {"a": EXACT}, "calculate_output": "a.b"}
    with pytest.raises(openai.BadRequestError, match="calculate_output"):
        graders.validate(grader=formula)
    with pytest.raises(openai.BadRequestError, match="answer") as missing:
        graders.run(grader=EXACT, model_sample="Paris", item={"question": "?"})
    assert missing.value.body["param"] == "item"


def test_python_graders_are_refused_unless_the_config_turns_them_on(strict_gateway, keys):
    graders = client(strict_gateway, keys.team).fine_tuning.alpha.graders
    with pytest.raises(openai.BadRequestError) as refused:
        graders.run(grader=PYTHON, model_sample="twelve chr")
    assert refused.value.body["code"] == "python_graders_disabled"
    assert refused.value.body["param"] == "grader.type"
    nested = {"type": "multi", "name": "m", "graders": {"p": PYTHON}, "calculate_output": "p"}
    with pytest.raises(openai.BadRequestError) as refused:
        graders.validate(grader=nested)
    assert refused.value.body["param"] == "grader.graders.p.type"

    server = python_graders_gateway(keys)
    try:
        graders = client(server, keys.team).fine_tuning.alpha.graders
        assert graders.run(grader=PYTHON, model_sample="twelve chr").reward == 1.0
        looping = PYTHON | {"source": "def grade(sample, item):\n    while True:\n        pass\n"}
        answer = graders.run(grader=looping, model_sample="x")
        assert answer.reward == 0.0
        assert answer.metadata.errors.python_grader_runtime_error
        assert "5" in answer.metadata.errors.python_grader_runtime_error_details
    finally:
        server.stop()


def test_a_judge_the_key_may_not_use_is_refused(strict_gateway, keys):
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": "other-team-bot@champion",
        "input": [{"role": "user", "content": "Rate 0-1: {{sample.output_text}}"}],
        "range": [0, 1],
    }
    graders = client(strict_gateway, keys.team).fine_tuning.alpha.graders
    with pytest.raises(openai.PermissionDeniedError) as refused:
        graders.run(grader=judge, model_sample="x")
    assert refused.value.body["param"] == "grader.model"


@pytest.mark.engine
def test_a_score_model_judge_is_the_engines_model(gateway, keys):
    """The tiny model's reply is not a useful score: what is checked is that the engine
    answered the judge (behind its token), so the reply was read, not that it was wise.
    (A judge that is a served adapter, with a predictable reply: tests/serve/test_serve_eval.py.)"""
    judge = {
        "type": "score_model",
        "name": "tone",
        "model": BASE,
        "input": [{"role": "user", "content": "Rate 0 to 1: {{sample.output_text}}"}],
        "range": [0, 1],
        "sampling_params": {"max_completions_tokens": 2},
    }
    graders = client(gateway, keys.admin).fine_tuning.alpha.graders
    answer = graders.run(grader=judge, model_sample="Thank you kindly.")
    errors = answer.metadata.errors
    assert not errors.model_grader_server_error, errors.model_grader_server_error_details
    assert errors.model_grader_parse_error or 0 <= answer.reward <= 1  # a number, or none


def test_a_reward_in_training_is_what_graders_run_returns(keys):
    """The reward function of a reinforcement run (`gemlora.train.grpo.GraderReward`, called as
    TRL calls it) and POST /v1/fine_tuning/alpha/graders/run give the same reward for the same
    sample and item, a grader that raises included."""
    import json

    from gemlora.evals import validate_grader
    from gemlora.train.grpo import GraderReward

    similar = {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "fuzzy_match",
    }
    raises = PYTHON | {
        "name": "picky",
        "source": "def grade(sample, item):\n"
        "    if 'Lyon' in sample['output_text']:\n"
        "        raise ValueError('not that city')\n"
        "    return len(sample['output_text']) / 10\n",
    }
    multi = {
        "type": "multi",
        "name": "mixed",
        "graders": {"exact": EXACT, "close": similar},
        "calculate_output": "0.5 * exact + 0.5 * close",
    }
    samples = ["Paris", "The answer is Paris.", "Lyon", ""]
    item = {"answer": "Paris"}
    server = python_graders_gateway(keys)
    try:
        graders = client(server, keys.team).fine_tuning.alpha.graders
        for grader in (EXACT, similar, raises, multi):
            reward = GraderReward(validate_grader(grader))
            metrics: dict[str, float] = {}
            trained = reward(
                prompts=[[{"role": "user", "content": "Capital of France?"}]] * len(samples),
                completions=[[{"role": "assistant", "content": s}] for s in samples],
                item=[json.dumps(item)] * len(samples),
                log_metric=metrics.__setitem__,
            )
            served = [graders.run(grader=grader, model_sample=s, item=item).reward for s in samples]
            assert trained == served, grader["name"]
            if grader is raises:  # "Lyon" raised: scored 0, counted, the batch went on
                assert trained[2] == 0.0 and trained[0] == 0.5
                assert metrics["rewards/picky/errors"] == 0.25 and reward.errors == 1
            if grader is multi:
                assert metrics["rewards/mixed/exact"] == 0.25
    finally:
        server.stop()
