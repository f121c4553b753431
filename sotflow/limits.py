"""Limits shared by every call to one backend: in-flight cap, requests/min, tokens/min.

A ``Limiter`` belongs to a backend, so every node of every run that talks to that
backend, from any number of engines, waits in the same queues. It also carries the
backend's ``ConnectionBreaker`` (``sotflow.breaker``): every call passes here, so this
is where a dead endpoint is seen by all of them at once.

Rates use a sliding window: at most ``rpm`` calls start, and at most ``tpm`` tokens
are charged, in any ``window_s`` seconds. A call is charged an estimate when it starts
(prompt tokens plus ``n * max_tokens``, as providers count it) and the charge is
corrected to the real usage when it ends, so a generous ``max_tokens`` only holds
capacity for as long as the call runs.

A fair limiter (``fair=True``, what ``sotflow serve`` uses for all its clients) keeps
one queue per client and serves the clients in turn, one call each, so one client's
batch of 1,000 does not starve another client's single question. A call belongs to the
client named by the innermost ``client_scope`` around it (tasks started inside inherit
it, as they inherit every context variable).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from .breaker import ConnectionBreaker
from .errors import ConfigurationError

__all__ = ["Limiter", "Ticket", "client_scope"]

_CLIENT: ContextVar[Hashable] = ContextVar("sotflow_client", default=None)


@contextmanager
def client_scope(client: Hashable) -> Iterator[None]:
    """Calls made inside the block (by this task and the tasks it starts) are ``client``'s."""
    token = _CLIENT.set(client)
    try:
        yield
    finally:
        _CLIENT.reset(token)


class _Entry:
    __slots__ = ("amount", "at", "live")

    def __init__(self, at: float, amount: int) -> None:
        self.at = at
        self.amount = amount
        self.live = True


