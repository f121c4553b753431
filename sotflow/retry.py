"""The one retry layer: which failures are retried and how long to wait between tries.

Retried: connection errors, streams that broke midway, malformed or truncated
responses, attempt timeouts, 408, 409, 429 and 5xx, unless the server's
``x-should-retry: false`` forbids it (``x-should-retry: true`` forces a retry). Never
retried: 400, 401, 403, 404, 422, and a 429 whose code is ``insufficient_quota``.

The wait is what the server asked for (``retry-after-ms``, then ``retry-after`` in
seconds or as an HTTP date), otherwise exponential backoff with jitter; either way
capped at ``max_wait_s``. The jitter grows with the backoff (``spread``): calls that
failed together (SoT's points, cut off at once by a server that ends running streams
when a new request arrives) come back spread over a window as wide as the wait itself,
not in lockstep to collide again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import tenacity
from tenacity.wait import wait_base

from .errors import BackendError, ConfigurationError

__all__ = ["RetryPolicy", "is_retryable"]


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, BackendError) and exc.retryable


class _ServerAskedOrBackoff(wait_base):
    """Honour the server's Retry-After when it gave one; back off exponentially if not."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._cap = policy.max_wait_s
        self._initial = policy.initial_wait_s
        self._base = policy.exp_base
        self._jitter = policy.jitter_s
        self._spread = policy.spread

    def _backoff(self, attempt: int) -> float:
        # initial * base^(attempt-1), stretched by up to `spread` of itself, plus up to
        # jitter_s of noise. Written out rather than taken from tenacity, whose
        # parameter names changed between supported versions.
        try:
            wait = self._initial * self._base ** (attempt - 1)
        except OverflowError:
            wait = math.inf
        if self._spread and math.isfinite(wait):
            wait *= 1.0 + random.uniform(0, self._spread)
        return wait + random.uniform(0, self._jitter)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            return max(0.0, min(float(asked), self._cap))
        return max(0.0, min(self._backoff(retry_state.attempt_number), self._cap))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 4
    """Retries after the first attempt (0 turns retrying off)."""
    initial_wait_s: float = 0.5
    max_wait_s: float = 30.0
    """Cap on any single wait, a server's Retry-After included."""
    exp_base: float = 2.0
    jitter_s: float = 0.5
    """Up to this many seconds of noise added to every backoff wait."""
    spread: float = 1.0
    """Each backoff wait is also stretched by a random factor between 1 and 1 + spread."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_wait_s < 0 or self.initial_wait_s < 0 or self.jitter_s < 0:
            raise ConfigurationError("retry waits must be >= 0")
        if self.spread < 0:
            raise ConfigurationError(f"spread must be >= 0, got {self.spread}")

    def retrying(
        self, before_sleep: Callable[[tenacity.RetryCallState], Awaitable[None] | None] | None
    ) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=_ServerAskedOrBackoff(self),
            retry=tenacity.retry_if_exception(is_retryable),
            sleep=anyio.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
