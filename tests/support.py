"""Helpers shared by the test modules: strategies built from a function, event folding."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio

from sotflow import (
    AnswerDelta,
    AnswerReset,
    BuildContext,
    Event,
    Graph,
    StreamReset,
    TextDelta,
)


class GraphStrategy:
    """A strategy whose graph comes from a function, so each test can draw its own."""

    def __init__(self, build: Callable[[str], Graph], name: str = "graph") -> None:
        self._build = build
        self.name = name
        self.built: list[BuildContext] = []

    def build(self, question: str, ctx: BuildContext) -> Graph:
        self.built.append(ctx)
        return self._build(question)


def node_text(events: Iterable[Event], node: str, index: int = 0) -> str:
    """The text a node streamed, minus whatever a ``StreamReset`` withdrew."""
    pieces: list[str] = []
    for event in events:
        if isinstance(event, TextDelta) and event.node == node and event.index == index:
            pieces.append(event.text)
        elif isinstance(event, StreamReset) and event.node == node:
            pieces.clear()
    return "".join(pieces)


def answer_text(events: Iterable[Event]) -> str:
    """The answer as a reader would see it: ``AnswerDelta``s minus ``AnswerReset`` chars."""
    text = ""
    for event in events:
        if isinstance(event, AnswerDelta):
            text += event.text
        elif isinstance(event, AnswerReset):
            assert 0 < event.chars <= len(text), (event.chars, text)
            text = text[: len(text) - event.chars]
    return text


async def wait_until(predicate: Callable[[], bool], within_s: float = 3.0) -> None:
    """Poll ``predicate`` until it holds; fail with TimeoutError after ``within_s``.

    For counters kept by another process or another task (nothing to await on).
    """
    with anyio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def cancel_once(
    predicate: Callable[[], bool], work: Callable[[], Awaitable[Any]], within_s: float = 10.0
) -> None:
    """Run ``work`` and cancel it the moment ``predicate`` holds (e.g. its calls are all
    in flight): a fixed delay instead could pass before a loaded machine got there."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        await wait_until(predicate, within_s)
        tg.cancel_scope.cancel()
