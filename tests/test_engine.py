"""The engine through the scripted backend: runs, streams, batches, limits on a run."""

from __future__ import annotations

import asyncio
import time

import anyio
import anyio.lowlevel
import pytest

from sotflow import (
    AnswerDelta,
    APITimeoutError,
    BudgetExceededError,
    Call,
    ConfigurationError,
    DeadlineExceededError,
    Direct,
    Engine,
    Event,
    Fail,
    Graph,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    Reply,
    Request,
    Retrying,
    RetryPolicy,
    RunFinished,
    RunStarted,
    ScriptedBackend,
    ServerError,
    Step,
    StreamInterruptedError,
    StreamReset,
    TextDelta,
)
from sotflow.errors import error_from_status
from sotflow.graph import NodeContext, Result

from .support import GraphStrategy, answer_text, cancel_once, node_text, wait_until

FAST = RetryPolicy(initial_wait_s=0.0, jitter_s=0.0)

# Leaked streams, tasks or connections show up as ResourceWarnings: fail on them.
pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


# -- single runs -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_run_returns_an_answer_with_usage_and_trace() -> None:
    backend = ScriptedBackend(["Sleep in a dark room."])
    async with Engine(backend) as engine:
        answer = await engine.run(Direct(max_tokens=50), "How do I sleep better?")
    assert answer.ok and answer.text == "Sleep in a dark room."
    assert answer.question == "How do I sleep better?" and answer.strategy == "direct"
    assert answer.usage.completion_tokens == 5 and answer.usage.prompt_tokens == 5
    assert answer.latency_s >= 0 and answer.attempts == 1
    assert answer.details["finish_reason"] == "stop"
    request = backend.requests[0]
    assert request.messages[-1].content == "How do I sleep better?"
    assert request.params.max_tokens == 50


@pytest.mark.anyio
async def test_event_sequence_of_a_simple_streamed_run() -> None:
    backend = ScriptedBackend(["one two three"])
    async with Engine(backend) as engine:
        events = [event async for event in engine.stream(Direct(), "q", run_id="r1")]
    kinds = [type(e).__name__ for e in events]
    # Deltas interleave (node text first, then the answer piece); collapse them to compare.
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert collapsed[:2] == ["RunStarted", "NodeStarted"]
    assert collapsed[-2:] == ["NodeFinished", "RunFinished"]
    assert set(collapsed[2:-2]) == {"TextDelta", "AnswerDelta"}
    assert all(e.run_id == "r1" for e in events)
    final = events[-1]
    assert isinstance(final, RunFinished) and final.answer.text == "one two three"
    assert isinstance(events[0], RunStarted) and events[0].strategy == "direct"
    started = next(e for e in events if isinstance(e, NodeStarted))
    assert (started.node, started.kind) == ("answer", "call")
    finished = next(e for e in events if isinstance(e, NodeFinished))
    assert finished.usage is not None and finished.usage.completion_tokens == 3
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["one", " two", " three"]
    assert answer_text(events) == final.answer.text
    assert node_text(events, "answer") == final.answer.text


@pytest.mark.anyio
async def test_a_stream_broken_midway_is_withdrawn_and_retried_exactly() -> None:
    backend = ScriptedBackend(
        [Fail(StreamInterruptedError("cut"), after_tokens=4), "the real answer"]
    )
    async with Engine(backend, retry=FAST) as engine:
        events = [e async for e in engine.stream(Direct(), "q")]
    answer = events[-1].answer  # type: ignore[attr-defined]
    assert answer.ok and answer.text == "the real answer"
    assert any(isinstance(e, StreamReset) for e in events)
    assert any(isinstance(e, Retrying) for e in events)
    # The reader saw four tokens, then a reset, then the retry: the folds are exact.
    assert node_text(events, "answer") == answer.text
    assert answer_text(events) == answer.text
    raw = "".join(e.text for e in events if isinstance(e, AnswerDelta))
    assert raw != answer.text  # the withdrawn text really was streamed


@pytest.mark.anyio
async def test_a_stream_timed_out_midway_is_withdrawn_and_retried_exactly() -> None:
    # The first attempt streams a couple of tokens, then stalls past the attempt timeout.
    backend = ScriptedBackend([Reply("a b c d e f g h", token_delay_s=0.15), "fresh answer"])
    # 0.8 s: past the first tokens, short of the whole 1.2 s stream, and ample for the
    # instant retry on a loaded machine (a slower retry would time out too).
    async with Engine(backend, timeout=0.8, retry=FAST) as engine:
        events = [e async for e in engine.stream(Direct(), "q")]
    answer = events[-1].answer  # type: ignore[attr-defined]
    assert answer.ok and answer.text == "fresh answer"
    retry = next(e for e in events if isinstance(e, Retrying))
    assert retry.error.type == "APITimeoutError"
    assert any(isinstance(e, TextDelta) and e.text == "a" for e in events)
    assert node_text(events, "answer") == answer.text
    assert answer_text(events) == answer.text


