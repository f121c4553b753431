"""sotflow as a LangChain step: a real ``langchain_core`` Runnable.

    chain = ChatPromptTemplate.from_template("{topic}: tips?") | SotflowRunnable(
        strategy=sotflow.SkeletonOfThought(), backend=sotflow.OpenAIBackend()
    ) | StrOutputParser()

Input: a string, a dict with ``question``, a list of messages (message objects,
``("human", "...")`` pairs or role/content dicts, as chat models take), or a prompt value.
Output: the answer text (``output="answer"`` for the whole ``sotflow.Answer``).
``stream``/``astream`` yield the answer in reading order; ``astream_events`` (v2) also
carries one custom event per graph node (``sotflow_node``) and one per retry
(``sotflow_retry``). The backend's limits hold across everything, nested fan-out
included; sync calls share one background event loop so they share them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from typing_extensions import TypedDict

try:
    from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
    from langchain_core.messages import AnyMessage, BaseMessage, convert_to_messages
    from langchain_core.prompt_values import ChatPromptValue, PromptValue, StringPromptValue
    from langchain_core.runnables import Runnable, RunnableConfig
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "sotflow.integrations.langchain needs langchain-core: pip install 'sotflow[langchain]'"
    ) from exc

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ..backends.base import Backend
from ..engine import Engine
from ..errors import ConfigurationError
from ..events import AnswerDelta, Event, NodeFailed, NodeFinished, Retrying, RunFinished
from ..strategies.base import Strategy
from ..strategies.registry import make_strategy
from ..strategies.skeleton import SkeletonOfThought
from ..types import Answer

__all__ = ["SotflowRunnable", "to_question"]


class QuestionDict(TypedDict):
    question: str


SotflowInput = str | QuestionDict | list[AnyMessage] | StringPromptValue | ChatPromptValue


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = [p if isinstance(p, str) else str(p.get("text", "")) for p in content]
    return "".join(parts)


def _messages(items: list[Any]) -> list[BaseMessage]:
    # What LangChain's chat models take as messages: message objects, ("human", "...")
    # pairs, {"role": ..., "content": ...} dicts and plain strings.
    try:
        return convert_to_messages(items)
    except (NotImplementedError, ValueError, TypeError) as exc:
        # LangChain's message ends with a troubleshooting link on a line of its own.
        reason = next(iter(str(exc).splitlines()), type(exc).__name__)
        raise ConfigurationError(
            "a list input must hold messages: message objects, (role, text) pairs or "
            f"{{'role': ..., 'content': ...}} dicts; {reason}"
        ) from None


def to_question(value: Any) -> str:
    """Turn any accepted input into the question text a strategy answers."""
    if isinstance(value, PromptValue):
        value = value.to_messages()
    elif isinstance(value, BaseMessage):
        value = [value]
    elif isinstance(value, list) and value:
        value = _messages(value)
    if isinstance(value, str):
        question = value
    elif isinstance(value, dict):
        question = value.get("question")
        if not isinstance(question, str):
            raise ConfigurationError(
                f"a dict input needs a 'question' string; got keys {sorted(value)}"
            )
    elif isinstance(value, list):
        system = [_text(m) for m in value if m.type == "system"]
        turns = [m for m in value if m.type != "system"]
        if len(turns) == 1 and turns[0].type == "human":
            body = _text(turns[0])
        else:
            body = "\n".join(
                f"{'User' if m.type == 'human' else 'Assistant'}: {_text(m)}" for m in turns
            )
        question = "\n\n".join([*system, body])
    else:
        raise ConfigurationError(
            "SotflowRunnable takes a string, a dict with 'question', a list of messages or "
            f"a prompt value; got {type(value).__name__}"
        )
    if not question.strip():
        raise ConfigurationError("the question is empty")
    return question


def _custom(event: Event) -> tuple[str, dict[str, Any]] | None:
    """The LangChain custom event for a sotflow event, if it is one we publish."""
    if isinstance(event, NodeFinished | NodeFailed):
        data: dict[str, Any] = {"run_id": event.run_id, "node": event.node, "kind": event.kind}
        if isinstance(event, NodeFinished):
            data.update(status="ok", duration_s=event.duration_s)
            data["usage"] = event.usage.model_dump() if event.usage else None
        else:
            data.update(status="cancelled" if event.cancelled else "failed")
            data["error"] = event.error.model_dump()
        return "sotflow_node", data
    if isinstance(event, Retrying):
        return "sotflow_retry", {
            "run_id": event.run_id,
            "node": event.node,
            "attempt": event.attempt,
            "wait_s": event.wait_s,
            "error": event.error.model_dump(),
        }
    return None


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Collected:
    """What a run handed back: its answer, or the exception it failed with."""

    __slots__ = ("answer", "failure")

    def __init__(self) -> None:
        self.answer: Answer | None = None
        self.failure: BaseException | None = None

    def take(self, item: Any) -> tuple[str, dict[str, Any]] | None:
        """Record a final item; for a node or retry event, the custom event to publish."""
        if isinstance(item, _Failure):
            self.failure = item.error
            return None
        if isinstance(item, RunFinished):
            self.answer = item.answer
            return None
        return _custom(item)

    def result(self, output: str) -> Any:
        if self.failure is not None:
            raise self.failure
        assert self.answer is not None
        return self.answer.text if output == "text" else self.answer


def _shut_down(manager: Any, portal: BlockingPortal, engine: Engine) -> None:
    """Close the engine's backends on the sync calls' loop, then stop that loop."""
    try:
        portal.call(engine.aclose)
    finally:
        manager.__exit__(None, None, None)


class SotflowRunnable(Runnable[Any, Any]):
    """Run a sotflow strategy as one step of a LangChain pipeline."""

    def __init__(
        self,
        strategy: Strategy | str | None = None,
        backend: Backend | None = None,
        *,
        output: Literal["text", "answer"] = "text",
        name: str | None = None,
        **engine_options: Any,
    ) -> None:
        if backend is None:
            raise ConfigurationError(
                "SotflowRunnable needs a backend, e.g. backend=sotflow.OpenAIBackend(...)"
            )
        if output not in ("text", "answer"):
            raise ConfigurationError(f"output must be 'text' or 'answer', got {output!r}")
        if isinstance(strategy, str):
            strategy = make_strategy(strategy)  # by name, as the CLI's --strategy
        elif strategy is not None and (
            isinstance(strategy, type) or not isinstance(strategy, Strategy)
        ):
            raise ConfigurationError(
                "strategy must be a sotflow strategy instance (SkeletonOfThought(), Direct(), "
                f"...) or its name ('sot', 'direct', ...); got {strategy!r}"
            )
        self.strategy = strategy if strategy is not None else SkeletonOfThought()
        self.backend = backend
        self.output = output
        self.name = name or f"sotflow[{self.strategy.name}]"
        self.engine = Engine(backend, **engine_options)
        self._portal: BlockingPortal | None = None
        self._shutdown: weakref.finalize[Any, Any] | None = None
        self._portal_lock = threading.Lock()

    # -- schema ----------------------------------------------------------------------

    @property
    def InputType(self) -> Any:
        return SotflowInput

    @property
    def OutputType(self) -> Any:
        return str if self.output == "text" else Answer

    # -- async -------------------------------------------------------------------------

    async def _produce(self, question: str, put: Any) -> None:
        """Run the strategy, handing every event to ``put``; a failure is handed too."""
        try:
            await self.engine.run(self.strategy, question, on_event=put)
        except Exception as exc:
            put(_Failure(exc))

    async def _ainvoke(self, value: Any, config: RunnableConfig) -> Any:
        question = to_question(value)
        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                async with send:
                    await self._produce(question, send.send_nowait)

            tg.start_soon(produce)
            collected = _Collected()
            async with receive:
                async for item in receive:
                    if custom := collected.take(item):
                        await adispatch_custom_event(*custom, config=config)
        return collected.result(self.output)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke_with_config, input, config, **kwargs)

    async def _ainvoke_with_config(self, value: Any, config: RunnableConfig) -> Any:
        return await self._ainvoke(value, config)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def once() -> AsyncIterator[Any]:
            yield input

        async for chunk in self._atransform_stream_with_config(
            once(), self._atransform, config, **kwargs
        ):
            yield chunk

    async def _atransform(
        self, inputs: AsyncIterator[Any], config: RunnableConfig
    ) -> AsyncIterator[Any]:
        # A LangChain transform receives its input as a stream; ours is one whole value.
        values = [v async for v in inputs]
        question = to_question(values[-1] if values else None)
        send, receive = anyio.create_memory_object_stream[Any](math.inf)

        async def produce() -> None:
            async with send:
                await self._produce(question, send.send_nowait)

        # LangChain advances this generator from a new task at each step, so nothing
        # here may hold a task group across a yield: the run gets a task of its own.
        task = asyncio.get_running_loop().create_task(produce())
        collected = _Collected()
        try:
            async with receive:
                async for item in receive:
                    if isinstance(item, AnswerDelta):
                        if self.output == "text":
                            yield item.text
                    elif custom := collected.take(item):
                        await adispatch_custom_event(*custom, config=config)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        result = collected.result(self.output)
        if self.output == "answer":
            yield result

    # -- sync: one background event loop for every sync call ---------------------------

    def portal(self) -> BlockingPortal:
        with self._portal_lock:
            if self._portal is None:
                manager = start_blocking_portal()
                self._portal = manager.__enter__()
                # Also at interpreter exit, for scripts that never call close(): the
                # backend's HTTP session lives on this loop and must be closed on it,
                # or aiohttp reports it as unclosed when the loop goes away.
                self._shutdown = weakref.finalize(
                    self, _shut_down, manager, self._portal, self.engine
                )
            return self._portal

    def close(self) -> None:
        """Stop the background event loop that sync calls use (started on first use)."""
        with self._portal_lock:
            shutdown, self._shutdown = self._shutdown, None
            self._portal = None
        if shutdown is not None:
            shutdown()

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _invoke(self, value: Any, config: RunnableConfig) -> Any:
        question = to_question(value)
        events: list[Any] = []
        self.portal().call(self._produce, question, events.append)
        collected = _Collected()
        for item in events:
            if custom := collected.take(item):
                dispatch_custom_event(*custom, config=config)
        return collected.result(self.output)

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self._transform_stream_with_config(
            iter([input]), self._transform, config, **kwargs
        )

    def _transform(self, inputs: Iterator[Any], config: RunnableConfig) -> Iterator[Any]:
        values = list(inputs)
        question = to_question(values[-1] if values else None)
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        done = object()

        async def produce() -> None:
            try:
                await self._produce(question, items.put)
            finally:
                items.put(done)

        future = self.portal().start_task_soon(produce)
        collected = _Collected()
        try:
            while (item := items.get()) is not done:
                if isinstance(item, AnswerDelta):
                    if self.output == "text":
                        yield item.text
                elif custom := collected.take(item):
                    dispatch_custom_event(*custom, config=config)
        finally:
            future.cancel()
        result = collected.result(self.output)
        if self.output == "answer":
            yield result
