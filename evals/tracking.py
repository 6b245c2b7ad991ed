"""An eval in MLflow, as GenAI evaluation: what the MLflow UI shows and compares.

One parent run per eval (its spec, the comparison table, the whole result as JSON), and under
it one run per model recorded by `mlflow.genai.evaluate`: a trace per item (the prompt, the
answer) with one assessment per grader, and `<grader>/mean` metrics. The grades are gemlora's
graders' (computed once, by `run_eval`); the scorers only hand them to MLflow. The model runs
also carry the paired comparison with the baseline (`<grader>/difference`, `/low`, `/high`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

from gemlora.evals.run import EvalResult, ModelResult
from gemlora.evals.spec import EvalSpec


def tracking_uri(spec: EvalSpec) -> str | None:
    return spec.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")


def record_eval(spec: EvalSpec, items: list[dict[str, Any]], result: EvalResult) -> EvalResult:
    """Record `result` under the spec's experiment; returns it with its run id and UI link."""
    import mlflow

    uri = tracking_uri(spec)
    if uri is None:
        return result
    # Inside a training run (the eval gate), the eval is a child of that run.
    inside = mlflow.active_run()
    if inside is None:
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.set_experiment(spec.tracking.experiment).experiment_id
    else:
        uri, experiment_id = mlflow.get_tracking_uri(), inside.info.experiment_id
    with mlflow.start_run(run_name=f"eval: {spec.name}", nested=inside is not None) as parent:
        mlflow.log_params(
            {
                "eval": spec.name,
                "items": result.items,
                "models": ", ".join(spec.models),
                "baseline": result.baseline,
                "graders": ", ".join(g.name for g in spec.grader_models()),
                "endpoint": spec.endpoint.url,
            }
        )
        mlflow.set_tags({"gemlora.kind": "eval"})
        for model in result.models:
            _record_model(spec, items, result, model)
        mlflow.log_dict(spec.model_dump(mode="json"), "spec.json")
        mlflow.log_dict(json.loads(result.model_dump_json()), "result.json")
    url = f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{parent.info.run_id}"
    return result.model_copy(update={"mlflow_run_id": parent.info.run_id, "mlflow_url": url})


def _record_model(
    spec: EvalSpec, items: list[dict[str, Any]], result: EvalResult, model: ModelResult
) -> None:
    import mlflow

    rows = [
        {
            "inputs": {"item": index, "messages": _readable(messages_of(spec, item))},
            "outputs": answer.text if answer.text is not None else f"(no answer: {answer.error})",
            **({"expectations": {"reference": item["reference"]}} if "reference" in item else {}),
        }
        for index, (item, answer) in enumerate(zip(items, model.answers, strict=True))
    ]
    scorers = [_recorded_scorer(name, scores) for name, scores in model.scores.items()]
    with mlflow.start_run(run_name=model.model, nested=True):
        mlflow.log_params({"model": model.model, "baseline": result.baseline})
        # MLflow prints its own summary: to stderr, so that `gemlora eval --json` stays JSON
        with contextlib.redirect_stdout(sys.stderr):
            mlflow.genai.evaluate(data=rows, scorers=scorers)
        for comparison in result.comparisons:
            if comparison.model != model.model:
                continue
            mlflow.log_metrics(
                {
                    f"{comparison.grader}/difference": comparison.difference,
                    f"{comparison.grader}/low": comparison.low,
                    f"{comparison.grader}/high": comparison.high,
                    f"{comparison.grader}/wins": comparison.wins,
                    f"{comparison.grader}/losses": comparison.losses,
                }
            )


def _recorded_scorer(name: str, scores: list[float | None]):
    """A scorer that hands MLflow the grade gemlora already computed for the row's item."""
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    @scorer(name=name)
    def recorded(inputs: dict[str, Any]) -> Feedback:
        score = scores[inputs["item"]]
        if score is None:
            return Feedback(name=name, error="not graded (see the eval's result.json)")
        return Feedback(name=name, value=score)

    return recorded


def messages_of(spec: EvalSpec, item: dict[str, Any]) -> list[dict[str, Any]]:
    from gemlora.evals.items import prompt_messages

    return prompt_messages(spec, item)


def _readable(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt for the trace, images as a marker: traces stay small and readable."""
    readable = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [
                {"type": "text", "text": "[image]"} if part.get("type") == "image_url" else part
                for part in content
            ]
        readable.append(message | {"content": content})
    return readable
