"""OpenAI's grader endpoints on the gateway, so that `client.fine_tuning.alpha.graders.run` and
`.validate` work unchanged:

    POST /v1/fine_tuning/alpha/graders/validate  {grader}                      -> {grader}
    POST /v1/fine_tuning/alpha/graders/run       {grader, model_sample, item}  -> GraderRunResponse

The graders are `gemlora.evals`' (the ones evaluation and reinforcement use). A score_model or
label_model grader's judge is any model this gateway serves (the base, an adapter, a version),
under the caller's key: a judge the key may not use is a 403, as a chat request would be.
`python` graders run callers' code, so they are refused unless `gateway.graders.python` is on.
A grader that is malformed is a 400 naming the field; a sample it cannot score is OpenAI's
answer for that: reward 0 with the reason in `metadata.errors`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from gemlora.evals import (
    GraderError,
    GradeResult,
    GraderModel,
    LabelModelGrader,
    PythonGrader,
    PythonLimits,
    ScoreModelGrader,
    grade_or_failure,
    validate_grader,
    walk,
)
from gemlora.serve.auth import ApiKey
from gemlora.serve.errors import GatewayError, validation_error

VALIDATE_PATH = "/v1/fine_tuning/alpha/graders/validate"
RUN_PATH = "/v1/fine_tuning/alpha/graders/run"


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grader: dict[str, Any]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grader: dict[str, Any]
    model_sample: str
    item: Any = None


class GradersApi:
    """The two routes, on the gateway that owns the keys, the policy and the engine."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.policy = gateway.config.graders

    async def validate(self, request: Request) -> JSONResponse:
        try:
            self._caller(request)
            body = await self._body(request, ValidateRequest)
            grader = self._checked_grader(body.grader)
        except GatewayError as error:
            return error.response()
        return JSONResponse({"grader": grader.model_dump(mode="json", exclude_none=True)})

    async def run(self, request: Request) -> JSONResponse:
        try:
            key = self._caller(request)
            body = await self._body(request, RunRequest)
            grader = self._checked_grader(body.grader)
            self._check_judges(key, grader)
            result = await asyncio.to_thread(self._grade, grader, body)
        except GatewayError as error:
            return error.response()
        return JSONResponse(result.model_dump(mode="json"))

    # --- steps --------------------------------------------------------------------------------

    def _caller(self, request: Request) -> ApiKey:
        auth = self.gateway.auth
        key = auth.authenticate(request.headers.get("authorization"))
        auth.check_rate(key)
        return key

    async def _body(self, request: Request, model: type[BaseModel]):
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as error:
            raise validation_error(error) from None

    def _checked_grader(self, data: dict[str, Any]) -> GraderModel:
        try:
            grader = validate_grader(data)
        except GraderError as error:
            param = f"grader.{error.param}" if error.param else "grader"
            raise GatewayError(400, str(error), param=param, code="invalid_grader") from None
        if not self.policy.python:
            for path, part in walk(grader):
                if isinstance(part, PythonGrader):
                    raise GatewayError(
                        400,
                        "python graders run callers' code and are off on this gateway "
                        "(its operator can turn them on: gateway.graders.python: true)",
                        param=f"{path}.type",
                        code="python_graders_disabled",
                    )
        return grader

    def _check_judges(self, key: ApiKey, grader: GraderModel) -> None:
        """Each judge model is served here and the key may use it, as for a chat request."""
        for path, part in walk(grader):
            if isinstance(part, ScoreModelGrader | LabelModelGrader):
                try:
                    name = self.gateway.registry_name(part.model)
                    self.gateway.auth.check_model(key, part.model, name)
                except GatewayError as error:
                    error.param = f"{path}.model"
                    raise

    def _grade(self, grader: GraderModel, body: RunRequest) -> GradeResult:
        sample = {"output_text": body.model_sample}
        item = body.item if isinstance(body.item, dict) else {}
        limits = PythonLimits(
            timeout_s=self.policy.python_timeout_s,
            memory_bytes=self.policy.python_memory_mib * 2**20,
        )
        try:
            return grade_or_failure(grader, sample, item, judge=self._judge, python_limits=limits)
        except GraderError as error:  # the request's own item lacks a field the grader reads
            raise GatewayError(400, str(error), param="item", code="invalid_item") from None

    def _judge(self, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> str:
        """One chat completion from the engine behind this gateway (its internal token)."""
        engine = self.gateway.engine
        headers = {}
        if token := engine.token():
            headers["Authorization"] = f"Bearer {token}"
        body = {"model": model, "messages": messages, **sampling}
        try:
            response = httpx.post(
                f"{engine.engine_url}/v1/chat/completions",
                json=body,
                headers=headers,
                timeout=self.policy.judge_timeout_s,
            )
        except httpx.HTTPError as error:
            raise GraderError(
                f"the judge {model!r} did not answer: {error}", "model_grader_server_error"
            ) from None
        if response.status_code != 200:
            raise GraderError(
                f"the judge {model!r} answered {response.status_code}: {response.text[:300]}",
                "model_grader_server_error",
            )
        return response.json()["choices"][0]["message"]["content"] or ""
