"""Limits that hold across a Ray cluster: one named actor keeps the budgets, workers lease them.

A ``Limiter`` caps the calls of one process. On a cluster every worker process has its
own, so ten workers would send ten times the account's limits. Here one actor, the
*broker* (``ClusterLimits.start``), holds the three budgets of the account: calls in
flight, requests per window and tokens per window. Each worker's backend gets a
``LeasedLimiter`` instead of its own ``Limiter``; the engine uses it exactly like one.
The worker leases budget from the broker in small blocks and spends it locally, so a
call that finds what it needs in its worker's hands never waits on the network.

The lease protocol
------------------
Every ``LeasedLimiter`` is a *holder* with an id of its own. All broker state lives in
the one actor (one event loop, so no locks), and every number below is on the broker:

- **Slots** (calls in flight). ``lease_slots(holder, want)`` grants between 1 and
  ``want`` slots, never more than are free, so the slots of all holders together never
  exceed the cap; with none free it waits up to ``poll_s`` for one and may grant 0 (the
  worker then asks again). Inside a worker, a finished call hands its slot straight to
  the worker's next waiting call (lowest priority first, as ``Limiter`` does); a slot
  nobody there waits for goes back at once (``release_slots``, fire-and-forget), so
  an idle worker holds nothing. One waiting call at a time asks the broker, for as many
  slots as there are calls waiting.
- **Rate credits** (requests and tokens). ``lease_rate(holder, need, want)`` grants a
  block of request and token credits once ``need`` fits the sliding windows, charging
  the windows at once. The worker may spend the block for ``credit_s`` seconds, counted
  from when it *asked* (on its own clock: no clock needs to agree with another's); the
  broker counts the grant in its windows for ``window_s + credit_s + 0.25`` seconds.
  Whenever within those ``credit_s`` the calls are really sent, every interval of
  ``window_s`` seconds holds no more than the caps. A worker asks for what its waiting
  call needs plus what it spent in the last ``credit_s`` (at most 1/20 of a cap), so a
  busy worker goes to the broker about once per ``credit_s``.
- **Refunds.** Credits a worker did not spend before its block lapsed, and the tokens a
  call did not use (its estimate minus its real usage, the correction ``Limiter`` makes
  too), are refunded to their grant (``refund``, fire-and-forget); a call that used more
  than its estimate is charged the difference the same way. While the block is still
  valid, unused tokens go back into the worker's own stock instead.
- **Expiry.** A thread in each worker renews its lease every ``ttl_s / 3`` seconds
  (``renew``), also while the event loop is busy. A holder the broker has not heard from
  for ``ttl_s`` seconds (a killed worker, a lost node) has its slots taken back; a
  driver that knows a worker is dead says so (``forget``) and the slots come back at
  once. Rate credits are never taken back: they are charged already and age out of the
  windows. An expired holder is refused from then on; a live worker that hears so (it
  stalled for longer than ``ttl_s``) takes a new holder id and leases afresh, and its
  calls still in flight count against no one until they end, so keep ``ttl_s`` far
  above any pause a live worker can have.
- **Cancellation.** A worker's call to ``lease_slots`` or ``lease_rate`` is shielded
  from cancellation (at most ``poll_s`` seconds), so a grant is never lost on the way.

The broker is not restarted if it dies (its state would be gone); calls that need it
then fail with an error saying so, and ``sotflow batch --resume`` redoes them.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import ray
from ray.exceptions import RayActorError

from ...errors import ConfigurationError
from ...limits import Limiter, Ticket, _Entry, _Window

__all__ = ["ClusterLimits", "LeasedLimiter"]

NAMESPACE = "sotflow"
# Time between a call's slot and its request reaching the wire, and clock-rate drift:
# the broker keeps each grant this much longer in its windows than it can be spent.
_SLACK_S = 0.25
# A worker prefetches at most this share of a rate cap in one block.
_BLOCK_SHARE = 20

T = TypeVar("T")


# -- the broker ---------------------------------------------------------------------------


def _room(window: _Window) -> int:
    """What still fits in ``window`` (after a ``wait_s`` that aged it out to now)."""
    return max(0, window.limit - window.total)


@dataclass
class _Holder:
    slots: int = 0
    seen: float = 0.0


class _Broker:
    """The actor behind ``ClusterLimits``: every budget of one account, leased out."""

    def __init__(
        self,
        max_concurrency: int | None,
        rpm: int | None,
        tpm: int | None,
        window_s: float,
        credit_s: float,
        ttl_s: float,
        poll_s: float,
    ) -> None:
        self.cap = max_concurrency
        self.settings = {
            "window_s": window_s,
            "credit_s": credit_s,
            "ttl_s": ttl_s,
            "poll_s": poll_s,
        }
        self.free = max_concurrency or 0
        span = window_s + credit_s + _SLACK_S
        self.requests = _Window(rpm, span) if rpm else None
        self.tokens = _Window(tpm, span) if tpm else None
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.holders: dict[str, _Holder] = {}
        self.expired: set[str] = set()
        self.grants: OrderedDict[int, tuple[_Entry | None, _Entry | None]] = OrderedDict()
        self.ids = itertools.count(1)
        self._changed: anyio.Event | None = None
        self.counts = {
            "peak_leased_slots": 0,
            "slot_leases": 0,
            "rate_leases": 0,
            "requests_granted": 0,
            "tokens_granted": 0,
            "reclaimed_slots": 0,
            "expired_holders": 0,
        }
        self.seen_holders: set[str] = set()

    # anyio primitives belong to the loop they are made on: the actor's, made lazily.
    def _event(self) -> anyio.Event:
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait(self, seconds: float) -> None:
        event = self._event()
        with anyio.move_on_after(max(0.0, seconds)):
            await event.wait()

    def _expire(self, now: float) -> None:
        for name, holder in list(self.holders.items()):
            if now - holder.seen > self.ttl_s:
                self._drop(name)

    def _drop(self, name: str) -> None:
        holder = self.holders.pop(name, None)
        self.expired.add(name)
        if holder is not None:
            self.counts["expired_holders"] += 1
            self.counts["reclaimed_slots"] += holder.slots
            self.free += holder.slots
            if holder.slots:
                self._notify()

    def _touch(self, name: str, now: float) -> _Holder:
        holder = self.holders.get(name)
        if holder is None:
            holder = self.holders[name] = _Holder()
            self.seen_holders.add(name)
        holder.seen = now
        return holder

    def caps(self) -> dict[str, Any]:
        return {
            "max_concurrency": self.cap,
            "rpm": self.requests.limit if self.requests else None,
            "tpm": self.tokens.limit if self.tokens else None,
            **self.settings,
        }

    async def lease_slots(self, name: str, want: int) -> int | None:
        """Between 1 and ``want`` slots, or 0 after ``poll_s`` with none free; ``None``
        for a holder that has expired (it must lease under a new id)."""
        start = anyio.current_time()
        while True:
            now = anyio.current_time()
            if name in self.expired:
                return None
            self._expire(now)
            holder = self._touch(name, now)
            if self.free > 0:
                granted = min(max(1, want), self.free)
                self.free -= granted
                holder.slots += granted
                self.counts["slot_leases"] += 1
                assert self.cap is not None
                leased = self.cap - self.free
                self.counts["peak_leased_slots"] = max(self.counts["peak_leased_slots"], leased)
                return granted
            if now - start >= self.poll_s:
                return 0
            await self._wait(self.poll_s - (now - start))

    def release_slots(self, name: str, count: int) -> None:
        holder = self.holders.get(name)
        if holder is None:  # expired: its slots came back already
            return
        count = min(count, holder.slots)
        holder.slots -= count
        holder.seen = anyio.current_time()
        self.free += count
        if count:
            self._notify()

    async def lease_rate(
        self, name: str, need_requests: int, want_requests: int, need_tokens: int, want_tokens: int
    ) -> tuple[int, int, int]:
        """``(grant id, requests, tokens)`` once the needs fit the windows; ``(0, 0, 0)``
        after ``poll_s`` if they do not fit yet."""
        start = anyio.current_time()
        while True:
            now = anyio.current_time()
            wait = 0.0
            if self.requests is not None and need_requests:
                wait = self.requests.wait_s(need_requests, now)
            if self.tokens is not None and need_tokens:
                wait = max(wait, self.tokens.wait_s(need_tokens, now))
            if wait <= 0:
                break
            if now - start >= self.poll_s:
                return 0, 0, 0
            await self._wait(min(wait, self.poll_s - (now - start)))
        requests = tokens = 0
        entries: list[_Entry | None] = [None, None]
        if self.requests is not None:
            requests = max(need_requests, min(want_requests, _room(self.requests)))
            if requests:
                entries[0] = self.requests.charge(requests, now)
        if self.tokens is not None:
            tokens = max(need_tokens, min(want_tokens, _room(self.tokens)))
            if tokens:
                entries[1] = self.tokens.charge(tokens, now)
        grant = next(self.ids)
        self.grants[grant] = (entries[0], entries[1])
        self.counts["rate_leases"] += 1
        self.counts["requests_granted"] += requests
        self.counts["tokens_granted"] += tokens
        self._prune()
        return grant, requests, tokens

    def refund(self, refunds: dict[int, tuple[int, int]]) -> None:
        """Give back ``(requests, tokens)`` per grant; a negative amount charges more."""
        for grant, (requests, tokens) in refunds.items():
            entries = self.grants.get(grant)
            if entries is None:
                continue
            for window, entry, amount in (
                (self.requests, entries[0], requests),
                (self.tokens, entries[1], tokens),
            ):
                if window is not None and entry is not None and amount:
                    window.correct(entry, max(0, entry.amount - amount))
        self._prune()
        self._notify()

    def _prune(self) -> None:
        # Grants are ordered by age; one whose entries left the windows can be forgotten.
        while self.grants:
            first = next(iter(self.grants.values()))
            if any(entry is not None and entry.live for entry in first):
                break
            self.grants.popitem(last=False)

    def renew(self, name: str) -> bool:
        """Keep ``name``'s lease; ``False`` if it has expired."""
        if name in self.expired:
            return False
        now = anyio.current_time()
        self._expire(now)
        holder = self.holders.get(name)
        if holder is not None:
            holder.seen = now
        return True

    def forget(self, name: str) -> None:
        """Take back a dead holder's slots now, instead of after ``ttl_s``."""
        self._drop(name)

    def stats(self) -> dict[str, Any]:
        now = anyio.current_time()
        self._expire(now)
        leased = (self.cap - self.free) if self.cap else 0
        return {
            **self.caps(),
            **self.counts,
            "leased_slots": leased,
            "holders": {name: h.slots for name, h in self.holders.items()},
            "holders_seen": len(self.seen_holders),
            "requests_in_window": self.requests.total if self.requests else 0,
            "tokens_in_window": self.tokens.total if self.tokens else 0,
        }


