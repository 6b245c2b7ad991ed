"""Run an eval: every model answers every item through the endpoint at once (the engine batches
them), every answer is graded, each model is compared with the baseline.

    spec = load_eval_spec("configs/eval/style.yaml")
    result = run_eval(spec)          # then record_eval(spec, items, result) for MLflow
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from statistics import fmean
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, Field
from tqdm import tqdm

from gemlora.engine_token import engine_token
from gemlora.evals.errors import GraderError
from gemlora.evals.grading import grade
from gemlora.evals.items import load_items, prompt_messages
from gemlora.evals.spec import Endpoint, EvalSpec
from gemlora.evals.stats import Comparison, compare


class Answer(BaseModel):
    text: str | None  # None: the request failed (`error`)
    seconds: float
    error: str | None = None


class ModelResult(BaseModel):
    model: str
    answers: list[Answer]
    scores: dict[str, list[float | None]]  # grader -> per item; None: not graded
    grading_errors: dict[str, list[str]] = Field(default_factory=dict)

    def mean(self, grader: str) -> float | None:
        graded = [score for score in self.scores[grader] if score is not None]
        return fmean(graded) if graded else None


class EvalResult(BaseModel):
    name: str
    items: int
    baseline: str
    models: list[ModelResult]
    comparisons: list[Comparison]
    seconds: float
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None

    def of(self, model: str) -> ModelResult:
        return next(result for result in self.models if result.model == model)

    def comparison(self, model: str, grader: str) -> Comparison | None:
        found = (c for c in self.comparisons if c.model == model and c.grader == grader)
        return next(found, None)


def run_eval(spec: EvalSpec, items: list[dict[str, Any]] | None = None) -> EvalResult:
    started = time.monotonic()
    items = load_items(spec.items) if items is None else items
    prompts = [prompt_messages(spec, item) for item in items]
    answers = asyncio.run(generate_all(spec, prompts))
    results = [grade_model(spec, model, items, answers[model]) for model in spec.models]
    comparisons = compare_with_baseline(spec, results)
    return EvalResult(
        name=spec.name,
        items=len(items),
        baseline=spec.baseline,
        models=results,
        comparisons=comparisons,
        seconds=time.monotonic() - started,
    )


# --- answers -----------------------------------------------------------------------------------


def client_kwargs(endpoint: Endpoint) -> dict[str, Any]:
    """The endpoint's key: from `api_key_env`; else, for an engine on this host, its internal
    token (gemlora's own tools hold it; never sent to another host)."""
    env, url = endpoint.api_key_env, endpoint.url
    key = os.environ.get(env) if env else None
    if key is None and urlparse(url).hostname in ("127.0.0.1", "localhost", "::1"):
        key = engine_token(url)
    return {"base_url": url, "api_key": key or "none", "max_retries": 2, "timeout": 600}


async def generate_all(spec: EvalSpec, prompts: list[list[dict]]) -> dict[str, list[Answer]]:
    """Every (model, item) request, `spec.concurrency` in flight, models interleaved so that
    the engine batches them together."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(**client_kwargs(spec.endpoint))
    limit = asyncio.Semaphore(spec.concurrency)
    sampling = spec.sampling.model_dump(exclude_none=True)
    bar = tqdm(total=len(prompts) * len(spec.models), desc="answers", unit="req", leave=False)

    async def answer(model: str, messages: list[dict]) -> Answer:
        async with limit:
            started = time.monotonic()
            try:
                reply = await client.chat.completions.create(
                    model=model, messages=messages, **sampling
                )
                text = reply.choices[0].message.content or ""
                return Answer(text=text, seconds=time.monotonic() - started)
            except Exception as error:  # one failed request is reported, not the whole eval
                return Answer(text=None, seconds=time.monotonic() - started, error=str(error))
            finally:
                bar.update()

    order = [(model, index) for index in range(len(prompts)) for model in spec.models]
    try:
        replies = await asyncio.gather(*(answer(m, prompts[i]) for m, i in order))
    finally:
        bar.close()
        await client.close()
    answers: dict[str, list[Answer]] = {model: [] for model in spec.models}
    for (model, _), reply in zip(order, replies, strict=True):
        answers[model].append(reply)
    return answers


# --- grades ------------------------------------------------------------------------------------


def grade_model(
    spec: EvalSpec, model: str, items: list[dict[str, Any]], answers: list[Answer]
) -> ModelResult:
    """Each answer through each grader (threads: judges and python graders wait on others)."""
    graders = spec.grader_models()
    judge = endpoint_judge(spec.judge_endpoint or spec.endpoint)
    scores = {grader.name: [None] * len(items) for grader in graders}
    errors: dict[str, list[str]] = {}

    def one(index: int, grader) -> None:
        answer = answers[index]
        if answer.text is None:
            errors.setdefault(grader.name, []).append(f"item {index}: no answer ({answer.error})")
            return
        try:
            sample = {"output_text": answer.text}
            scores[grader.name][index] = grade(grader, sample, items[index], judge=judge).reward
        except GraderError as error:
            errors.setdefault(grader.name, []).append(f"item {index}: {error}")

    jobs = [(index, grader) for index in range(len(items)) for grader in graders]
    with ThreadPoolExecutor(max_workers=min(spec.concurrency, 8)) as pool:
        list(tqdm(pool.map(lambda job: one(*job), jobs), total=len(jobs), desc=model, leave=False))
    return ModelResult(model=model, answers=answers, scores=scores, grading_errors=errors)


def endpoint_judge(endpoint: Endpoint):
    """score_model/label_model judges: models `endpoint` serves (an eval's judge endpoint, by
    default its models' own, with the same key)."""
    from openai import OpenAI

    client = OpenAI(**client_kwargs(endpoint))

    def judge(model: str, messages: list[dict], sampling: dict) -> str:
        try:
            reply = client.chat.completions.create(model=model, messages=messages, **sampling)
        except Exception as error:
            raise GraderError(
                f"the judge {model!r} failed: {error}", "model_grader_server_error"
            ) from None
        return reply.choices[0].message.content or ""

    return judge


def compare_with_baseline(spec: EvalSpec, results: list[ModelResult]) -> list[Comparison]:
    baseline = next(result for result in results if result.model == spec.baseline)
    comparisons = []
    for result in results:
        if result is baseline:
            continue
        for grader, scores in result.scores.items():
            try:
                comparisons.append(
                    compare(
                        grader,
                        result.model,
                        baseline.model,
                        scores,
                        baseline.scores[grader],
                        samples=spec.bootstrap.samples,
                        confidence=spec.bootstrap.confidence,
                        seed=spec.bootstrap.seed,
                    )
                )
            except ValueError:
                continue  # nothing graded for both: the table says so through its means
    return comparisons
