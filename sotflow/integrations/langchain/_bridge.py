"""How LangChain's calls drive sotflow runs: sync and async, events live, text in order.

Async calls run on the caller's event loop. Sync calls (``invoke``, ``stream``) run on
one background event loop shared by every sync call in the process, and their events
are handed to the calling thread as they happen, so callbacks see nodes finish live.
What a run emits is folded by ``RunFeed``: node and retry events become LangChain
custom events, the answer's text comes out in reading order and append-only (LangChain
chunks cannot be taken back), and the final answer (or the run's error) is kept.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import math
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from uuid import UUID

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from langchain_core.callbacks.manager import ahandle_event, handle_event

from ...events import (
    AnswerDelta,
    AnswerReset,
    Event,
    NodeFailed,
    NodeFinished,
    Retrying,
    RunFinished,
)
from ...types import Answer

__all__ = ["SYNC_LOOP", "Publisher", "RunFeed", "custom_event", "run_async", "run_sync"]

Put = Callable[[Any], None]
Work = Callable[[Put], Awaitable[None]]


class Failure:
    """A run's exception, handed over like any other item."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


# ---------------------------------------------------------------------- sync calls
class _SyncLoop:
    """One background event loop for every sync call (started on first use).

    It stops at interpreter exit; as it shuts down it closes what its calls opened
    (HTTP sessions close with their loop), so a script that never closes anything
    leaves no unclosed-session warning.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._manager: Any = None
        self._portal: BlockingPortal | None = None
        self._registered = False

    def portal(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                manager = start_blocking_portal(name="sotflow-langchain")
                self._portal = manager.__enter__()
                self._manager = manager
                if not self._registered:
                    atexit.register(self.stop)
                    self._registered = True
            return self._portal

    @property
    def running(self) -> bool:
        return self._portal is not None

    def submit(self, fn: Callable[[], Awaitable[Any]]) -> None:
        """Start ``fn`` on the loop if it runs, without waiting (from any other thread)."""
        portal = self._portal
        if portal is not None:
            with contextlib.suppress(RuntimeError):  # stopped, or called from its own thread
                portal.start_task_soon(fn)

    def call(self, fn: Callable[[], Awaitable[Any]]) -> None:
        """Run ``fn`` on the loop and wait for it, if the loop runs."""
        portal = self._portal
        if portal is not None:
            portal.call(fn)

    def stop(self) -> None:
        with self._lock:
            portal, manager = self._portal, self._manager
            self._portal = self._manager = None
        if portal is None:
            return
        with contextlib.suppress(RuntimeError):
            portal.call(portal.stop, True)  # cancel whatever still runs
        manager.__exit__(None, None, None)


SYNC_LOOP = _SyncLoop()


def run_sync(work: Work) -> Iterator[Any]:
    """Run ``work`` on the background loop; yield what it puts, in this thread, live.

    Leaving the loop early (a ``break`` out of a stream) cancels the work.
    """
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    done = object()

    async def main() -> None:
        try:
            await work(items.put)
        finally:
            items.put(done)

    future = SYNC_LOOP.portal().start_task_soon(main)
    try:
        while (item := items.get()) is not done:
            yield item
    finally:
        future.cancel()


# ---------------------------------------------------------------------- async calls
async def run_async(work: Work) -> AsyncIterator[Any]:
    """Run ``work`` beside the caller on its loop; yield what it puts.

    LangChain advances an async stream from a new asyncio task at each step, so no
    task group may stay open across a ``yield``: the work gets a task of its own, and
    leaving early cancels it and waits for it, so nothing is left unretrieved.
    """
    send, receive = anyio.create_memory_object_stream[Any](math.inf)

    def put(item: Any) -> None:
        # A reader that stopped listening closed the stream: the work is being cancelled.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            send.send_nowait(item)

    async def main() -> None:
        with send:
            await work(put)

    task = asyncio.get_running_loop().create_task(main())
    try:
        with receive:
            async for item in receive:
                yield item
    finally:
        if not task.done():
            task.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------------- events
def custom_event(event: Event) -> tuple[str, dict[str, Any]] | None:
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


class Publisher:
    """Sends custom events to the callback handlers of one LangChain run."""

    def __init__(
        self,
        handlers: list[Any],
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.handlers = handlers
        self.run_id = run_id
        self.tags = tags or []
        self.metadata = metadata or {}

    @classmethod
    def of(cls, run_manager: Any) -> Publisher | None:
        if run_manager is None:
            return None
        return cls(run_manager.handlers, run_manager.run_id, run_manager.tags, run_manager.metadata)

    def _args(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tags": self.tags, "metadata": self.metadata}

    def publish(self, name: str, data: Any) -> None:
        if self.handlers:
            handle_event(
                self.handlers, "on_custom_event", "ignore_custom_event", name, data, **self._args()
            )

    async def apublish(self, name: str, data: Any) -> None:
        if self.handlers:
            await ahandle_event(
                self.handlers, "on_custom_event", "ignore_custom_event", name, data, **self._args()
            )


class _AppendOnly:
    """The answer in reading order, released only as far as it can no longer change.

    The engine may withdraw text (``AnswerReset``: a retried stream, a failed part);
    LangChain chunks cannot be withdrawn. So text goes out while it extends what went
    out before; after a withdrawal it waits until the new text has caught up again
    (a retry that writes the same text streams on seamlessly). A tail that could be the
    start of a stop sequence is held back too, and nothing after a stop sequence goes out.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.current = ""
        self.sent = ""

    def cut(self, text: str) -> tuple[str, bool]:
        """``text`` up to its first stop sequence, and whether one was found."""
        positions = [p for p in (text.find(s) for s in self.stops) if p >= 0]
        return (text[: min(positions)], True) if positions else (text, False)

    def _release(self, visible: str) -> str:
        if not visible.startswith(self.sent):
            return ""  # withdrawn text not yet written again
        new, self.sent = visible[len(self.sent) :], visible
        return new

    def feed(self, item: AnswerDelta | AnswerReset) -> str:
        if isinstance(item, AnswerDelta):
            self.current += item.text
        else:
            self.current = self.current[: max(0, len(self.current) - item.chars)]
        visible, stopped = self.cut(self.current)
        if not stopped and self.hold:
            visible = visible[: max(0, len(visible) - self.hold)]
        return self._release(visible)

    def finish(self, text: str) -> tuple[str, bool]:
        """The rest of the final text, and whether the chunks sent add up to it."""
        final, _ = self.cut(text)
        if final.startswith(self.sent):
            return final[len(self.sent) :], True
        return "", False


class RunFeed:
    """Folds the items of one run: custom events, released text, the final answer."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self.text = _AppendOnly(stops)
        self.answer: Answer | None = None
        self.failure: BaseException | None = None

    def take(self, item: Any) -> tuple[tuple[str, dict[str, Any]] | None, str]:
        """A custom event to publish (or None), and answer text to release (or "")."""
        if isinstance(item, AnswerDelta | AnswerReset):
            return None, self.text.feed(item)
        if isinstance(item, RunFinished):
            self.answer = item.answer
            return None, ""
        if isinstance(item, Failure):
            self.failure = item.error
            return None, ""
        return custom_event(item), ""

    def result(self) -> Answer:
        if self.failure is not None:
            raise self.failure
        if self.answer is None:
            raise RuntimeError("the run ended without an answer")
        return self.answer


async def produce(run: Callable[[Put], Awaitable[Any]], put: Put) -> None:
    """Run a strategy, handing every event to ``put``; a failure is handed over too."""
    try:
        await run(put)
    except Exception as exc:
        put(Failure(exc))