_BrokerActor = ray.remote(_Broker)


# -- the handle ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterLimits:
    """A handle on a cluster's shared budgets; cheap to pickle into every worker.

    >>> limits = ClusterLimits.start(max_concurrency=64, rpm=3000)
    >>> backend.limiter = limits.limiter()   # in each worker (AnswerQuestions does it)
    """

    name: str
    max_concurrency: int | None
    rpm: int | None
    tpm: int | None
    window_s: float = 60.0
    credit_s: float = 1.0
    ttl_s: float = 15.0
    poll_s: float = 0.5
    namespace: str = NAMESPACE
    # The handle of the actor on the driver that started it: while it is held, Ray keeps
    # the actor alive (it is not pickled; see __reduce__).
    handle: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def start(
        cls,
        max_concurrency: int | None = 64,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        name: str | None = None,
        window_s: float = 60.0,
        credit_s: float = 1.0,
        ttl_s: float = 15.0,
        poll_s: float = 0.5,
        detached: bool = False,
    ) -> ClusterLimits:
        """Start the broker actor (Ray must be initialised). ``detached`` keeps it after
        this driver exits, for several jobs sharing one account: ``ClusterLimits.connect``."""
        Limiter(max_concurrency, rpm, tpm, window_s=window_s)  # the same checks, same messages
        for label, value in (("credit_s", credit_s), ("ttl_s", ttl_s), ("poll_s", poll_s)):
            if not value > 0:
                raise ConfigurationError(f"{label} must be positive seconds, got {value!r}")
        if ttl_s <= 3 * poll_s:
            raise ConfigurationError(
                f"ttl_s ({ttl_s:g}) must be well above poll_s ({poll_s:g}): a worker waiting "
                "for a slot must not look dead"
            )
        _need_ray()
        name = name or f"sotflow-limits-{uuid.uuid4().hex[:12]}"
        options: dict[str, Any] = {
            "name": name,
            "namespace": NAMESPACE,
            "num_cpus": 0,
            "max_restarts": 0,
            "max_concurrency": 10_000,  # long-polling leases from every worker at once
        }
        if detached:
            options["lifetime"] = "detached"
        actor = _BrokerActor.options(**options).remote(  # type: ignore[attr-defined]
            max_concurrency, rpm, tpm, window_s, credit_s, ttl_s, poll_s
        )
        ray.get(actor.caps.remote())  # up before anyone leases from it
        return cls(name, max_concurrency, rpm, tpm, window_s, credit_s, ttl_s, poll_s, handle=actor)

    @classmethod
    def connect(cls, name: str, *, namespace: str = NAMESPACE) -> ClusterLimits:
        """The handle of a broker someone else started (by its name)."""
        _need_ray()
        try:
            actor = ray.get_actor(name, namespace=namespace)
        except ValueError as exc:
            raise ConfigurationError(
                f"no cluster limits named {name!r} in namespace {namespace!r}; start them "
                "with ClusterLimits.start(..., name=...) first"
            ) from exc
        return cls(name, **ray.get(actor.caps.remote()), namespace=namespace, handle=actor)

    def __reduce__(self) -> tuple[Any, ...]:
        # Copies (into workers) find the actor by name: an actor's constructor arguments
        # that hold a handle are kept in the object store, where Ray cannot promise them
        # to a restarted actor.
        return (
            ClusterLimits,
            (
                self.name, self.max_concurrency, self.rpm, self.tpm, self.window_s,
                self.credit_s, self.ttl_s, self.poll_s, self.namespace,
            ),
        )  # fmt: skip

    def actor(self) -> Any:
        if self.handle is not None:
            return self.handle
        try:
            return ray.get_actor(self.name, namespace=self.namespace)
        except ValueError as exc:
            raise ConfigurationError(
                f"the cluster limits actor {self.name!r} is gone (its driver ended, or it "
                "was stopped); start new limits for the next batch"
            ) from exc

    def limiter(self) -> LeasedLimiter:
        """A limiter for one worker process that leases from these limits."""
        return LeasedLimiter(self)

    def stats(self) -> dict[str, Any]:
        """The broker's counters: slots leased now and at peak, holders, grants."""
        return ray.get(self.actor().stats.remote())  # type: ignore[no-any-return]

    def forget(self, holder: str) -> None:
        """Take back the slots of a holder known to be dead (fire-and-forget)."""
        self.actor().forget.remote(holder)

    def stop(self) -> None:
        with suppress(ConfigurationError):
            ray.kill(self.actor())


