"""Every error sotflow raises, in one tree.

    SotflowError
    ├── ConfigurationError          bad arguments, missing API key, missing extra
    ├── GraphError                  a strategy built a graph that cannot run
    ├── BudgetExceededError         the run's token budget is spent
    ├── DeadlineExceededError       the run's deadline passed (also a TimeoutError)
    ├── NoAnswerError               samples came back, but none could be used as the answer
    └── BackendError                one model call failed
        ├── APIConnectionError      could not connect, or the connection broke
        │   ├── StreamInterruptedError   a stream ended before it was complete
        │   └── EndpointUnreachableError calls in a row could not connect: given up
        ├── APITimeoutError         one attempt took longer than its timeout
        ├── MalformedResponseError  the server answered, but not with a valid completion
        └── ProviderError           the server answered with an error status
            ├── BadRequestError     400, 404, 409, 422: fix the request
            ├── AuthenticationError 401, 403: fix the key or its permissions
            ├── RateLimitError      429: slow down (carries retry_after)
            │   └── QuotaExceededError   429 insufficient_quota: add credit
            └── ServerError         5xx: the provider failed

Each ``BackendError`` says whether retrying can help (``retryable``) and how long the
server asked us to wait (``retry_after``, seconds). Errors from foreign libraries are
mapped into this tree at the backend boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BackendError",
    "BadRequestError",
    "BudgetExceededError",
    "ConfigurationError",
    "DeadlineExceededError",
    "EndpointUnreachableError",
    "GraphError",
    "MalformedResponseError",
    "NoAnswerError",
    "ProviderError",
    "QuotaExceededError",
    "RateLimitError",
    "ServerError",
    "SotflowError",
    "StreamInterruptedError",
    "error_from_status",
]


class SotflowError(Exception):
    """Base class of every error sotflow raises."""


class ConfigurationError(SotflowError, ValueError):
    """The arguments or the environment are wrong; the message says what to change."""


class GraphError(SotflowError):
    """A strategy built a graph that cannot run (a missing input, a duplicate node id)."""


class BudgetExceededError(SotflowError):
    """The run's token budget is spent; no new model call is started."""

    def __init__(self, message: str, *, budget: int, used: int) -> None:
        super().__init__(message)
        self.budget = budget
        self.used = used


class DeadlineExceededError(SotflowError, TimeoutError):
    """The whole run took longer than its deadline; everything in flight was cancelled."""


class NoAnswerError(SotflowError):
    """A sampling strategy ran, but no sample was usable as the answer.

    Raised when a verifier accepted none of the samples, or when no sample had a final
    answer that could be extracted. ``details`` keeps what was tried (texts, verdicts),
    so nothing is lost.
    """

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class BackendError(SotflowError):
    """One model call failed."""

    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class APIConnectionError(BackendError):
    """Could not reach the server, or the connection broke mid-response."""

    retryable = True


class StreamInterruptedError(APIConnectionError):
    """A streamed response stopped before its end marker."""


class EndpointUnreachableError(APIConnectionError):
    """Several attempts in a row could not connect and nothing answered in between: the
    server is down or its address is wrong. Calls fail at once instead of each waiting
    out its own retries (see ``sotflow.breaker``)."""

    retryable = False


class APITimeoutError(BackendError, TimeoutError):
    """One attempt ran past its timeout."""

    retryable = True


class MalformedResponseError(BackendError):
    """The server sent something that is not a valid completion (bad JSON, missing fields)."""

    retryable = True


class ProviderError(BackendError):
    """The server answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status_code = status_code
        self.code = code
        if retryable is not None:
            # The server's x-should-retry header overrides what the status implies.
            self.retryable = retryable


class BadRequestError(ProviderError):
    """The request itself is wrong (400, 404, 409 conflicts aside, 422); retrying cannot help."""


class AuthenticationError(ProviderError):
    """The API key is missing, wrong, or lacks permission (401, 403)."""


class RateLimitError(ProviderError):
    """Too many requests or tokens (429); ``retry_after`` says how long the server asked for."""

    retryable = True


class QuotaExceededError(RateLimitError):
    """The account has no quota left (429 ``insufficient_quota``); waiting will not help."""

    retryable = False


class ServerError(ProviderError):
    """The provider failed (5xx)."""

    retryable = True


class _RetryableProviderError(ProviderError):
    retryable = True


def error_from_status(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    retry_after: float | None = None,
    should_retry: bool | None = None,
) -> ProviderError:
    """Build the right ``ProviderError`` for an HTTP error status.

    408 and 409 are transient (request timeout, conflicting concurrent request) and are
    retried; the other 4xx describe a request that will fail again the same way.
    """
    kwargs = {"status_code": status_code, "code": code, "retry_after": retry_after}
    exc: ProviderError
    if status_code in (401, 403):
        exc = AuthenticationError(message, **kwargs)
    elif status_code == 429:
        if code == "insufficient_quota":
            exc = QuotaExceededError(message, **kwargs)
        else:
            exc = RateLimitError(message, **kwargs)
    elif status_code in (408, 409):
        exc = _RetryableProviderError(message, **kwargs)
    elif status_code >= 500:
        exc = ServerError(message, **kwargs)
    elif 400 <= status_code < 500:
        exc = BadRequestError(message, **kwargs)
    else:
        exc = ProviderError(message, **kwargs)
    # x-should-retry may force or forbid a retry, but never revives an exhausted quota.
    if should_retry is not None and not isinstance(exc, QuotaExceededError):
        exc.retryable = should_retry
    return exc