@pytest.mark.anyio
async def test_per_attempt_timeout_is_retried() -> None:
    backend = ScriptedBackend([Reply("late", delay_s=30), "on time"])
    events: list[Event] = []
    # Long enough that the instant second attempt cannot miss it on a loaded machine.
    async with Engine(backend, timeout=1.0, retry=FAST) as engine:
        start = time.monotonic()
        answer = await engine.run(Direct(), "q", on_event=events.append)
    assert time.monotonic() - start < 10
    assert answer.text == "on time" and answer.attempts == 2
    retries = [e for e in events if isinstance(e, Retrying)]
    assert len(retries) == 1 and retries[0].error.type == "APITimeoutError"
    assert backend.cancelled == 1


@pytest.mark.anyio
async def test_attempt_timeout_that_never_clears_raises_api_timeout() -> None:
    backend = ScriptedBackend([Reply("late", delay_s=30)], cycle=True)
    async with Engine(backend, timeout=0.1, retry=RetryPolicy(max_retries=1, jitter_s=0)) as e:
        with pytest.raises(APITimeoutError, match=r"0\.1s.*timeout="):
            await e.run(Direct(), "q")
    assert backend.calls == 2


@pytest.mark.anyio
async def test_deadline_cancels_everything_and_says_what_to_do() -> None:
    backend = ScriptedBackend([Reply("late", delay_s=30)], cycle=True)
    async with Engine(backend, deadline=0.3) as engine:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError, match=r"0\.3s.*deadline=") as caught:
            await engine.run(Direct(), "q")
        assert time.monotonic() - start < 10
        assert isinstance(caught.value, TimeoutError)
        # A per-run deadline overrides the engine's; return_errors puts it in the answer.
        answer = await engine.run(Direct(), "q", deadline=0.1, return_errors=True)
    assert answer.error is not None and answer.error.type == "DeadlineExceededError"
    assert answer.trace is not None and answer.trace.node("answer").status == "cancelled"
    assert backend.cancelled == 2 and backend.in_flight == 0


@pytest.mark.anyio
async def test_deadline_also_bounds_retry_waits() -> None:
    backend = ScriptedBackend([ServerError("busy", status_code=503, retry_after=60), "never"])
    async with Engine(backend, deadline=0.3, retry=RetryPolicy(max_wait_s=120)) as engine:
        with pytest.raises(DeadlineExceededError):
            await engine.run(Direct(), "q")
    assert backend.calls == 1


# -- the token budget ---------------------------------------------------------------------


def chain(length: int) -> GraphStrategy:
    """``length`` calls in a row, each needing the one before."""

    def build(question: str) -> Graph:
        nodes = [
            Call(f"c{i}", Request.of(f"{question} step {i}"), needs=(f"c{i - 1}",) if i else ())
            for i in range(length)
        ]
        return Graph(nodes, output=f"c{length - 1}")

    return GraphStrategy(build, name="chain")


@pytest.mark.anyio
async def test_budget_stops_new_calls() -> None:
    # Each call uses 3 prompt + 10 completion tokens; a budget of 20 allows two calls.
    backend = ScriptedBackend([" ".join(["w"] * 10)], cycle=True)
    async with Engine(backend, budget=20) as engine:
        with pytest.raises(BudgetExceededError) as caught:
            await engine.run(chain(5), "go")
    assert backend.calls == 2  # c2, c3 and c4 never reached the backend
    error = caught.value
    assert (error.budget, error.used) == (20, 26)
    assert "budget=" in str(error) and "max_tokens=" in str(error)
    # Without a budget the same chain runs to the end.
    backend2 = ScriptedBackend([" ".join(["w"] * 10)], cycle=True)
    async with Engine(backend2) as engine:
        answer = await engine.run(chain(5), "go")
    assert backend2.calls == 5 and answer.usage.total_tokens == 5 * 13