def _need_ray() -> None:
    if not ray.is_initialized():
        raise ConfigurationError(
            "Ray is not initialised: call ray.init() (or ray.init(address=...) for a "
            "cluster) before starting cluster limits"
        )


# -- the worker's side --------------------------------------------------------------------


class _Waiter:
    __slots__ = ("event", "generation", "granted", "order")

    def __init__(self, order: tuple[float, int]) -> None:
        self.order = order
        self.event = anyio.Event()
        self.granted = False
        self.generation = 0

    def __lt__(self, other: _Waiter) -> bool:
        return self.order < other.order


@dataclass(eq=False)
class _Credit:
    """A leased block of rate credits, spendable until ``deadline`` (worker clock)."""

    grant: int
    requests: int
    tokens: int
    deadline: float


@dataclass(slots=True)
class _LeasedTicket(Ticket):
    """A granted call; ``settle`` corrects its token charge on the grants it drew from."""

    _limiter: LeasedLimiter | None = None
    _parts: list[tuple[_Credit, int]] = field(default_factory=list)

    def settle(self, tokens: int) -> None:
        if self._limiter is not None:
            self._limiter._settle(self._parts, max(0, tokens))
            self._limiter = None  # settled once; a second settle changes nothing


class _LoopState:
    """anyio primitives belong to one event loop: the worker's."""

    __slots__ = ("rate_lock", "sequence", "token", "waiters")

    def __init__(self, token: object) -> None:
        self.token = token
        self.waiters: list[_Waiter] = []
        self.sequence = itertools.count()
        self.rate_lock = anyio.Lock()


