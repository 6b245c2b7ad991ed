"""OpenAI-shaped error bodies: `{"error": {"message", "type", "param", "code"}}`.

Every error gemlora's endpoints return (the engine's routing middleware and the gateway) uses
this one shape, so clients' `openai` exceptions carry the same fields whichever part refused.
"""

from __future__ import annotations

from http import HTTPStatus

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
