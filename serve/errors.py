"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`.

Every error gemlora's endpoints return (the engine's routing middleware, the gateway and its
jobs API) uses this one shape, so clients' `openai` exceptions carry the same fields whichever
part refused. `GatewayError` is a refusal of the gateway's own endpoints (chat, files, jobs);
`validation_error` turns a pydantic error into one that names the offending field
(`messages[0].role`).
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse
from pydantic import ValidationError

# The `type` OpenAI uses for each status class.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict:
    """The JSON body of an OpenAI error response."""
    error_type = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "error": {
            "message": message,
            "type": error_type,
            "param": param,
            "code": code or HTTPStatus(status).phrase.lower().replace(" ", "_"),
        }
    }


class GatewayError(Exception):
    """A request the gateway refuses: becomes `{"error": {...}}` with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response(self, request_id: str | None = None) -> JSONResponse:
        headers = dict(self.headers)
        if request_id:
            headers["X-Request-Id"] = request_id
        body = error_body(self.status, self.message, param=self.param, code=self.code)
        return JSONResponse(body, status_code=self.status, headers=headers)


def field_path(location: tuple) -> str:
    """('messages', 0, 'content', 'list[ContentPart]', 1, 'text') -> 'messages[0].content[1].text'.

    pydantic puts the union member it tried (`str`, `list[...]`, `function-after[...]`) into
    the location; those are not fields and are left out."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _is_union_member(part):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def _is_union_member(part: str) -> bool:
    return (
        "[" in part
        or part.startswith("constrained-")
        or part in {"str", "int", "float", "bool", "none", "dict", "list"}
    )


def validation_error(error: ValidationError) -> GatewayError:
    """The most specific problem of a failed validation, naming its field."""
    problems = error.errors(include_url=False)
    # With a union (string or list of parts), the deepest location is the branch that matched
    # the input's shape, e.g. the bad part of a list rather than "not a string".
    problem = max(problems, key=lambda p: len(p["loc"]))
    param = field_path(problem["loc"]) or None
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        message = "unknown field (see the gateway's request schema)"
    elif problem["type"] == "missing":
        message = "required field is missing"
    return GatewayError(
        400, f"{param}: {message}" if param else message, param=param, code="invalid_value"
    )


REGISTRY_RETRY_AFTER_S = 5  # MLflow outages are waited out by retrying; a client should too


def registry_unavailable(message: str) -> GatewayError:
    """503 `registry_unavailable` (MLflow does not answer), with `Retry-After` like every 503."""
    headers = {"Retry-After": str(REGISTRY_RETRY_AFTER_S)}
    return GatewayError(503, message, code="registry_unavailable", headers=headers)
