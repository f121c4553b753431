"""Every failure as OpenAI's error shape: ``{"error": {message, type, param, code}}``.

The status says whose fault it is. The client's request: 400 (a field, named in
``param``), 401 (the proxy's key), 404 (a model or a path), 405, 413. The upstream's
answer to a valid request passes through as its status (400, 404, 422, 429 with its
Retry-After) once retries are spent; its failures become 502, its slowness 504.
An upstream that refuses the proxy's own key is the operator's problem, not the
client's: 502, never 401. Messages pass through a redactor, so no key the server
knows is ever repeated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from ..errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BackendError,
    BudgetExceededError,
    ConfigurationError,
    DeadlineExceededError,
    MalformedResponseError,
    NoAnswerError,
    ProviderError,
)
from .catalog import ModelNotFound
from .parse import BadRequest

__all__ = ["Failure", "Redactor", "error_response", "failure_of"]


class Redactor:
    """Replaces every secret the server holds (its clients' keys, the upstream's)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


class Failure:
    """An error response to be: status, OpenAI's error fields, extra headers."""

    __slots__ = ("code", "headers", "kind", "message", "param", "status")

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(
            self.body(), status=self.status, headers={**self.headers, **(headers or {})}
        )


def error_response(
    status: int, message: str, kind: str, code: str | None = None, param: str | None = None
) -> web.Response:
    return Failure(status, message, kind, code, param).response()


_HTTP_KINDS = {
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def http_failure(exc: web.HTTPException, max_body: int | None = None) -> Failure:
    """aiohttp's own refusals (no route, wrong method, a body too large) in our shape."""
    kind, code = _HTTP_KINDS.get(exc.status, ("invalid_request_error", None))
    message = exc.text or exc.reason
    if exc.status == 404:
        message = "no such endpoint; this server has POST /v1/chat/completions and GET /v1/models"
    elif exc.status == 405:
        message = f"this endpoint does not take that method ({exc.reason})"
    elif exc.status == 413:
        message = "the request body is too large"
        if max_body:
            message += f" (at most {max_body} bytes); send a shorter conversation"
    return Failure(exc.status, message, kind, code)


def failure_of(exc: BaseException, redact: Redactor) -> Failure:
    """The response for an exception of a run or of the request's checks."""
    message = redact(str(exc) or type(exc).__name__)
    if isinstance(exc, BadRequest):
        return Failure(exc.status, message, "invalid_request_error", None, exc.param)
    if isinstance(exc, ModelNotFound):
        return Failure(404, message, "invalid_request_error", "model_not_found", "model")
    if isinstance(exc, AuthenticationError):
        return Failure(
            502,
            f"the upstream refused this server's credentials: {message}",
            "upstream_error",
            "upstream_authentication",
        )
    if isinstance(exc, ProviderError):
        status = exc.status_code
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if status >= 500 or status in (408, 409):
            return Failure(
                502, message, "upstream_error", exc.code or "upstream_error", None, headers
            )
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        return Failure(status, message, kind, exc.code, None, headers)
    if isinstance(exc, DeadlineExceededError):
        return Failure(504, message, "timeout_error", "request_timeout")
    if isinstance(exc, APITimeoutError):
        return Failure(504, message, "timeout_error", "upstream_timeout")
    if isinstance(exc, APIConnectionError | MalformedResponseError):
        return Failure(502, message, "upstream_error", "upstream_unavailable")
    if isinstance(exc, BudgetExceededError):
        return Failure(400, message, "invalid_request_error", "budget_exceeded", "sotflow")
    if isinstance(exc, NoAnswerError):
        return Failure(422, message, "invalid_request_error", "no_answer")
    if isinstance(exc, ConfigurationError):
        return Failure(400, message, "invalid_request_error")
    if isinstance(exc, BackendError):
        # The model itself failed on this request (a local model's row, say).
        return Failure(500, message, "server_error", "model_error")
    name = type(exc).__name__
    return Failure(500, f"internal error: {name}: {message}", "server_error", name)
