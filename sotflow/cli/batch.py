"""Running a batch: launch under a concurrency cap, write each item as it finishes.

Ctrl-C (or SIGTERM) stops launching new questions and gives the ones in flight a grace
period to finish; a second Ctrl-C, or the end of the grace period, cancels them.
Unfinished items are simply not written, so ``--resume`` redoes exactly those. An
error that would fail every item the same way (a bad API key, no quota left, an
endpoint that does not answer) also stops the launching, instead of writing a thousand
identical failures. When stdout's reader goes away (``-o - | head``), everything stops:
nobody is left to take the records.

How an item is answered is the caller's: ``answer_with(engine, strategy)`` in this
process, or a pool of Ray workers (``sotflow batch --ray``); the order, the stopping and
the writing stay here, in one place, for both.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from ..engine import Engine
from ..strategies.base import Strategy
from .records import InputItem, OutputWriter, ReaderGone, answer_record, error_record
from .report import BatchStats

__all__ = ["Answerer", "BatchOutcome", "answer_with", "run_batch"]

FATAL_ERRORS = frozenset({"AuthenticationError", "QuotaExceededError", "EndpointUnreachableError"})

Answerer = Callable[[InputItem], Awaitable[dict[str, Any]]]
"""Answers one item with its output record (an answer or an error, never a raise)."""


def answer_with(engine: Engine, strategy: Strategy) -> Answerer:
    """The record of one item answered by ``strategy`` on ``engine``."""

    async def answer(item: InputItem) -> dict[str, Any]:
        assert item.question is not None
        result = await engine.run(strategy, item.question, return_errors=True, run_id=item.key)
        return answer_record(item, result)

    return answer


@dataclass
class BatchOutcome:
    interrupted: bool = False
    fatal: str | None = None
    """The message of an error that stopped the batch (see ``FATAL_ERRORS``)."""
    fatal_type: str | None = None
    reader_gone: bool = False
    unfinished: int = 0


async def run_batch(
    items: list[InputItem],
    *,
    answer: Answerer,
    writer: OutputWriter,
    stats: BatchStats,
    concurrency: int,
    ordered: bool,
    on_progress: Callable[[], None] = lambda: None,
    grace_s: float = 10.0,
    notify: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> BatchOutcome:
    outcome = BatchOutcome()
    runs = anyio.Semaphore(concurrency)
    # In order mode, finished items wait for earlier ones in a buffer of bounded size.
    window = anyio.Semaphore(max(64, 4 * concurrency)) if ordered else None
    waiting: dict[int, dict[str, Any]] = {}
    next_out = 0
    written = 0
    # However the items are answered (Ray workers redo a dead one's), an id is written once.
    emitted: set[str] = set()
    stopping = anyio.Event()
    work_scope = anyio.CancelScope()

    def write(record: dict[str, Any]) -> None:
        """Raises ReaderGone when stdout's reader has left."""
        nonlocal written
        key = str(record["id"])
        if key not in emitted:
            writer.write(record)
            emitted.add(key)
        written += 1

    def emit(position: int, record: dict[str, Any]) -> None:
        nonlocal next_out
        try:
            if window is None:
                write(record)
            else:
                waiting[position] = record
                while next_out in waiting:
                    write(waiting.pop(next_out))
                    next_out += 1
                    window.release()
        except ReaderGone:
            outcome.reader_gone = True
            stopping.set()
            work_scope.cancel()
            return
        stats.add(record)
        on_progress()
        error = record.get("error") or {}
        if error.get("type") in FATAL_ERRORS and not stopping.is_set():
            outcome.fatal = error.get("message") or error["type"]
            outcome.fatal_type = error["type"]
            stopping.set()

    async def launch(position: int, item: InputItem) -> None:
        stats.in_flight += 1
        try:
            try:
                record = await answer(item)
            finally:
                stats.in_flight -= 1
            # Recorded before the slot is freed: a fatal error stops the next launch.
            emit(position, record)
        finally:
            runs.release()

    async def cancel_after_grace() -> None:
        await anyio.sleep(grace_s)
        work_scope.cancel()

    async def watch_signals(tg: anyio.abc.TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if not stopping.is_set():
                    outcome.interrupted = True
                    stopping.set()
                    notify(
                        f"sotflow: stopping; no new questions. Waiting up to {grace_s:g} s for "
                        "those in flight (Ctrl-C again to cancel them now)."
                    )
                    tg.start_soon(cancel_after_grace)
                else:
                    outcome.interrupted = True
                    work_scope.cancel()

    async with anyio.create_task_group() as outer:
        if _can_watch_signals():
            outer.start_soon(watch_signals, outer)
        with work_scope:
            async with anyio.create_task_group() as work:
                for position, item in enumerate(items):
                    if window is not None:
                        await window.acquire()
                    if stopping.is_set():
                        break
                    if item.problem is not None:
                        emit(position, error_record(item, "InputError", item.problem))
                        continue
                    await runs.acquire()
                    if stopping.is_set():
                        runs.release()
                        break
                    work.start_soon(launch, position, item)
        outer.cancel_scope.cancel()
    # Finished items still held back by an unfinished earlier one: better out of order
    # than lost (the earlier one is redone by --resume).
    for position in sorted(waiting):
        record = waiting.pop(position)
        if outcome.reader_gone:
            continue
        try:
            write(record)
        except ReaderGone:
            outcome.reader_gone = True
    outcome.unfinished = len(items) - written
    return outcome


def _can_watch_signals() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
