"""End to end against the loopback HTTP server: real sockets, real SSE, injected faults.

Counts that matter (requests, peak in flight, disconnects) are read from the server
itself, so they show what reached the wire, not what the client believes it sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import openai
import pytest

from sotflow import (
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    DeadlineExceededError,
    Direct,
    Engine,
    Event,
    Limiter,
    OpenAIBackend,
    ProviderError,
    QuotaExceededError,
    Request,
    Retrying,
    RetryPolicy,
    RunFinished,
    StreamReset,
    TextDelta,
)
from sotflow.testing import Fault, LoopbackServer

from ..conftest import SECRET
from ..support import answer_text, node_text, wait_until

pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)

FAST = RetryPolicy(initial_wait_s=0.01, max_wait_s=5, jitter_s=0.0)


_sdk_clients: list[openai.AsyncOpenAI] = []


def make_backend(server: LoopbackServer, how: str = "aiohttp", **kwargs: Any) -> OpenAIBackend:
    """The same backend over each of the three ways to reach a server."""
    if how == "sdk":
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=SECRET)
        _sdk_clients.append(client)
        return OpenAIBackend(model="loopback", client=client, **kwargs)
    return OpenAIBackend(
        model="loopback",
        base_url=server.base_url,
        api_key=SECRET,
        transport=how,  # type: ignore[arg-type]
        **kwargs,
    )


@pytest.fixture(autouse=True)
async def _close_sdk_clients() -> AsyncIterator[None]:
    # A client handed in with client= stays its owner's to close (sotflow never closes
    # it); left open, its pool would be collected after the test's event loop is gone.
    yield
    while _sdk_clients:
        await _sdk_clients.pop().close()


TRANSPORTS = ["aiohttp", "httpx", "sdk"]


async def stream_events(engine: Engine, question: str, **kwargs: Any) -> list[Event]:
    return [e async for e in engine.stream(Direct(**kwargs), question)]


def final_answer(events: list[Event]) -> Any:
    last = events[-1]
    assert isinstance(last, RunFinished)
    return last.answer


# -- plain runs -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRANSPORTS)
async def test_run_and_stream_through_every_transport(server: LoopbackServer, how: str) -> None:
    async with Engine(make_backend(server, how)) as engine:
        plain = await engine.run(Direct(max_tokens=50), "hello [[tokens=12]]")
        events = await stream_events(engine, "hello [[tokens=12]]", max_tokens=50)
    streamed = final_answer(events)
    # The server's filler is deterministic per prompt: both ways get the same 12 words.
    assert len(plain.text.split()) == 12 and streamed.text == plain.text
    assert plain.usage.completion_tokens == 12 and not plain.usage.estimated
    assert streamed.usage.completion_tokens == 12 and not streamed.usage.estimated
    assert node_text(events, "answer") == streamed.text == answer_text(events)
    stats = server.stats()
    assert stats["requests"] == 2 and stats["streams"] == 1 and stats["in_flight"] == 0


@pytest.mark.anyio
async def test_sampling_params_reach_the_server(server: LoopbackServer) -> None:
    backend = make_backend(server)
    request = Request.of("[[echo]] one two three four", n=2, stop=(" three",), logprobs=True)
    completion = await backend.complete(request)
    assert [c.text for c in completion.choices] == ["one two", "one two"]
    assert completion.choices[0].logprobs is not None
    assert [t.token for t in completion.choices[0].logprobs] == ["one", " two"]
    cut = await backend.complete(Request.of("[[tokens=30]]", max_tokens=4))
    assert len(cut.text.split()) == 4 and cut.finish_reason == "length"
    deltas = [d async for d in backend.stream(Request.of("[[echo]] a b c d", n=2))]
    final = deltas[-1]
    texts = {i: "".join(d.text for d in deltas[:-1] if d.index == i) for i in (0, 1)}  # type: ignore[union-attr]
    assert texts == {0: "a b c d", 1: "a b c d"}
    assert [c.text for c in final.choices] == ["a b c d", "a b c d"]  # type: ignore[union-attr]
    await backend.aclose()


@pytest.mark.anyio
async def test_real_prefill_continues_the_assistant_message(server: LoopbackServer) -> None:
    backend = make_backend(server, prefill=True)
    # The server reads the user message (not the prefill) and answers after it.
    completion = await backend.complete(Request.of("[[echo]] continued", prefill="1."))
    assert completion.text == "continued"
    await backend.aclose()


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["aiohttp", "httpx"])
async def test_in_flight_cap_holds_at_the_server(server: LoopbackServer, how: str) -> None:
    server.configure(ttft=0.2)  # long enough that the calls overlap on a loaded machine
    backend = make_backend(server, how, max_concurrency=4)
    async with Engine(backend) as first, Engine(backend) as second, anyio.create_task_group() as tg:
        tg.start_soon(first.batch, Direct(max_tokens=4), [f"a{i}" for i in range(6)])
        tg.start_soon(second.batch, Direct(max_tokens=4), [f"b{i}" for i in range(6)])
        for engine in (first, second):
            tg.start_soon(engine.run, Direct(max_tokens=4), "single")
    stats = server.stats()
    assert stats["requests"] == 14 and stats["completed"] == 14
    assert stats["peak_in_flight"] == 4


@pytest.mark.anyio
async def test_rpm_holds_at_the_server(server: LoopbackServer) -> None:
    window = 0.3
    backend = make_backend(server)
    backend.limiter = Limiter(max_concurrency=None, rpm=3, window_s=window)
    start = time.monotonic()
    async with Engine(backend) as engine:
        answers = await engine.batch(Direct(max_tokens=2), [f"q{i}" for i in range(7)])
    assert all(a.ok for a in answers)
    # 7 calls at 3 per window need at least two full windows.
    assert time.monotonic() - start >= 2 * window - 0.02
    assert server.stats()["requests"] == 7


# -- retries and Retry-After -------------------------------------------------------------------


async def timed_run(
    server: LoopbackServer, policy: RetryPolicy = FAST, how: str = "aiohttp", **kwargs: Any
) -> tuple[Any, list[Event], float]:
    events: list[Event] = []
    async with Engine(make_backend(server, how), retry=policy, **kwargs) as engine:
        start = time.monotonic()
        answer = await engine.run(
            Direct(max_tokens=8), "q", on_event=events.append, return_errors=True
        )
        return answer, events, time.monotonic() - start


def waits(events: list[Event]) -> list[float]:
    return [e.wait_s for e in events if isinstance(e, Retrying)]


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRANSPORTS)
async def test_retry_after_ms_is_honoured(server: LoopbackServer, how: str) -> None:
    server.inject(Fault("status", status=429, retry_after_ms="300"))
    answer, events, elapsed = await timed_run(server, how=how)
    assert answer.ok and waits(events) == [0.3]
    assert elapsed >= 0.3
    assert server.stats()["requests"] == 2


@pytest.mark.anyio
@pytest.mark.slow
async def test_retry_after_seconds_is_honoured(server: LoopbackServer) -> None:
    server.inject(Fault("status", status=503, retry_after="1"))
    answer, events, elapsed = await timed_run(server)
    assert answer.ok and waits(events) == [1.0] and elapsed >= 1.0
    assert server.stats()["statuses"] == {"503": 1, "200": 1}


@pytest.mark.anyio
@pytest.mark.slow
async def test_retry_after_http_date_is_honoured(server: LoopbackServer) -> None:
    # HTTP dates have whole seconds: "now + 3 s" truncated is still more than 2 s away.
    when = datetime.now(UTC) + timedelta(seconds=3)
    server.inject(Fault("status", status=429, retry_after=format_datetime(when, usegmt=True)))
    answer, events, elapsed = await timed_run(server)
    assert answer.ok
    [wait] = waits(events)
    assert 1.9 <= wait <= 3.1 and elapsed >= wait


@pytest.mark.anyio
async def test_retry_after_is_capped(server: LoopbackServer) -> None:
    server.inject(Fault("status", status=429, retry_after="3600"))
    answer, events, elapsed = await timed_run(server, RetryPolicy(max_wait_s=0.2, jitter_s=0))
    assert answer.ok and waits(events) == [0.2]
    assert elapsed < 30


@pytest.mark.anyio
async def test_backoff_without_headers(server: LoopbackServer) -> None:
    server.inject(Fault("status", status=500, times=2), Fault("status", status=502))
    policy = RetryPolicy(initial_wait_s=0.05, max_wait_s=5, jitter_s=0, spread=0)
    answer, events, elapsed = await timed_run(server, policy)
    assert answer.ok and answer.attempts == 4
    assert waits(events) == pytest.approx([0.05, 0.1, 0.2])
    assert elapsed >= 0.35
    assert server.stats()["statuses"] == {"500": 2, "502": 1, "200": 1}


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRANSPORTS)
async def test_x_should_retry_overrides(server: LoopbackServer, how: str) -> None:
    server.inject(Fault("status", status=500, should_retry="false"))
    answer, _, _ = await timed_run(server, how=how)
    assert answer.error is not None and answer.error.type == "ServerError"
    assert server.stats()["requests"] == 1
    server.reset()
    server.inject(Fault("status", status=400, should_retry="true"))
    answer, _, _ = await timed_run(server, how=how)
    assert answer.ok and server.stats()["requests"] == 2


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRANSPORTS)
@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, None, BadRequestError),
        (401, "invalid_api_key", AuthenticationError),
        (403, None, AuthenticationError),
        (404, "model_not_found", BadRequestError),
        (422, None, BadRequestError),
        (429, "insufficient_quota", QuotaExceededError),
    ],
)
async def test_non_retryable_errors_surface_at_once_without_the_key(
    server: LoopbackServer, how: str, status: int, code: str | None, cls: type
) -> None:
    # The server echoes the key it received in its error message, as careless ones do.
    server.inject(Fault("status", status=status, code=code, message="you sent key {key}!"))
    events: list[Event] = []
    async with Engine(make_backend(server, how), retry=FAST) as engine:
        start = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await engine.run(Direct(), "q", on_event=events.append)
        assert time.monotonic() - start < 5
    exc = caught.value
    assert type(exc) is cls and exc.status_code == status
    assert f"HTTP {status}" in str(exc) and "you sent key ***!" in str(exc)
    assert SECRET not in str(exc) and SECRET not in repr(exc)
    assert all(SECRET not in repr(e) for e in events)
    assert server.stats()["requests"] == 1


@pytest.mark.anyio
async def test_wrong_key_is_an_authentication_error(server: LoopbackServer) -> None:
    server.configure(api_key="the-right-key")
    async with Engine(make_backend(server), retry=FAST) as engine:
        with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
            await engine.run(Direct(), "q")
    assert server.stats()["requests"] == 1


# -- timeouts, deadlines, cancellation -------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRANSPORTS)
async def test_a_hung_attempt_times_out_and_is_retried(server: LoopbackServer, how: str) -> None:
    server.inject(Fault("hang"))
    # The timeout leaves a loaded machine ample time to get the request to the server.
    answer, events, elapsed = await timed_run(server, how=how, timeout=0.8)
    assert answer.ok and answer.attempts == 2
    assert [e.error.type for e in events if isinstance(e, Retrying)] == ["APITimeoutError"]
    assert elapsed < 10
    # The hung request was abandoned: the server saw the client go away.
    await wait_until(lambda: server.stats()["in_flight"] == 0)
    assert server.stats()["disconnects"] == 1


@pytest.mark.anyio
async def test_attempt_timeouts_that_never_clear_raise(server: LoopbackServer) -> None:
    server.inject(Fault("hang", times=3))
    policy = RetryPolicy(max_retries=2, initial_wait_s=0, jitter_s=0)
    # Each attempt must reach the server before it times out, or it takes no fault.
    async with Engine(make_backend(server), retry=policy, timeout=0.5) as engine:
        with pytest.raises(APITimeoutError):
            await engine.run(Direct(), "q")
    assert server.stats()["requests"] == 3
    await wait_until(lambda: server.stats()["in_flight"] == 0)


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRANSPORTS)
async def test_deadline_cancels_what_is_in_flight(server: LoopbackServer, how: str) -> None:
    server.inject(Fault("hang"))
    async with Engine(make_backend(server, how), deadline=0.8) as engine:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await engine.run(Direct(), "q")
        assert time.monotonic() - start < 5
        await wait_until(lambda: server.stats()["in_flight"] == 0)
    assert server.stats()["disconnects"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRANSPORTS)
async def test_cancelling_a_run_closes_its_requests(server: LoopbackServer, how: str) -> None:
    server.configure(ttft=30)
    before = set(asyncio.all_tasks())
    async with Engine(make_backend(server, how)) as engine:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.batch, Direct(), ["a", "b", "c"])
                # Cancel once all three requests are really waiting at the server.
                await wait_until(lambda: server.stats()["in_flight"] == 3)
                scope.cancel()
        await wait_until(lambda: server.stats()["in_flight"] == 0)
        assert server.stats()["requests"] == 3
    assert server.stats()["disconnects"] == 3
    await anyio.sleep(0.05)  # let the transports' own cleanup callbacks run
    assert set(asyncio.all_tasks()) <= before


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRANSPORTS)
async def test_breaking_out_of_a_stream_closes_the_request(
    server: LoopbackServer, how: str
) -> None:
    server.configure(tps=10)
    async with Engine(make_backend(server, how)) as engine:
        async for event in engine.stream(Direct(max_tokens=64), "[[tokens=64]]"):
            if isinstance(event, TextDelta):
                break
        await wait_until(lambda: server.stats()["in_flight"] == 0)
    stats = server.stats()
    assert stats["requests"] == 1 and stats["completed"] == 0 and stats["disconnects"] == 1


# -- broken streams reassemble exactly ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRANSPORTS)
@pytest.mark.parametrize(
    "fault",
    [
        Fault("drop", after_tokens=5),
        Fault("malformed", after_tokens=3),
        Fault("truncate", after_tokens=4),
    ],
    ids=["drop", "malformed", "truncate"],
)
async def test_broken_streams_are_retried_and_reassemble_exactly(
    server: LoopbackServer, how: str, fault: Fault
) -> None:
    server.inject(fault)
    async with Engine(make_backend(server, how), retry=FAST) as engine:
        events = await stream_events(engine, "[[tokens=20]]", max_tokens=32)
    answer = final_answer(events)
    assert answer.ok, answer.error
    assert len(answer.text.split()) == 20 and answer.attempts == 2
    assert any(isinstance(e, StreamReset) for e in events)
    assert node_text(events, "answer") == answer.text
    assert answer_text(events) == answer.text
    assert server.stats()["requests"] == 2


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["drop", "malformed"])
async def test_broken_plain_responses_are_retried(server: LoopbackServer, kind: str) -> None:
    server.inject(Fault(kind))
    async with Engine(make_backend(server), retry=FAST) as engine:
        answer = await engine.run(Direct(max_tokens=8), "q")  # no on_event: not streamed
    assert answer.ok and answer.attempts == 2
    stats = server.stats()
    assert stats["requests"] == 2 and stats["streams"] == 0 and stats["faults"] == 1


@pytest.mark.anyio
@pytest.mark.slow
async def test_random_faults_under_load_lose_nothing_and_leak_nothing(
    server: LoopbackServer,
) -> None:
    questions = [f"question {i} [[tokens={5 + i % 7}]]" for i in range(30)]
    backend = make_backend(server, max_concurrency=8)
    async with Engine(backend, retry=RetryPolicy(max_retries=8, initial_wait_s=0.01)) as engine:
        clean = await engine.batch(Direct(max_tokens=16), questions)
        server.configure(fault_rate=0.3, fault_seed=3)
        events: list[Event] = []
        faulty = await engine.batch(Direct(max_tokens=16), questions, on_event=events.append)
    stats = server.stats()
    assert stats["faults"] > 0 and stats["peak_in_flight"] <= 8
    assert [a.text for a in faulty] == [a.text for a in clean]
    assert all(a.ok for a in faulty)
    # Each run's streamed text (batch streams when given on_event) adds up exactly.
    for index, answer in enumerate(faulty):
        mine = [e for e in events if e.run_id == str(index)]
        assert answer_text(mine) == answer.text
    # The key is nowhere: not in events, errors, traces or answers.
    dumped = repr(events) + json.dumps([a.model_dump(mode="json") for a in faulty])
    assert SECRET not in dumped
