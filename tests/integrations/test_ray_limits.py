"""ClusterLimits and LeasedLimiter on a real local Ray cluster.

Each ``LeasedLimiter`` here is one holder, as one worker process would be; they share
this process only so that the test can watch all of them on one clock.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from sotflow.errors import ConfigurationError
from sotflow.integrations.ray import ClusterLimits, LeasedLimiter

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition()``, which may read another process (the broker): a hang guard
    of 30 s, not a timing bound, since each wait is for a state."""
    with anyio.fail_after(30):
        while not condition():  # noqa: ASYNC110 - the state is not ours to signal
            await anyio.sleep(0.01)


async def test_the_in_flight_cap_holds_across_holders(ray_cluster: str) -> None:
    limits = ClusterLimits.start(max_concurrency=4)
    holders = [limits.limiter() for _ in range(3)]
    assert all(isinstance(h, LeasedLimiter) for h in holders)
    now = peak = 0
    used: set[int] = set()

    async def call(index: int) -> None:
        nonlocal now, peak
        async with holders[index].slot():
            now += 1
            peak = max(peak, now)
            used.add(index)
            await anyio.sleep(0.01)
            now -= 1

    async with anyio.create_task_group() as tg:
        for i in range(48):
            tg.start_soon(call, i % 3)
    assert peak == 4  # three holders with a cap of 4 each would reach 12
    assert used == {0, 1, 2}
    stats = limits.stats()
    assert stats["peak_leased_slots"] == 4
    assert stats["holders_seen"] == 3
    # Idle holders keep no slots (given back fire-and-forget, so they arrive soon).
    await wait_until(lambda: limits.stats()["leased_slots"] == 0, "every slot given back")
    limits.stop()


async def test_the_request_rate_holds_across_holders_in_every_window(ray_cluster: str) -> None:
    window = 1.0
    limits = ClusterLimits.start(
        max_concurrency=None, rpm=6, window_s=window, credit_s=0.2, ttl_s=3.0, poll_s=0.1
    )
    holders = [limits.limiter() for _ in range(3)]
    starts: list[float] = []

    async def call(index: int) -> None:
        async with holders[index].slot():
            starts.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for i in range(18):
            tg.start_soon(call, i % 3)
    assert len(starts) == 18
    starts.sort()
    for first in starts:
        in_window = [t for t in starts if first <= t < first + window]
        assert len(in_window) <= 6, f"{len(in_window)} requests within {window} s"
    limits.stop()


async def test_unused_tokens_come_back_to_the_cluster(ray_cluster: str) -> None:
    # 100 tokens a minute; calls estimated at 40 tokens: two fit, a third waits until a
    # finished call gives back what it did not use (it used 10 of its 40).
    limits = ClusterLimits.start(max_concurrency=None, tpm=100, credit_s=0.2, ttl_s=3.0, poll_s=0.1)
    a, b, c = (limits.limiter() for _ in range(3))
    gates = {name: anyio.Event() for name in "abc"}
    admitted: list[str] = []

    async def call(limiter: LeasedLimiter, name: str) -> None:
        async with limiter.slot(40) as ticket:
            admitted.append(name)
            await gates[name].wait()
            ticket.settle(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, a, "a")
        tg.start_soon(call, b, "b")
        await wait_until(lambda: len(admitted) == 2, "a and b admitted")
        tg.start_soon(call, c, "c")
        await anyio.sleep(0.5)
        assert "c" not in admitted  # 120 tokens would not fit in 100
        gates["a"].set()
        await wait_until(lambda: "c" in admitted, "c admitted after a's refund")
        gates["b"].set()
        gates["c"].set()
    limits.stop()


async def test_a_dead_holders_slots_come_back_when_its_lease_expires(ray_cluster: str) -> None:
    limits = ClusterLimits.start(max_concurrency=2, ttl_s=1.5, poll_s=0.2)
    dead, alive = limits.limiter(), limits.limiter()
    gate = anyio.Event()
    holding = 0

    async def hog() -> None:
        nonlocal holding
        async with dead.slot():
            holding += 1
            await gate.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hog)
        tg.start_soon(hog)
        await wait_until(lambda: holding == 2, "both slots taken")
        first_holder = dead.holder
        dead.close()  # no more heartbeats: to the broker, a worker that died
        with anyio.fail_after(30):
            async with alive.slot():
                stats = limits.stats()
        assert stats["reclaimed_slots"] == 2
        assert stats["expired_holders"] == 1
        gate.set()
    # The "dead" holder comes back: refused under its old id, it leases under a new one.
    async with dead.slot():
        pass
    assert dead.holder != first_holder
    await wait_until(lambda: limits.stats()["leased_slots"] == 0, "every slot given back")
    limits.stop()


async def test_forget_hands_a_dead_holders_slots_back_at_once(ray_cluster: str) -> None:
    limits = ClusterLimits.start(max_concurrency=1, ttl_s=600.0)
    dead, alive = limits.limiter(), limits.limiter()
    gate = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def hog() -> None:
            async with dead.slot():
                await gate.wait()

        tg.start_soon(hog)
        await wait_until(lambda: dead.held == 1, "the slot taken")
        limits.forget(dead.holder)
        with anyio.fail_after(30):  # the lease would last 10 minutes
            async with alive.slot():
                pass
        gate.set()
    limits.stop()


async def test_calls_fail_clearly_when_the_limits_are_gone(ray_cluster: str) -> None:
    limits = ClusterLimits.start(max_concurrency=2)
    limiter = limits.limiter()
    limits.stop()
    with pytest.raises(ConfigurationError, match="died"):
        async with limiter.slot():
            pass


def test_bad_limits_are_refused_with_the_limiters_message(ray_cluster: str) -> None:
    with pytest.raises(ConfigurationError, match="rpm must be a positive integer"):
        ClusterLimits.start(rpm=0)
    with pytest.raises(ConfigurationError, match="ttl_s"):
        ClusterLimits.start(ttl_s=1.0, poll_s=0.5)


def test_connect_finds_limits_by_name(ray_cluster: str) -> None:
    started = ClusterLimits.start(max_concurrency=7, rpm=100, name="sotflow-test-shared")
    try:
        joined = ClusterLimits.connect("sotflow-test-shared")
        assert (joined.max_concurrency, joined.rpm, joined.tpm) == (7, 100, None)
        assert joined.ttl_s == started.ttl_s
    finally:
        started.stop()
    with pytest.raises(ConfigurationError, match="no cluster limits named"):
        ClusterLimits.connect("sotflow-test-nobody")
