"""Giving up on an endpoint that does not answer: a circuit breaker shared per backend.

Retries are right for a connection that fails now and then; they are wrong for a server
that is down or an address that is wrong, where every call of a batch would wait out
its own backoff and fail the same way. The breaker watches every call to one backend
(it lives on the backend's ``Limiter``, which every call passes) and trips when

- one call failed to connect ``threshold`` times in a row and no call to this backend
  got an answer meanwhile (with the default policy that is about 3.5 s of backoff:
  long enough to ride out a server that is still starting), or
- a call ran out of retries on a connection failure and the last ``threshold`` calls
  to connect all failed, with no answer in between (for ``max_retries`` below
  ``threshold - 1``, down to none at all).

An answer is any response from the server, an error status included: a 500 proves the
address is right. Once tripped, every call fails at once with
``EndpointUnreachableError`` for ``cooldown_s``; after that calls go through again, and
the first connection failure trips it anew while the first answer closes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import APIConnectionError, ConfigurationError, EndpointUnreachableError

__all__ = ["CallRecord", "ConnectionBreaker"]


@dataclass(slots=True)
class CallRecord:
    """One call's run of connection failures, kept by the engine while it retries."""

    failures: int = 0
    answers_before: int = 0
    """The breaker's answer count when this call's run of failures began."""


class ConnectionBreaker:
    """Trips after consecutive connection failures with no answer in between."""

    def __init__(self, threshold: int = 4, cooldown_s: float = 30.0) -> None:
        if not isinstance(threshold, int) or threshold < 1:
            raise ConfigurationError(f"threshold must be a positive integer, got {threshold!r}")
        if cooldown_s < 0:
            raise ConfigurationError(f"cooldown_s must be >= 0 seconds, got {cooldown_s!r}")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.answers = 0
        """Responses received so far (a generation count: unchanged means none came)."""
        self.streak = 0
        """Connection failures since the last answer, over all calls."""
        self._tripped: EndpointUnreachableError | None = None
        self._tripped_at = 0.0
        self._probation = False

    @property
    def tripped(self) -> bool:
        """Calls fail at once right now."""
        return self._tripped is not None and (time.monotonic() - self._tripped_at < self.cooldown_s)

    def check(self) -> None:
        """Raise ``EndpointUnreachableError`` while tripped; called before each attempt."""
        if self._tripped is not None:
            if self.tripped:
                # A fresh error per call: one instance raised in many tasks would pile
                # their tracebacks onto each other.
                raise EndpointUnreachableError(str(self._tripped)) from self._tripped.__cause__
            self._tripped = None
            self._probation = True  # the next connection failure trips it again

    def answered(self, record: CallRecord | None = None) -> None:
        """The server responded (with anything, an error status included)."""
        self.answers += 1
        self.streak = 0
        self._probation = False
        if record is not None:
            record.failures = 0

    def failed(
        self, error: APIConnectionError, record: CallRecord, *, last_attempt: bool
    ) -> EndpointUnreachableError | None:
        """A call could not connect. Returns the error to raise instead if this trips
        the breaker (it then stays tripped for ``cooldown_s``), else None."""
        if record.failures == 0:
            record.answers_before = self.answers
        record.failures += 1
        self.streak += 1
        nothing_answered = record.answers_before == self.answers
        if self._probation or (
            nothing_answered
            and (
                record.failures >= self.threshold
                or (last_attempt and self.streak >= self.threshold)
            )
        ):
            return self.trip(error)
        return None

    def trip(self, error: APIConnectionError) -> EndpointUnreachableError:
        tripped = EndpointUnreachableError(
            f"gave up on the endpoint: {self.streak} connection attempts failed in a row "
            f"and nothing answered in between; the server is down or its address is wrong. "
            f"Last error: {error}"
        )
        tripped.__cause__ = error
        self._tripped = tripped
        self._tripped_at = time.monotonic()
        self._probation = False
        return tripped
