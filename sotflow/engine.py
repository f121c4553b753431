"""The engine: runs strategy graphs under limits shared by all concurrent work.

One anyio task group per run; every node starts the moment its inputs exist. The
per-backend ``Limiter`` (in-flight cap, requests/min, tokens/min) is shared by every
node of every run; retries, per-attempt timeouts, the run deadline and the run's token
budget are enforced by the run (``sotflow.run``) and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .backends.base import Backend
from .errors import (
    ConfigurationError,
)
from .events import (
    Event,
    RunFinished,
)
from .reading import EventSink
from .retry import RetryPolicy
from .run import Run, run_ids, validation_error
from .strategies.base import Strategy
from .types import Answer, ErrorInfo

__all__ = ["Engine", "EventStream"]

_UNSET: Any = object()


def _question_list(questions: Iterable[str], method: str) -> list[str]:
    # A string is an iterable of one-letter questions: refused, or every letter would
    # be answered (and paid for) on its own.
    if isinstance(questions, str):
        raise ConfigurationError(
            f"engine.{method}() takes a list of questions, got one string; pass [question], "
            "or use engine.run() for a single question"
        )
    return list(questions)


class EventStream:
    """Events of background work, as an async iterator; closing it cancels the work.

    Use it with ``async for`` directly, or as ``async with engine.stream(...) as events``
    to make sure the work is cancelled the moment you stop reading.
    """

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[Any],
        scope: anyio.CancelScope,
    ) -> None:
        self._receive = receive
        self._scope = scope

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            self._receive.close()  # read to the end: nothing left to release
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._scope.cancel()
        await self._receive.aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A reader that broke out of ``async for`` without ``async with``: stop the work
        # and close our end, or the stream is reported as leaked (ResourceWarning).
        self._scope.cancel()
        self._receive.close()


class Engine:
    """Runs strategies against a backend, with every limit shared across runs.

    >>> async with Engine(backend) as engine:
    ...     answer = await engine.run(Direct(), "question")
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_retries: int = 4,
        retry: RetryPolicy | None = None,
        timeout: float | None = 120.0,
        deadline: float | None = None,
        budget: int | None = None,
        concurrency: int | None = None,
    ) -> None:
        if not isinstance(backend, Backend):
            raise ConfigurationError(
                f"Engine needs a backend (OpenAIBackend, LocalBackend, ScriptedBackend, ...); "
                f"got {type(backend).__name__}"
            )
        for name, value in (("timeout", timeout), ("deadline", deadline)):
            if value is not None and value <= 0:
                raise ConfigurationError(f"{name} must be positive seconds or None, got {value!r}")
        for name, value in (("budget", budget), ("concurrency", concurrency)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(
                    f"{name} must be a positive integer or None, got {value!r}"
                )
        self.backend = backend
        self.retry = retry if retry is not None else RetryPolicy(max_retries=max_retries)
        self.timeout = timeout
        self.deadline = deadline
        self.budget = budget
        self.concurrency = concurrency
        self._used_backends: dict[int, Backend] = {id(backend): backend}
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Engine:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close every backend this engine used (they reopen lazily if used again)."""
        with anyio.CancelScope(shield=True):
            for backend in list(self._used_backends.values()):
                await backend.aclose()

    # -- single runs -----------------------------------------------------------------

    async def run(
        self,
        strategy: Strategy,
        question: str,
        *,
        deadline: float | None = _UNSET,
        budget: int | None = _UNSET,
        on_event: EventSink | None = None,
        run_id: str | None = None,
        return_errors: bool = False,
    ) -> Answer:
        """Answer one question. Raises the run's error unless ``return_errors`` is true,
        in which case the error is in ``answer.error``."""
        rid = run_id if run_id is not None else f"run-{next(run_ids)}"
        invalid = validation_error(strategy, question)
        if invalid is not None:
            if not return_errors:
                raise invalid
            name = getattr(strategy, "name", type(strategy).__name__)
            answer = Answer(question=str(question), strategy=str(name), error=ErrorInfo.of(invalid))
            if on_event is not None:
                on_event(RunFinished(rid, answer))
            return answer
        run = Run(
            self,
            strategy,
            question,
            run_id=rid,
            deadline=self.deadline if deadline is _UNSET else deadline,
            budget=self.budget if budget is _UNSET else budget,
            sink=on_event,
        )
        answer = await run.execute_run()
        if run.error is not None and not return_errors:
            raise run.error
        return answer

    def stream(
        self,
        strategy: Strategy,
        question: str,
        *,
        deadline: float | None = _UNSET,
        budget: int | None = _UNSET,
        run_id: str | None = None,
    ) -> EventStream:
        """Run one question and iterate over its events, ending with ``RunFinished``.

        Errors do not raise here: the final ``RunFinished.answer.error`` carries them.
        """

        async def produce(send: MemoryObjectSendStream[Event]) -> None:
            def emit(event: Event) -> None:
                # A reader that stopped listening closed the stream; the run is being
                # cancelled, and its last events (resets, failures) go nowhere.
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    send.send_nowait(event)

            await self.run(
                strategy,
                question,
                deadline=deadline,
                budget=budget,
                on_event=emit,
                run_id=run_id,
                return_errors=True,
            )

        return self._background(produce)

    # -- many questions --------------------------------------------------------------

    async def batch(
        self,
        strategy: Strategy,
        questions: Iterable[str],
        *,
        concurrency: int | None = None,
        on_event: EventSink | None = None,
    ) -> list[Answer]:
        """Answer every question; answers come back in input order. A failed question
        gets an ``Answer`` with ``error`` set in its place; the others are unaffected."""
        questions = _question_list(questions, "batch")
        answers: list[Answer | None] = [None] * len(questions)

        async def record(index: int, answer: Answer) -> None:
            answers[index] = answer

        await self._run_many(strategy, questions, concurrency, on_event, record)
        return [a for a in answers if a is not None]

    def as_completed(
        self,
        strategy: Strategy,
        questions: Iterable[str],
        *,
        concurrency: int | None = None,
        on_event: EventSink | None = None,
    ) -> EventStream:
        """Yield ``(index, answer)`` pairs as questions finish (needs ``async with``)."""
        questions = _question_list(questions, "as_completed")

        async def produce(send: MemoryObjectSendStream[tuple[int, Answer]]) -> None:
            async def record(index: int, answer: Answer) -> None:
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await send.send((index, answer))

            await self._run_many(strategy, questions, concurrency, on_event, record)

        return self._background(produce)

    async def _run_many(
        self,
        strategy: Strategy,
        questions: list[str],
        concurrency: int | None,
        on_event: EventSink | None,
        record: Callable[[int, Answer], Awaitable[None]],
    ) -> None:
        if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
            raise ConfigurationError(f"concurrency must be a positive integer, got {concurrency!r}")
        limit = concurrency or self.concurrency or self.backend.limiter.max_concurrency or 64
        semaphore = anyio.Semaphore(limit)

        async def one(index: int, question: str) -> None:
            async with semaphore:
                answer = await self.run(
                    strategy, question, on_event=on_event, run_id=str(index), return_errors=True
                )
            await record(index, answer)

        async with anyio.create_task_group() as tg:
            for index, question in enumerate(questions):
                tg.start_soon(one, index, question)

    def _background(
        self, produce: Callable[[MemoryObjectSendStream[Any]], Awaitable[None]]
    ) -> EventStream:
        if self._tg is None:
            raise ConfigurationError(
                "streaming needs a running engine: use `async with Engine(backend) as engine:` "
                "and call engine.stream(...) / engine.as_completed(...) inside it"
            )
        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        scope = anyio.CancelScope()

        async def runner() -> None:
            async with send:
                with scope:
                    await produce(send)

        self._tg.start_soon(runner)
        return EventStream(receive, scope)