@pytest.mark.anyio
async def test_budget_is_per_run_and_can_be_overridden() -> None:
    backend = ScriptedBackend([" ".join(["w"] * 10)], cycle=True)
    async with Engine(backend, budget=20) as engine:
        answer = await engine.run(chain(3), "go", budget=None)
        assert answer.ok
        second = await engine.run(chain(2), "go", return_errors=True)
    assert second.ok, "a new run starts with a fresh budget"
    assert backend.calls == 5


# -- many questions ----------------------------------------------------------------------


def numbered(request: Request) -> str | BaseException:
    question = request.messages[-1].content
    if question == "q3":
        return error_from_status(400, "q3 always fails")
    return f"answer to {question}"


@pytest.mark.anyio
async def test_batch_keeps_order_and_isolates_failures() -> None:
    backend = ScriptedBackend(numbered, delay_s=0.0)
    questions = [f"q{i}" for i in range(8)]
    events: list[Event] = []
    async with Engine(backend, max_retries=0) as engine:
        answers = await engine.batch(Direct(), questions, concurrency=3, on_event=events.append)
    assert [a.question for a in answers] == questions
    for i, answer in enumerate(answers):
        if i == 3:
            assert answer.error is not None and answer.error.type == "BadRequestError"
            assert "q3 always fails" in answer.error.message
        else:
            assert answer.ok and answer.text == f"answer to q{i}"
    finished = [e for e in events if isinstance(e, RunFinished)]
    assert sorted(e.run_id for e in finished) == sorted(str(i) for i in range(8))
    assert backend.peak_in_flight <= 3


@pytest.mark.anyio
async def test_batch_order_does_not_follow_finishing_order() -> None:
    def slow_first(request: Request) -> Reply:
        index = int(request.messages[-1].content[1:])
        return Reply(f"a{index}", delay_s=0.05 * (5 - index))

    async with Engine(ScriptedBackend(slow_first)) as engine:
        answers = await engine.batch(Direct(), [f"q{i}" for i in range(5)])
    assert [a.text for a in answers] == [f"a{i}" for i in range(5)]


@pytest.mark.anyio
async def test_as_completed_yields_every_index_once() -> None:
    def slow_first(request: Request) -> Reply | BaseException:
        index = int(request.messages[-1].content[1:])
        if index == 2:
            return error_from_status(400, "nope")
        return Reply(f"a{index}", delay_s=0.1 * (6 - index))

    async with Engine(ScriptedBackend(slow_first)) as engine:
        pairs = [pair async for pair in engine.as_completed(Direct(), [f"q{i}" for i in range(6)])]
    assert sorted(i for i, _ in pairs) == list(range(6))
    for index, answer in pairs:
        assert answer.question == f"q{index}"
        assert answer.ok == (index != 2)
    assert pairs[0][0] == 2 or pairs[0][0] == 5  # the failure or the fastest comes first
    assert pairs[-1][0] == 0  # the slowest comes last


# -- cancellation --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelling_a_run_cancels_its_calls_and_leaves_no_task() -> None:
    backend = ScriptedBackend([Reply("late", delay_s=30)], cycle=True)
    before = set(asyncio.all_tasks())
    async with Engine(backend) as engine:
        await cancel_once(
            lambda: backend.in_flight == 3, lambda: engine.batch(Direct(), ["a", "b", "c"])
        )
        assert backend.cancelled == 3 and backend.in_flight == 0
        assert backend.limiter.in_flight == 0
    await anyio.lowlevel.checkpoint()
    assert set(asyncio.all_tasks()) <= before


@pytest.mark.anyio
async def test_breaking_out_of_a_stream_cancels_the_run() -> None:
    backend = ScriptedBackend([Reply("a b c d e f g h i j", token_delay_s=0.2)])
    async with Engine(backend) as engine:
        async for event in engine.stream(Direct(), "q"):
            if isinstance(event, TextDelta):
                break
        await wait_until(lambda: backend.in_flight == 0)
    assert backend.cancelled == 1 and backend.completed == 0


@pytest.mark.anyio
async def test_closing_a_stream_context_cancels_the_run() -> None:
    backend = ScriptedBackend([Reply("a b c d e f g h i j", token_delay_s=0.2)], cycle=True)
    async with Engine(backend) as engine:
        async with engine.stream(Direct(), "q") as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    break
        await wait_until(lambda: backend.in_flight == 0)
        # The engine is still usable afterwards.
        answer = await engine.run(Direct(max_tokens=2), "again")
    assert answer.text == "a b"
    assert backend.cancelled == 1


# -- errors that are the caller's ----------------------------------------------------------


