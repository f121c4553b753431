"""Giving up on a dead endpoint: the backend's breaker, as the engine drives it.

A scripted backend plays the endpoint; retry waits are zero so the tests count
attempts, never seconds.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from sotflow import (
    APIConnectionError,
    Direct,
    EndpointUnreachableError,
    Engine,
    OpenAIBackend,
    Request,
    RetryPolicy,
    ScriptedBackend,
    ServerError,
    StreamInterruptedError,
)
from sotflow.breaker import CallRecord, ConnectionBreaker

from .conftest import SECRET

pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


def no_waits(max_retries: int = 4) -> RetryPolicy:
    return RetryPolicy(max_retries=max_retries, initial_wait_s=0, jitter_s=0)


def refused(request: Request) -> BaseException:
    return APIConnectionError("connection refused")


def sequence(*items: object) -> Callable[[Request], object]:
    """A script that plays ``items`` in order, then answers "ok" forever."""
    queue = list(items)
    return lambda request: queue.pop(0) if queue else "ok"


@pytest.mark.anyio
async def test_one_call_failing_to_connect_threshold_times_gives_up() -> None:
    backend = ScriptedBackend(refused)
    async with Engine(backend, retry=no_waits(max_retries=9)) as engine:
        answer = await engine.run(Direct(), "q", return_errors=True)
        assert answer.error is not None
        assert answer.error.type == "EndpointUnreachableError"
        assert "connection refused" in answer.error.message  # the cause is kept
        # Four attempts, not the ten the policy allows.
        assert backend.calls == 4 == answer.trace.node("answer").attempts
        # While tripped, every call fails at once, without a request.
        again = await engine.run(Direct(), "another", return_errors=True)
        assert again.error is not None and again.error.type == "EndpointUnreachableError"
        assert backend.calls == 4


@pytest.mark.anyio
async def test_fewer_failures_than_the_threshold_are_retried_as_before() -> None:
    backend = ScriptedBackend(sequence(*(APIConnectionError("blip") for _ in range(3))))
    async with Engine(backend, retry=no_waits()) as engine:
        answer = await engine.run(Direct(), "q")
        assert answer.text == "ok" and answer.trace.node("answer").attempts == 4
        # The answer closed the streak: the next three failures are again only a blip.
        backend.script = sequence(*(APIConnectionError("blip") for _ in range(3)))
        assert (await engine.run(Direct(), "q")).text == "ok"


@pytest.mark.anyio
async def test_an_error_status_proves_the_endpoint_is_there() -> None:
    conn = [APIConnectionError("blip") for _ in range(6)]
    status = ServerError("HTTP 500", status_code=500)
    broken = StreamInterruptedError("the stream broke off")
    # Three connection failures, a 500, three more, a broken stream, three more: the
    # responses in between keep every run of failures below the threshold.
    script = sequence(*conn[:3], status, *conn[3:], broken, *conn[:3])
    backend = ScriptedBackend(script)
    async with Engine(backend, retry=no_waits(max_retries=20)) as engine:
        answer = await engine.run(Direct(), "q")
        assert answer.text == "ok" and answer.trace.node("answer").attempts == 12


@pytest.mark.anyio
async def test_without_retries_consecutive_failed_calls_give_up() -> None:
    backend = ScriptedBackend(refused)
    async with Engine(backend, retry=no_waits(max_retries=0)) as engine:
        errors = [(await engine.run(Direct(), f"q{i}", return_errors=True)).error for i in range(6)]
    types = [e.type for e in errors if e is not None]
    # Three calls fail as themselves; the fourth in a row trips; then no request at all.
    assert types == ["APIConnectionError"] * 3 + ["EndpointUnreachableError"] * 3
    assert backend.calls == 4


@pytest.mark.anyio
async def test_the_breaker_is_shared_by_every_engine_on_the_backend() -> None:
    backend = ScriptedBackend(refused)
    async with Engine(backend, retry=no_waits()) as first:
        await first.run(Direct(), "q", return_errors=True)
    async with Engine(backend, retry=no_waits()) as second:
        answer = await second.run(Direct(), "q", return_errors=True)
    assert answer.error is not None and answer.error.type == "EndpointUnreachableError"
    assert backend.calls == 4


def test_after_the_cooldown_one_failure_trips_again_and_one_answer_closes_it() -> None:
    breaker = ConnectionBreaker(threshold=2, cooldown_s=0.0)
    record = CallRecord()
    error = APIConnectionError("refused")
    assert breaker.failed(error, record, last_attempt=False) is None
    assert isinstance(breaker.failed(error, record, last_attempt=False), EndpointUnreachableError)
    breaker.check()  # cooldown 0: calls go through again, on probation
    assert isinstance(breaker.failed(error, CallRecord(), last_attempt=False), Exception)
    breaker.check()
    breaker.answered()
    # Closed again: a single failure is a blip once more.
    assert breaker.failed(error, CallRecord(), last_attempt=False) is None


def test_answers_from_other_calls_between_failures_keep_it_closed() -> None:
    breaker = ConnectionBreaker(threshold=3)
    flaky = CallRecord()
    error = APIConnectionError("reset")
    for _ in range(10):
        assert breaker.failed(error, flaky, last_attempt=False) is None
        breaker.answered()  # another call got through meanwhile
    assert not breaker.tripped


def test_breaker_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        ConnectionBreaker(threshold=0)
    with pytest.raises(ValueError, match="cooldown_s"):
        ConnectionBreaker(cooldown_s=-1)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on exit: nothing listens there


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_connection_error_says_which_address_to_check(
    transport: str, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    for backend, source in (
        (OpenAIBackend(api_key=SECRET, transport=transport), "OPENAI_BASE_URL"),  # type: ignore[arg-type]
        (OpenAIBackend(base_url=url, api_key=SECRET, transport=transport), "--base-url"),  # type: ignore[arg-type]
    ):
        request = Request.of("hello")
        with pytest.raises(APIConnectionError) as caught:
            if stream:
                async for _ in backend.stream(request):
                    pass
            else:
                await backend.complete(request)
        await backend.aclose()
        message = str(caught.value)
        assert f"Is a server running at {url}?" in message
        assert source in message
        assert SECRET not in message
