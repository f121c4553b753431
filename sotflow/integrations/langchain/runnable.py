"""SotflowRunnable: a pipeline step that returns sotflow's whole ``Answer``.

    chain = ChatPromptTemplate.from_template("{topic}: tips?") | SotflowRunnable(
        strategy=sotflow.SkeletonOfThought(), backend=sotflow.OpenAIBackend(), output="answer"
    )

Where a chat model's message is enough, use ``ChatSotflow``; this step is for the
points, the trace and the skeleton. Input: a string, a dict with ``question``, a list
of messages, or a prompt value. Output: the ``Answer`` with ``output="answer"``, its text
with ``output="text"`` (the default). ``stream``/``astream`` yield the text in reading
order (with ``output="answer"``: the answer, once, at the end); ``astream_events`` (v2)
carries one ``sotflow_node`` custom event per graph node and one ``sotflow_retry`` per
retry. It runs on the same machinery as ``ChatSotflow``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.messages import AnyMessage
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.runnables import Runnable, RunnableConfig
from typing_extensions import TypedDict

from ...backends.base import Backend
from ...engine import Engine
from ...errors import ConfigurationError
from ...strategies.base import Strategy
from ...strategies.registry import make_strategy
from ...strategies.skeleton import SkeletonOfThought
from ...types import Answer
from ._bridge import SYNC_LOOP, RunFeed, produce, run_async, run_sync
from ._convert import to_question

__all__ = ["SotflowRunnable"]


class QuestionDict(TypedDict):
    question: str


SotflowInput = str | QuestionDict | list[AnyMessage] | StringPromptValue | ChatPromptValue


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

    @property
    def InputType(self) -> Any:
        return SotflowInput

    @property
    def OutputType(self) -> Any:
        return str if self.output == "text" else Answer

    def _work(self, value: Any) -> Any:
        question = to_question(value)

        async def run(put: Any) -> None:
            await self.engine.run(self.strategy, question, on_event=put)

        return functools.partial(produce, run)

    def _value(self, feed: RunFeed) -> Any:
        answer = feed.result()
        return answer.text if self.output == "text" else answer

    # -- sync --------------------------------------------------------------------------

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _invoke(self, value: Any, config: RunnableConfig) -> Any:
        feed = RunFeed()
        for item in run_sync(self._work(value)):
            custom, _ = feed.take(item)
            if custom is not None:
                dispatch_custom_event(*custom, config=config)
        return self._value(feed)

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self._transform_stream_with_config(
            iter([input]), self._transform, config, **kwargs
        )

    def _transform(self, inputs: Iterator[Any], config: RunnableConfig) -> Iterator[Any]:
        values = list(inputs)
        feed = RunFeed()
        for item in run_sync(self._work(values[-1] if values else None)):
            custom, text = feed.take(item)
            if custom is not None:
                dispatch_custom_event(*custom, config=config)
            if text and self.output == "text":
                yield text
        yield from self._rest(feed)

    def _rest(self, feed: RunFeed) -> Iterator[Any]:
        value = self._value(feed)
        if self.output == "answer":
            yield value
        else:
            rest, _ = feed.text.finish(value)
            if rest:
                yield rest

    # -- async -------------------------------------------------------------------------

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    async def _ainvoke(self, value: Any, config: RunnableConfig) -> Any:
        feed = RunFeed()
        async for item in run_async(self._work(value)):
            custom, _ = feed.take(item)
            if custom is not None:
                await adispatch_custom_event(*custom, config=config)
        return self._value(feed)

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
        feed = RunFeed()
        async for item in run_async(self._work(values[-1] if values else None)):
            custom, text = feed.take(item)
            if custom is not None:
                await adispatch_custom_event(*custom, config=config)
            if text and self.output == "text":
                yield text
        for value in self._rest(feed):
            yield value

    # -- resources ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the backend's sessions on the sync calls' loop (they reopen if used)."""
        SYNC_LOOP.call(self.engine.aclose)

    async def aclose(self) -> None:
        await self.engine.aclose()
