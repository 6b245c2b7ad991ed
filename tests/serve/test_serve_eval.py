"""`gemlora eval` on the 270M: a taught adapter against the base, through the real gateway and
engine, graded by a string check, a similarity metric and a judge that is another served
adapter; the comparison says the adapter is better with an interval above zero, and MLflow holds
it as GenAI evaluation (a trace per item and model, an assessment per grader), read back here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import httpx
import mlflow
import pytest
import yaml
from serve_helpers import BASES, HELD_OUT, QUESTIONS, REPLY_A, REPLY_B

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "gateway"))
from gateway_helpers import GatewayServer, free_port

from gemlora.serve.gateway import GatewayConfig, GatewaySettings

pytestmark = pytest.mark.engine

BASE = BASES[0]


@pytest.fixture(scope="module")
def gateway(engines, registry):
    settings = GatewaySettings(
        GatewayConfig(auth=False, models_cache_s=0),
        engine_url=engines.get(BASE).url,
        base=BASE,
        registry=registry,
    )
    server = GatewayServer(settings, free_port())
    yield server
    server.stop()


def eval_spec(gateway, names, mlflow_server, tmp_path) -> dict:
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(json.dumps({"question": q, "reference": REPLY_A}) + "\n" for q in QUESTIONS)
        + "".join(json.dumps({"question": q, "reference": REPLY_A}) + "\n" for q in HELD_OUT)
    )
    pirate, robot = f"{names.a}@champion", f"{names.b}@candidate"
    return {
        "name": "pirate-vs-base",
        "endpoint": {"url": f"{gateway.url}/v1", "api_key_env": None},
        "items": {"file": str(items)},
        "messages": [{"role": "user", "content": "{{item.question}}"}],
        "models": [BASE, pirate],
        "sampling": {"max_tokens": 24, "temperature": 0},
        "graders": [
            {
                "type": "string_check",
                "name": "signed",
                "input": "{{sample.output_text}}",
                "reference": "Captain Gem",
                "operation": "like",
            },
            {
                "type": "text_similarity",
                "name": "close",
                "input": "{{sample.output_text}}",
                "reference": "{{item.reference}}",
                "evaluation_metric": "rouge_l",
            },
            {  # the robot adapter answers anything with REPLY_B: a judge we can predict
                "type": "label_model",
                "name": "robot_judge",
                "model": robot,
                "input": [{"role": "user", "content": "{{sample.output_text}}"}],
                "labels": [REPLY_A, REPLY_B],
                "passing_labels": [REPLY_B],
            },
        ],
        "bootstrap": {"samples": 1000},
        "tracking": {"tracking_uri": mlflow_server.url, "experiment": f"eval-{uuid.uuid4().hex}"},
    }


def test_an_eval_compares_the_adapter_with_the_base_and_mlflow_holds_it(
    gateway, names, mlflow_server, tmp_path
):
    spec = eval_spec(gateway, names[BASE], mlflow_server, tmp_path)
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(spec))
    finished = subprocess.run(
        [sys.executable, "-m", "gemlora.cli", "eval", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(finished.stdout)
    pirate = spec["models"][1]
    means = {m["model"]: m["scores"] for m in result["models"]}
    assert means[pirate]["signed"] == [1.0] * 10  # every answer signed, greedy
    assert means[BASE]["signed"] == [0.0] * 10
    assert means[pirate]["robot_judge"] == [1.0] * 10  # the served judge answered every item
    (signed,) = [c for c in result["comparisons"] if c["grader"] == "signed"]
    assert signed["difference"] == 1.0 and signed["low"] > 0 and signed["wins"] == 10
    (close,) = [c for c in result["comparisons"] if c["grader"] == "close"]
    assert close["low"] > 0.5  # the pirate reproduces its reference; the base does not

    mlflow.set_tracking_uri(mlflow_server.url)
    runs = mlflow.search_runs(
        experiment_names=[spec["tracking"]["experiment"]], output_format="list"
    )
    parent = next(r for r in runs if r.info.run_id == result["mlflow_run_id"])
    assert parent.data.params["models"] == f"{BASE}, {pirate}"
    children = {r.data.params.get("model"): r for r in runs if r is not parent}
    assert children[pirate].data.metrics["signed/mean"] == 1.0
    assert children[BASE].data.metrics["signed/mean"] == 0.0
    assert children[pirate].data.metrics["signed/low"] > 0
    run = children[pirate].info
    traces = mlflow.search_traces(
        locations=[run.experiment_id], run_id=run.run_id, return_type="list"
    )
    assert len(traces) == 10
    for trace in traces:
        grades = {a.name: a.value for a in trace.info.assessments if a.name != "reference"}
        assert grades["signed"] == 1.0 and grades["robot_judge"] == 1.0
        assert 0 < grades["close"] <= 1


def gate_config(name: str, engine, mlflow_server, tmp_path):
    from gemlora.train import parse_config

    data = tmp_path / "held-out.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": REPLY_A},
                    ]
                }
            )
            + "\n"
            for q in QUESTIONS + HELD_OUT
        )
    )
    signed = {
        "type": "string_check",
        "name": "signed",
        "input": "{{sample.output_text}}",
        "reference": "Captain Gem",
        "operation": "like",
    }
    close = {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "evaluation_metric": "fuzzy_match",
    }
    return parse_config(
        {
            "base": {"model": BASE},
            "data": {"train_file": str(data), "eval_file": str(data)},
            "eval": {"graders": [signed, close], "max_new_tokens": 24},
            "output": {
                "name": name,
                "tracking_uri": mlflow_server.url,
                "dir": str(tmp_path / "run"),
                "verify": {"engine_url": engine.url},
                "promote_if": {
                    "gate": {"grader": "signed", "samples": 1000},
                    "verification": "ignore",  # these versions are not trained by a run here
                },
            },
        }
    )


def test_the_gate_promotes_a_better_version_and_refuses_one_no_better(
    engines, registry, taught, mlflow_server, gateway, tmp_path
):
    from gemlora.adapters import AdapterMetadata
    from gemlora.adapters.eval_record import describe_eval
    from gemlora.data import read_dataset
    from gemlora.run_events import EvalGate
    from gemlora.rundir import ProgressLog
    from gemlora.train.eval_gate import EVAL_TAG, run_gate

    engine = engines.get(BASE)
    name = f"gated-{uuid.uuid4().hex[:8]}"
    config = gate_config(name, engine, mlflow_server, tmp_path)
    held_out = read_dataset(config.data.eval_file).examples
    progress = ProgressLog(tmp_path / "progress.jsonl")
    metadata = AdapterMetadata(base=BASE)

    # the pirate against the base (no champion yet): signed 10/10 against 0/10
    first = registry.register(taught[BASE].a, name, metadata)
    better = run_gate(config, registry, first, held_out, progress)
    assert better.passed, better.reason
    assert better.against == BASE and better.deciding().low > 0
    assert registry.show(name).aliases["champion"] == first
    tag = json.loads(registry.show(name).versions[0].tags[EVAL_TAG])
    assert tag["passed"] and tag["against"] == BASE and tag["interval"][0] > 0

    # the same weights again, against the champion: every difference 0, interval [0, 0]
    second = registry.register(taught[BASE].a, name, metadata)
    same = run_gate(config, registry, second, held_out, progress)
    assert not same.passed and "not above 0" in same.reason
    assert same.against == f"{name}/{first}"
    assert registry.show(name).aliases["champion"] == first  # it stays
    # what `adapters show` and /v1/models say of each version
    tags = {v.version: v.tags for v in registry.show(name).versions}
    assert describe_eval(tags[first]).startswith(f"passed vs {BASE} (signed +1.00")
    assert describe_eval(tags[second]).startswith(f"not passed vs {name}/{first}")
    cards = {m["id"]: m for m in httpx.get(f"{gateway.url}/v1/models").json()["data"]}
    assert cards[f"{name}/{first}"]["eval"]["passed"] is True
    assert cards[f"{name}/{second}"]["eval"]["passed"] is False
    events = [e for e in progress.read() if isinstance(e, EvalGate)]
    assert [e.passed for e in events] == [True, False]
    assert "not passed" in events[1].describe().message