class LeasedLimiter(Limiter):
    """A ``Limiter`` for one worker process whose budgets are leased from ``ClusterLimits``.

    Put it on the worker's backend (``backend.limiter = limits.limiter()``); the engine
    uses it as any limiter. See the module docstring for the protocol.
    """

    def __init__(self, limits: ClusterLimits) -> None:
        super().__init__(limits.max_concurrency, limits.rpm, limits.tpm, window_s=limits.window_s)
        self.limits = limits
        self.holder = uuid.uuid4().hex
        self._actor: Any = None
        self._state_: _LoopState | None = None
        # Slots leased from the broker and in use here (an idle one goes back at once).
        # A new holder id starts a new generation: slots taken under an older one were
        # taken back by the broker, so their calls give nothing back when they end.
        self.held = 0
        self._generation = 0
        self._leading = False
        self._expired = False
        # Rate credits, oldest first, and recent spending (for the next block's size).
        self._credits: deque[_Credit] = deque()
        self._spent: deque[tuple[float, int]] = deque()
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"LeasedLimiter({self.limits.name!r}, holding {self.held} slots)"

    # -- plumbing -------------------------------------------------------------------

    def _loop_state(self) -> _LoopState:  # type: ignore[override]
        token = anyio.lowlevel.current_token()
        state = self._state_
        if state is None or state.token != token:
            state = self._state_ = _LoopState(token)
        return state

    def _broker(self) -> Any:
        if self._actor is None:
            self._actor = self.limits.actor()
            threading.Thread(
                target=self._heartbeat, name=f"sotflow-lease-{self.holder[:8]}", daemon=True
            ).start()
        return self._actor

    async def _ask(self, call: Awaitable[T]) -> T:
        try:
            with anyio.CancelScope(shield=True):
                return await call
        except RayActorError as exc:
            raise ConfigurationError(
                f"the cluster limits actor {self.limits.name!r} died, so no call can be "
                "started; start the batch again (--resume keeps what is done)"
            ) from exc

    def _heartbeat(self) -> None:
        period = self.limits.ttl_s / 3
        while not self._stop.wait(period):
            if not ray.is_initialized():
                # Ray was shut down under us: a call now would start a new local Ray.
                return
            holder = self.holder
            try:
                alive = ray.get(self._actor.renew.remote(holder), timeout=period)
            except RayActorError:  # the broker is gone for good (it is never restarted)
                return
            except Exception:  # slow, or Ray shutting down: the next lease says so
                continue
            if not alive and holder == self.holder:
                self._expired = True

    def _new_holder(self) -> None:
        # The broker took our slots back: the calls using them count against no one now.
        self.held = 0
        self._generation += 1
        self.holder = uuid.uuid4().hex
        self._expired = False

    def close(self) -> None:
        """Stop renewing the lease (idle slots are never kept, so none are held idle)."""
        self._stop.set()

    # -- slots ----------------------------------------------------------------------

    async def _take_slot(self, state: _LoopState, priority: float) -> int:
        """Wait for a slot; returns the generation it belongs to."""
        if self._expired:
            self._new_holder()
        waiter = _Waiter((priority, next(state.sequence)))
        heapq.heappush(state.waiters, waiter)
        try:
            while not waiter.granted:
                if not self._leading:
                    await self._lease_slots(state)
                else:
                    await waiter.event.wait()
                    if not waiter.granted:
                        waiter.event = anyio.Event()  # woken to ask the broker next
        except BaseException:
            if waiter.granted:
                self._give_slot(state, waiter.generation)
            else:
                state.waiters.remove(waiter)
                heapq.heapify(state.waiters)
                self._wake_leader(state)
            raise
        return waiter.generation

    async def _lease_slots(self, state: _LoopState) -> None:
        self._leading = True
        try:
            broker = self._broker()
            granted = await self._ask(broker.lease_slots.remote(self.holder, len(state.waiters)))
            if granted is None:
                self._new_holder()
                return
            self.held += granted
            for _ in range(granted):
                self._put_slot(state)
        finally:
            self._leading = False
            self._wake_leader(state)

    def _wake_leader(self, state: _LoopState) -> None:
        # Granted waiters leave the heap at once, so its top is one still waiting.
        if not self._leading and state.waiters:
            state.waiters[0].event.set()

    def _put_slot(self, state: _LoopState) -> None:
        """A slot we hold is idle: the next waiting call gets it, else the broker."""
        if state.waiters:
            waiter = heapq.heappop(state.waiters)
            waiter.granted = True
            waiter.generation = self._generation
            waiter.event.set()
            return
        self.held -= 1
        self._actor.release_slots.remote(self.holder, 1)

    def _give_slot(self, state: _LoopState, generation: int) -> None:
        if generation == self._generation:
            self._put_slot(state)

    # -- rate credits ---------------------------------------------------------------

    def _drop_lapsed(self, now: float) -> None:
        refunds: dict[int, tuple[int, int]] = {}
        while self._credits and self._credits[0].deadline <= now:
            credit = self._credits.popleft()
            if credit.requests or credit.tokens:
                refunds[credit.grant] = (credit.requests, credit.tokens)
                credit.requests = credit.tokens = 0
        if refunds:
            self._actor.refund.remote(refunds)

    def _stock(self) -> tuple[int, int]:
        return (
            sum(c.requests for c in self._credits),
            sum(c.tokens for c in self._credits),
        )

    def _recent(self, now: float) -> tuple[int, int]:
        horizon = now - self.limits.credit_s
        while self._spent and self._spent[0][0] <= horizon:
            self._spent.popleft()
        return len(self._spent), sum(tokens for _, tokens in self._spent)

    async def _take_credits(self, state: _LoopState, tokens: int) -> _LeasedTicket:
        need_r = 1 if self.rpm else 0
        need_t = tokens if self.tpm else 0
        async with state.rate_lock:  # one call at a time, in arrival order, as Limiter does
            while True:
                now = anyio.current_time()
                self._drop_lapsed(now)
                have_r, have_t = self._stock()
                if have_r >= need_r and have_t >= need_t:
                    break
                recent_r, recent_t = self._recent(now)
                short_r, short_t = max(0, need_r - have_r), max(0, need_t - have_t)
                want_r = want_t = 0
                if self.rpm:
                    want_r = short_r + min(recent_r, max(1, self.rpm // _BLOCK_SHARE))
                if self.tpm:
                    want_t = short_t + min(recent_t, max(1, self.tpm // _BLOCK_SHARE))
                broker = self._broker()
                grant, got_r, got_t = await self._ask(
                    broker.lease_rate.remote(self.holder, short_r, want_r, short_t, want_t)
                )
                if grant:
                    self._credits.append(_Credit(grant, got_r, got_t, now + self.limits.credit_s))
            parts: list[tuple[_Credit, int]] = []
            left_r, left_t = need_r, need_t
            for credit in self._credits:
                if left_r and credit.requests:
                    credit.requests -= 1
                    left_r = 0
                if left_t and credit.tokens:
                    take = min(left_t, credit.tokens)
                    credit.tokens -= take
                    left_t -= take
                    parts.append((credit, take))
                if not left_r and not left_t:
                    break
            self._spent.append((now, need_t))
        return _LeasedTicket(None, None, None, self if self.tpm else None, parts)

    def _settle(self, parts: list[tuple[_Credit, int]], tokens: int) -> None:
        now = anyio.current_time()
        refunds: dict[int, tuple[int, int]] = {}
        excess = sum(taken for _, taken in parts) - tokens
        if excess < 0 and parts:  # used more than estimated: charge the difference
            refunds[parts[-1][0].grant] = (0, excess)
        for credit, taken in reversed(parts):
            if excess <= 0:
                break
            back = min(excess, taken)
            excess -= back
            if credit.deadline > now and credit in self._credits:
                credit.tokens += back  # still spendable here
            else:
                _, before = refunds.get(credit.grant, (0, 0))
                refunds[credit.grant] = (0, before + back)
        if refunds and self._actor is not None:
            self._actor.refund.remote(refunds)

    # -- the Limiter interface ------------------------------------------------------

    @asynccontextmanager
    async def slot(self, tokens: int = 0, priority: float = 0.0) -> AsyncIterator[Ticket]:
        """Hold one in-flight slot and charge the rates for one call, from leased budget."""
        state = self._loop_state()
        generation = await self._take_slot(state, priority) if self.max_concurrency else 0
        try:
            if self.rpm or self.tpm:
                ticket: Ticket = await self._take_credits(state, tokens)
            else:
                ticket = Ticket(None, None)
            self.in_flight += 1
            if self.in_flight > self.peak_in_flight:
                self.peak_in_flight = self.in_flight
            try:
                yield ticket
            finally:
                self.in_flight -= 1
                if self._credits:
                    # A worker that goes quiet gives back what it leased but did not spend.
                    self._drop_lapsed(anyio.current_time())
        finally:
            if self.max_concurrency:
                self._give_slot(state, generation)
