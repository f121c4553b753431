"""The one retry layer: which errors retry, and how long the engine waits between tries."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import tenacity

from sotflow import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    Direct,
    Engine,
    MalformedResponseError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    Retrying,
    RetryPolicy,
    ScriptedBackend,
    ServerError,
    StreamInterruptedError,
)
from sotflow.backends.openai import parse_retry_after
from sotflow.errors import error_from_status
from sotflow.events import Event
from sotflow.retry import is_retryable

from .support import cancel_once

# -- status mapping ---------------------------------------------------------------------

# Leaked streams, tasks or connections show up as ResourceWarnings: fail on them.
pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


@pytest.mark.parametrize(
    ("status", "code", "cls", "retryable"),
    [
        (400, None, BadRequestError, False),
        (401, None, AuthenticationError, False),
        (403, None, AuthenticationError, False),
        (404, None, BadRequestError, False),
        (422, None, BadRequestError, False),
        (408, None, ProviderError, True),
        (409, None, ProviderError, True),
        (429, None, RateLimitError, True),
        (429, "rate_limit_exceeded", RateLimitError, True),
        (429, "insufficient_quota", QuotaExceededError, False),
        (500, None, ServerError, True),
        (502, None, ServerError, True),
        (503, None, ServerError, True),
        (529, None, ServerError, True),
    ],
)
def test_error_from_status(status: int, code: str | None, cls: type, retryable: bool) -> None:
    exc = error_from_status(status, "boom", code=code, retry_after=1.5)
    assert type(exc) is cls or (cls is ProviderError and isinstance(exc, ProviderError))
    assert exc.status_code == status
    assert exc.retryable is retryable
    assert is_retryable(exc) is retryable
    assert exc.retry_after == 1.5
    assert str(exc) == "boom"


def test_x_should_retry_overrides_the_status() -> None:
    assert error_from_status(400, "m", should_retry=True).retryable is True
    assert error_from_status(500, "m", should_retry=False).retryable is False
    assert error_from_status(429, "m", should_retry=False).retryable is False
    # An exhausted quota stays exhausted, whatever the header says.
    assert error_from_status(429, "m", code="insufficient_quota", should_retry=True).retryable is (
        False
    )
    # The override is per instance: the class default is untouched for the next error.
    assert error_from_status(500, "m").retryable is True
    assert error_from_status(400, "m").retryable is False


def test_transport_errors_are_retryable() -> None:
    for exc in (
        APIConnectionError("x"),
        StreamInterruptedError("x"),
        APITimeoutError("x"),
        MalformedResponseError("x"),
    ):
        assert is_retryable(exc)
    assert not is_retryable(ValueError("not ours"))
    assert isinstance(APITimeoutError("x"), TimeoutError)


# -- Retry-After parsing ------------------------------------------------------------------


def test_parse_retry_after_variants() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    # retry-after-ms is the more precise of the two and wins.
    assert parse_retry_after({"retry-after-ms": "100", "retry-after": "9"}) == 0.1
    # An unusable ms value falls back to the seconds header.
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "-4"}) == 0.0
    assert parse_retry_after({"retry-after": "whenever"}) is None


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    when = datetime.fromtimestamp(now, UTC) + timedelta(seconds=7)
    header = format_datetime(when, usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=now) == pytest.approx(7.0)
    past = format_datetime(datetime.fromtimestamp(now - 60, UTC), usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0


def test_parse_retry_after_is_case_insensitive_with_real_headers() -> None:
    headers = httpx.Headers({"Retry-After-Ms": "250"})
    assert parse_retry_after(headers) == 0.25


# -- the wait policy ---------------------------------------------------------------------


def _wait_for(policy: RetryPolicy, exc: BaseException, attempt: int) -> float:
    retrying = policy.retrying(None)
    state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return float(retrying.wait(state))


def test_wait_honours_retry_after_and_caps_it() -> None:
    policy = RetryPolicy(max_wait_s=5.0)
    assert _wait_for(policy, error_from_status(429, "m", retry_after=2.5), 1) == 2.5
    assert _wait_for(policy, error_from_status(429, "m", retry_after=120), 1) == 5.0
    assert _wait_for(policy, error_from_status(503, "m", retry_after=0.0), 3) == 0.0


def test_wait_backs_off_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(
        initial_wait_s=0.1, max_wait_s=1.0, exp_base=2.0, jitter_s=0.05, spread=0.0
    )
    exc = ServerError("m", status_code=500)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        waits = [_wait_for(policy, exc, attempt) for _ in range(50)]
        assert all(base <= w <= min(base + 0.05, 1.0) + 1e-9 for w in waits), (attempt, waits)
    jittery = {_wait_for(policy, exc, 1) for _ in range(20)}
    assert len(jittery) > 1, "jitter should vary the wait"


def test_the_jitter_grows_with_the_wait_so_siblings_do_not_retry_in_lockstep() -> None:
    # Calls that failed together (a server cutting off every running stream at once)
    # must come back spread over a window as wide as the backoff, not within jitter_s.
    policy = RetryPolicy(initial_wait_s=0.5, max_wait_s=60, jitter_s=0.0, spread=1.0)
    exc = ServerError("m", status_code=500)
    for attempt, base in [(1, 0.5), (3, 2.0)]:
        waits = [_wait_for(policy, exc, attempt) for _ in range(200)]
        assert all(base <= w <= 2 * base + 1e-9 for w in waits), (attempt, waits)
        assert max(waits) - min(waits) > 0.8 * base, (attempt, waits)
    with pytest.raises(ConfigurationError, match="spread"):
        RetryPolicy(spread=-1)


def test_policy_validation() -> None:
    with pytest.raises(ConfigurationError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ConfigurationError, match="waits"):
        RetryPolicy(max_wait_s=-1)
    with pytest.raises(ConfigurationError, match="max_retries"):
        Engine(ScriptedBackend(["x"]), max_retries=-2)


# -- the engine retrying through a scripted backend ---------------------------------------


async def _run(backend: ScriptedBackend, policy: RetryPolicy) -> tuple[str, list[Event], float]:
    events: list[Event] = []
    async with Engine(backend, retry=policy) as engine:
        start = time.monotonic()
        answer = await engine.run(Direct(), "q", on_event=events.append)
        elapsed = time.monotonic() - start
    return answer.text, events, elapsed


@pytest.mark.anyio
async def test_engine_waits_what_the_server_asked() -> None:
    backend = ScriptedBackend([error_from_status(429, "slow down", retry_after=0.4), "done"])
    text, events, elapsed = await _run(backend, RetryPolicy(max_wait_s=10))
    assert text == "done"
    assert backend.calls == 2
    retries = [e for e in events if isinstance(e, Retrying)]
    assert [r.wait_s for r in retries] == [0.4]
    assert retries[0].attempt == 1 and retries[0].error.type == "RateLimitError"
    assert elapsed >= 0.4


@pytest.mark.anyio
async def test_engine_caps_the_servers_wait() -> None:
    backend = ScriptedBackend([error_from_status(503, "busy", retry_after=3600), "done"])
    text, events, elapsed = await _run(backend, RetryPolicy(max_wait_s=0.2))
    assert text == "done"
    assert [e.wait_s for e in events if isinstance(e, Retrying)] == [0.2]
    assert 0.2 <= elapsed < 30


@pytest.mark.anyio
async def test_engine_backs_off_without_headers() -> None:
    fail = ServerError("down", status_code=500)
    backend = ScriptedBackend([fail, fail, fail, "done"])
    policy = RetryPolicy(initial_wait_s=0.05, max_wait_s=1, jitter_s=0, spread=0)
    text, events, elapsed = await _run(backend, policy)
    assert text == "done"
    retries = [e for e in events if isinstance(e, Retrying)]
    assert [r.wait_s for r in retries] == pytest.approx([0.05, 0.1, 0.2])
    assert [r.attempt for r in retries] == [1, 2, 3]
    assert elapsed >= 0.35


@pytest.mark.anyio
async def test_engine_gives_up_after_max_retries_with_the_last_error() -> None:
    backend = ScriptedBackend([ServerError(f"down {i}", status_code=500) for i in range(5)])
    policy = RetryPolicy(max_retries=2, initial_wait_s=0, jitter_s=0)
    async with Engine(backend, retry=policy) as engine:
        answer = await engine.run(Direct(), "q", return_errors=True)
    assert backend.calls == 3  # the first attempt and two retries
    assert answer.error is not None and answer.error.type == "ServerError"
    assert answer.error.message == "down 2"
    assert answer.trace is not None and answer.trace.node("answer").attempts == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exc",
    [
        error_from_status(400, "bad"),
        error_from_status(401, "key"),
        error_from_status(403, "perm"),
        error_from_status(404, "model"),
        error_from_status(422, "shape"),
        error_from_status(429, "quota", code="insufficient_quota"),
        error_from_status(500, "no", should_retry=False),
    ],
)
async def test_engine_never_retries_what_cannot_succeed(exc: ProviderError) -> None:
    backend = ScriptedBackend([exc, "never reached"])
    async with Engine(backend, retry=RetryPolicy(initial_wait_s=0, jitter_s=0)) as engine:
        with pytest.raises(type(exc)) as caught:
            await engine.run(Direct(), "q")
    assert caught.value is exc
    assert backend.calls == 1


@pytest.mark.anyio
async def test_x_should_retry_true_forces_a_retry_of_a_400() -> None:
    backend = ScriptedBackend([error_from_status(400, "flaky", should_retry=True), "done"])
    text, _, _ = await _run(backend, RetryPolicy(initial_wait_s=0, jitter_s=0))
    assert text == "done" and backend.calls == 2


@pytest.mark.anyio
async def test_max_retries_zero_turns_retrying_off() -> None:
    backend = ScriptedBackend([ServerError("down", status_code=500), "done"])
    async with Engine(backend, max_retries=0) as engine:
        answer = await engine.run(Direct(), "q", return_errors=True)
    assert answer.error is not None and answer.error.type == "ServerError"
    assert backend.calls == 1
    assert answer.trace is not None and answer.trace.node("answer").attempts == 1


@pytest.mark.anyio
async def test_foreign_exceptions_are_not_retried() -> None:
    backend = ScriptedBackend([KeyError("bug"), "done"])
    async with Engine(backend) as engine:
        with pytest.raises(KeyError):
            await engine.run(Direct(), "q")
    assert backend.calls == 1


@pytest.mark.anyio
async def test_retry_wait_is_cancellable() -> None:
    # A run cancelled while it sleeps before a retry ends at once, not after the wait.
    backend = ScriptedBackend([error_from_status(429, "later", retry_after=30), "done"])
    events: list[Event] = []
    async with Engine(backend, retry=RetryPolicy(max_wait_s=60)) as engine:
        start = time.monotonic()
        # Cancelled once the run is in its 30 s wait, however long it took to get there.
        await cancel_once(
            lambda: any(isinstance(e, Retrying) for e in events),
            lambda: engine.run(Direct(), "q", on_event=events.append),
        )
        assert time.monotonic() - start < 5
    assert backend.calls == 1