class _Window:
    """Amounts charged in the last ``window_s`` seconds, oldest first."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.entries: deque[_Entry] = deque()
        self.total = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self.entries and self.entries[0].at <= horizon:
            entry = self.entries.popleft()
            entry.live = False
            self.total -= entry.amount

    def wait_s(self, amount: int, now: float) -> float:
        """Seconds until ``amount`` more fits; 0 if it fits now.

        A single charge larger than the whole limit is let through once the window is
        empty: refusing it forever would hang the run.
        """
        self._expire(now)
        if self.total + amount <= self.limit or not self.entries:
            return 0.0
        excess = self.total + amount - self.limit
        freed = 0
        for entry in self.entries:
            freed += entry.amount
            if freed >= excess:
                return entry.at + self.window_s - now
        return self.entries[-1].at + self.window_s - now

    def charge(self, amount: int, now: float) -> _Entry:
        entry = _Entry(now, amount)
        self.entries.append(entry)
        self.total += amount
        return entry

    def correct(self, entry: _Entry, amount: int) -> None:
        if entry.live:
            self.total += amount - entry.amount
        entry.amount = amount


@dataclass(slots=True)
class Ticket:
    """A granted slot; ``settle`` replaces the token estimate with the real count."""

    _window: _Window | None
    _entry: _Entry | None
    _on_freed: Callable[[], None] | None = None

    def settle(self, tokens: int) -> None:
        if self._window is not None and self._entry is not None:
            before = self._entry.amount
            self._window.correct(self._entry, max(0, tokens))
            if self._entry.amount < before and self._on_freed is not None:
                # Capacity came back early: a waiter may fit now, not when the window slides.
                self._on_freed()


class _Waiter:
    __slots__ = ("event", "granted", "order")

    def __init__(self, order: tuple[float, int]) -> None:
        self.order = order
        self.event = anyio.Event()
        self.granted = False

    def __lt__(self, other: _Waiter) -> bool:
        return self.order < other.order


class _PriorityGate:
    """A counting semaphore that wakes the waiter with the lowest priority number first.

    The engine numbers runs in the order they start, so when calls queue for the cap,
    the calls of runs that started earlier go first: a saturated batch finishes the
    questions it began instead of advancing every question a little.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self.waiters: list[_Waiter] = []
        self.sequence = itertools.count()

    def resize(self, capacity: int) -> None:
        """A new capacity; slots held beyond it are not revoked, just not handed on."""
        self.free += capacity - self.capacity
        self.capacity = capacity
        while self.free > 0 and self.waiters:
            self.free -= 1
            waiter = heapq.heappop(self.waiters)
            waiter.granted = True
            waiter.event.set()

    async def acquire(self, priority: float) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        waiter = _Waiter((priority, next(self.sequence)))
        heapq.heappush(self.waiters, waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release()  # granted as we were cancelled: pass the slot on
            else:
                self.waiters.remove(waiter)
                heapq.heapify(self.waiters)
            raise

    def release(self) -> None:
        if self.free < 0:
            self.free += 1  # over a lowered capacity: this slot is retired, not handed on
            return
        if self.waiters:
            waiter = heapq.heappop(self.waiters)
            waiter.granted = True
            waiter.event.set()
        else:
            self.free += 1


class _FairGate:
    """A counting semaphore with one queue per client, the clients served in turn.

    A client whose call is granted goes to the back of the line if it has more calls
    waiting; a client that starts waiting joins at the back. Within one client's queue
    the lowest priority number goes first, as in ``_PriorityGate``.
    """

    def __init__(self, capacity: int) -> None:
        self.free = capacity
        self.queues: dict[Hashable, list[_Waiter]] = {}
        self.turns: deque[Hashable] = deque()
        self.sequence = itertools.count()

    async def acquire(self, priority: float) -> None:
        if self.free > 0 and not self.turns:
            self.free -= 1
            return
        client = _CLIENT.get()
        queue = self.queues.get(client)
        if queue is None:
            queue = self.queues[client] = []
            self.turns.append(client)
        waiter = _Waiter((priority, next(self.sequence)))
        heapq.heappush(queue, waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release()  # granted as we were cancelled: pass the slot on
            else:
                queue.remove(waiter)
                heapq.heapify(queue)
                if not queue:
                    del self.queues[client]
                    self.turns.remove(client)
            raise

    def release(self) -> None:
        if not self.turns:
            self.free += 1
            return
        client = self.turns.popleft()
        queue = self.queues[client]
        waiter = heapq.heappop(queue)
        if queue:
            self.turns.append(client)
        else:
            del self.queues[client]
        waiter.granted = True
        waiter.event.set()


class _LoopState:
    """anyio primitives belong to one event loop; a sync wrapper may start another."""

    __slots__ = ("freed", "gate", "lock", "rate_gate", "token")

    def __init__(self, token: object, max_concurrency: int | None, fair: bool) -> None:
        self.token = token
        gate = _FairGate if fair else _PriorityGate
        self.gate = gate(max_concurrency) if max_concurrency else None
        # Calls wait for the rate windows one at a time: in arrival order, or, when
        # fair, in the clients' turns.
        self.lock = anyio.Lock()
        self.rate_gate = _FairGate(1) if fair else None
        self.freed: anyio.Event | None = None

    @asynccontextmanager
    async def rate_turn(self, priority: float) -> AsyncIterator[None]:
        if self.rate_gate is None:
            async with self.lock:
                yield
            return
        await self.rate_gate.acquire(priority)
        try:
            yield
        finally:
            self.rate_gate.release()


class Limiter:
    """In-flight cap plus sliding-window request and token rates for one backend
    (``fair``: clients served in turn, see the module docstring)."""

    def __init__(
        self,
        max_concurrency: int | None = 64,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        window_s: float = 60.0,
        fair: bool = False,
        breaker: ConnectionBreaker | None = None,
    ) -> None:
        for name, value in (("max_concurrency", max_concurrency), ("rpm", rpm), ("tpm", tpm)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(
                    f"{name} must be a positive integer or None (no limit), got {value!r}"
                )
        if window_s <= 0:
            raise ConfigurationError(f"window_s must be positive, got {window_s!r}")
        self.max_concurrency = max_concurrency
        self.fair = fair
        self.rpm = rpm
        self.tpm = tpm
        self._requests = _Window(rpm, window_s) if rpm else None
        self._tokens = _Window(tpm, window_s) if tpm else None
        self._state: _LoopState | None = None
        self.breaker = breaker if breaker is not None else ConnectionBreaker()
        self.in_flight = 0
        self.peak_in_flight = 0

    def narrow(self, max_concurrency: int) -> None:
        """Lower the in-flight cap from now on (never raises it).

        For a server found to run one call at a time: calls queue here, outside their
        per-attempt timeout, instead of queueing at the server inside it.
        """
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if self.max_concurrency is not None and self.max_concurrency <= max_concurrency:
            return
        self.max_concurrency = max_concurrency
        state = self._state
        if state is None:
            return
        if state.gate is None:
            # The calls in flight took no slot from it; each gives one back as it ends.
            state.gate = _PriorityGate(max_concurrency)
            state.gate.free -= self.in_flight
        else:
            state.gate.resize(max_concurrency)

    def _loop_state(self) -> _LoopState:
        token = anyio.lowlevel.current_token()
        state = self._state
        if state is None or state.token != token:
            state = self._state = _LoopState(token, self.max_concurrency, self.fair)
        return state

    async def _wait_for_rate(self, state: _LoopState, tokens: int, priority: float) -> Ticket:
        requests, window = self._requests, self._tokens
        # One waiter at a time, so a big call is not starved by small ones.
        async with state.rate_turn(priority):
            while True:
                now = anyio.current_time()
                wait = 0.0
                if requests is not None:
                    wait = requests.wait_s(1, now)
                if window is not None:
                    wait = max(wait, window.wait_s(tokens, now))
                if wait <= 0:
                    break
                # Sleep until the window slides far enough, or until a running call
                # settles below its estimate and frees tokens sooner.
                state.freed = anyio.Event()
                with anyio.move_on_after(wait):
                    await state.freed.wait()
                state.freed = None
            if requests is not None:
                requests.charge(1, now)
            if window is not None:
                return Ticket(window, window.charge(tokens, now), self._wake)
        return Ticket(None, None)

    def _wake(self) -> None:
        state = self._state
        if state is not None and state.freed is not None:
            state.freed.set()

    @asynccontextmanager
    async def slot(self, tokens: int = 0, priority: float = 0.0) -> AsyncIterator[Ticket]:
        """Hold one in-flight slot and charge the rates for one call.

        The slot is taken before the rate windows so a call is charged when it is
        really about to be sent, not while it still queues for a slot. Among calls
        waiting for a slot, the lowest ``priority`` goes first (ties: arrival order).
        """
        state = self._loop_state()
        gate = state.gate
        if gate is not None:
            await gate.acquire(priority)
        try:
            if self._requests is not None or self._tokens is not None:
                ticket = await self._wait_for_rate(state, tokens, priority)
            else:
                ticket = Ticket(None, None)
            self.in_flight += 1
            if self.in_flight > self.peak_in_flight:
                self.peak_in_flight = self.in_flight
            try:
                yield ticket
            finally:
                self.in_flight -= 1
        finally:
            # A gate made (by ``narrow``) while this call ran counted it as holding a slot.
            current = gate if gate is not None else state.gate
            if current is not None:
                current.release()