@pytest.mark.anyio
async def test_configuration_errors_are_clear() -> None:
    backend = ScriptedBackend(["x"], cycle=True)
    with pytest.raises(ConfigurationError, match="needs a backend"):
        Engine("not a backend")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout"):
        Engine(backend, timeout=0)
    with pytest.raises(ConfigurationError, match="deadline"):
        Engine(backend, deadline=-1)
    with pytest.raises(ConfigurationError, match="budget"):
        Engine(backend, budget=0)
    engine = Engine(backend)
    with pytest.raises(ConfigurationError, match="async with"):
        engine.stream(Direct(), "q")
    with pytest.raises(ConfigurationError, match="async with"):
        engine.as_completed(Direct(), ["q"])
    async with engine:
        with pytest.raises(ConfigurationError, match="expected a strategy"):
            await engine.run("direct", "q")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"the class Direct; pass Direct\(\.\.\.\)"):
            await engine.run(Direct, "q")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="empty"):
            await engine.run(Direct(), "   ")
        with pytest.raises(ConfigurationError, match="string"):
            await engine.run(Direct(), 42)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="concurrency"):
            await engine.batch(Direct(), ["q"], concurrency=0)
        # One string is not a list of one-letter questions.
        with pytest.raises(ConfigurationError, match=r"takes a list of questions.*\[question\]"):
            await engine.batch(Direct(), "hello")
        with pytest.raises(ConfigurationError, match=r"as_completed\(\) takes a list"):
            engine.as_completed(Direct(), "hello")
        assert backend.calls == 0
        events: list[Event] = []
        answer = await engine.run(Direct(), "", return_errors=True, on_event=events.append)
        assert answer.error is not None and answer.error.type == "ConfigurationError"
        assert isinstance(events[-1], RunFinished)
        # In a batch, a bad question is one failed answer, not a failed batch.
        answers = await engine.batch(Direct(), ["fine", ""])
        assert answers[0].ok and not answers[1].ok
    assert backend.calls == 1


@pytest.mark.anyio
async def test_a_failed_stream_ends_with_run_finished_carrying_the_error() -> None:
    backend = ScriptedBackend([error_from_status(400, "bad request")])
    async with Engine(backend) as engine:
        events = [e async for e in engine.stream(Direct(), "q")]
    assert isinstance(events[-1], RunFinished)
    assert events[-1].answer.error is not None
    assert events[-1].answer.error.message == "bad request"
    failed = [e for e in events if isinstance(e, NodeFailed)]
    assert len(failed) == 1 and failed[0].node == "answer" and not failed[0].cancelled


@pytest.mark.anyio
async def test_node_values_reach_the_result() -> None:
    def build(question: str) -> Graph:
        def result(completion: object, ctx: NodeContext) -> Result:
            return Result(text=f"[{ctx.question}] done", details={"node": ctx.node_id})

        return Graph([Call("only", Request.of(question), then=result)], output="only")

    async with Engine(ScriptedBackend(["x"])) as engine:
        answer = await engine.run(GraphStrategy(build), "why")
    assert answer.text == "[why] done" and answer.details == {"node": "only"}


@pytest.mark.anyio
async def test_closing_as_completed_early_cancels_the_rest() -> None:
    def script(request: Request) -> Reply:
        index = int(request.messages[-1].content[1:])
        return Reply(f"a{index}", delay_s=0 if index == 0 else 30)

    backend = ScriptedBackend(script)
    async with Engine(backend) as engine:
        async with engine.as_completed(Direct(), [f"q{i}" for i in range(4)]) as pairs:
            async for index, answer in pairs:
                assert (index, answer.text) == (0, "a0")
                break
        await wait_until(lambda: backend.in_flight == 0)
        assert backend.cancelled == 3


@pytest.mark.anyio
async def test_calls_queued_behind_the_cap_do_not_start_once_the_budget_is_spent() -> None:
    # Four parallel calls, one slot: the first spends the whole budget while the other
    # three wait for the slot; none of them may start.
    backend = ScriptedBackend(["one two three four five six seven eight"] * 4, max_concurrency=1)

    def build(question: str) -> Graph:
        calls = [Call(f"c{i}", Request.of(f"q{i}")) for i in range(4)]
        out = Step("out", lambda c: "x", needs=tuple(f"c{i}" for i in range(4)))
        return Graph([*calls, out], output="out")

    async with Engine(backend, budget=5) as engine:
        answer = await engine.run(GraphStrategy(build), "q", return_errors=True)
    assert backend.calls == 1
    assert answer.error is not None and answer.error.type == "BudgetExceededError"
