"""The limiter: in-flight cap, requests/min and tokens/min as sliding windows.

Windows are made small (``window_s`` a fraction of a second) so the rates can be
observed quickly; assertions are about orderings and lower bounds, never about how
fast a loaded machine happens to be.
"""

from __future__ import annotations

import anyio
import pytest

import sotflow
from sotflow import ConfigurationError, Direct, Engine, Limiter, Reply, ScriptedBackend
from sotflow.types import Request

EPS = 0.02  # event loops may wake a little early; windows are checked with this slack

# Leaked streams, tasks or connections show up as ResourceWarnings: fail on them.
pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": -3}, "max_concurrency"),
        ({"max_concurrency": 2.5}, "max_concurrency"),
        ({"rpm": 0}, "rpm"),
        ({"rpm": "60"}, "rpm"),
        ({"tpm": -1}, "tpm"),
        ({"window_s": 0}, "window_s"),
        ({"window_s": -1.0}, "window_s"),
    ],
)
def test_bad_values_are_refused_clearly(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Limiter(**kwargs)  # type: ignore[arg-type]


def test_none_means_no_limit() -> None:
    limiter = Limiter(None, None, None)
    assert limiter.max_concurrency is None and limiter.rpm is None and limiter.tpm is None


def test_backends_refuse_bad_limits_too() -> None:
    with pytest.raises(ConfigurationError, match="rpm"):
        ScriptedBackend(["x"], rpm=0)


@pytest.mark.anyio
async def test_in_flight_cap_is_never_exceeded() -> None:
    limiter = Limiter(max_concurrency=3)
    now = peak = 0

    async def one() -> None:
        nonlocal now, peak
        async with limiter.slot():
            now += 1
            peak = max(peak, now)
            await anyio.sleep(0.01)
            now -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(one)
    assert peak == 3
    assert limiter.peak_in_flight == 3
    assert limiter.in_flight == 0


@pytest.mark.anyio
async def test_rpm_is_a_sliding_window() -> None:
    window = 0.25
    limiter = Limiter(max_concurrency=None, rpm=3, window_s=window)
    starts: list[float] = []

    async def one() -> None:
        async with limiter.slot():
            starts.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for _ in range(9):
            tg.start_soon(one)
    starts.sort()
    # Never more than 3 starts in any window: start i+3 comes a full window after start i.
    for early, late in zip(starts, starts[3:], strict=False):
        assert late - early >= window - EPS
    assert starts[-1] - starts[0] >= 2 * window - EPS


@pytest.mark.anyio
async def test_tpm_is_a_sliding_window() -> None:
    window = 0.25
    limiter = Limiter(max_concurrency=None, tpm=100, window_s=window)
    charges: list[tuple[float, int]] = []

    async def one(tokens: int) -> None:
        async with limiter.slot(tokens) as ticket:
            charges.append((anyio.current_time(), tokens))
            ticket.settle(tokens)

    async with anyio.create_task_group() as tg:
        for tokens in [40, 30, 50, 20, 60, 40, 10, 70]:
            tg.start_soon(one, tokens)
    for at, _ in charges:
        in_window = sum(n for t, n in charges if at - window + EPS < t <= at)
        assert in_window <= 100, charges
    assert charges[-1][0] - charges[0][0] >= window - EPS  # 320 tokens need several windows


@pytest.mark.anyio
async def test_tpm_charges_the_estimate_then_corrects_to_real_usage() -> None:
    limiter = Limiter(max_concurrency=None, tpm=100, window_s=60)
    with anyio.fail_after(5):
        async with limiter.slot(80) as ticket:
            ticket.settle(10)  # the call used far less than its max_tokens estimate
        # 10 + 80 fits: admitted at once (without the correction it would wait 60 s).
        async with limiter.slot(80) as ticket:
            ticket.settle(80)
    # 90 are now charged; another 80 must wait for the window.
    admitted = False
    with anyio.move_on_after(0.3):
        async with limiter.slot(80):
            admitted = True
    assert not admitted


@pytest.mark.anyio
async def test_while_a_call_runs_its_whole_estimate_is_held() -> None:
    limiter = Limiter(max_concurrency=None, tpm=100, window_s=60)
    admitted: list[str] = []
    release = anyio.Event()

    async def big() -> None:
        async with limiter.slot(90) as ticket:
            admitted.append("big")
            await release.wait()
            ticket.settle(5)

    async def small() -> None:
        async with limiter.slot(20):
            admitted.append("small")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(big)
            await anyio.sleep(0.05)
            tg.start_soon(small)
            await anyio.sleep(0.2)
            assert admitted == ["big"]  # 90 + 20 > 100 while big still runs
            release.set()  # big settles to 5: 5 + 20 fits
    assert admitted == ["big", "small"]


@pytest.mark.anyio
async def test_a_charge_larger_than_the_limit_passes_once_the_window_is_empty() -> None:
    window = 0.2
    limiter = Limiter(max_concurrency=None, tpm=10, window_s=window)
    times: list[float] = []
    with anyio.fail_after(5):
        for _ in range(2):
            async with limiter.slot(50) as ticket:
                times.append(anyio.current_time())
                ticket.settle(50)
    assert times[1] - times[0] >= window - EPS


@pytest.mark.anyio
async def test_settling_after_the_charge_expired_does_not_free_capacity_twice() -> None:
    window = 0.2
    limiter = Limiter(max_concurrency=None, tpm=100, window_s=window)
    async with limiter.slot(50) as ticket:
        await anyio.sleep(window + 0.05)  # the charge leaves the window while the call runs
        ticket.settle(5)
    with anyio.fail_after(5):
        async with limiter.slot(100) as t2:
            t2.settle(100)
    # The window now holds exactly 100: nothing more may start until it slides.
    admitted = False
    with anyio.move_on_after(window / 2):
        async with limiter.slot(40):
            admitted = True
    assert not admitted


@pytest.mark.anyio
async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    limiter = Limiter(max_concurrency=1)
    async with limiter.slot():
        with anyio.move_on_after(0.05):
            async with limiter.slot():
                pytest.fail("the cap is 1")
    assert limiter.in_flight == 0
    with anyio.fail_after(2):
        async with limiter.slot():
            assert limiter.in_flight == 1


# -- through the engine: one limiter shared by every run on a backend ----------------------


@pytest.mark.anyio
async def test_cap_holds_across_runs_and_engines_sharing_a_backend() -> None:
    backend = ScriptedBackend(["fine"], cycle=True, delay_s=0.03, max_concurrency=3)
    async with Engine(backend) as first, Engine(backend) as second, anyio.create_task_group() as tg:
        for engine in (first, second):
            tg.start_soon(engine.batch, Direct(), [f"q{i}" for i in range(12)])
            tg.start_soon(engine.run, Direct(), "alone")
    assert backend.calls == 26
    assert backend.peak_in_flight == 3  # reached, and never more
    assert backend.limiter.peak_in_flight == 3


@pytest.mark.anyio
async def test_rpm_holds_across_engines() -> None:
    window = 0.25
    starts: list[float] = []

    def script(request: Request) -> str:
        starts.append(anyio.current_time())
        return "ok"

    backend = ScriptedBackend(script)
    backend.limiter = Limiter(max_concurrency=None, rpm=2, window_s=window)
    async with Engine(backend) as first, Engine(backend) as second, anyio.create_task_group() as tg:
        tg.start_soon(first.batch, Direct(), ["a", "b", "c"])
        tg.start_soon(second.batch, Direct(), ["d", "e", "f"])
    starts.sort()
    assert len(starts) == 6
    for early, late in zip(starts, starts[2:], strict=False):
        assert late - early >= window - EPS


@pytest.mark.anyio
async def test_engine_corrects_the_tpm_estimate_to_real_usage() -> None:
    # Direct(max_tokens=200) is charged ~200 tokens up front; each reply really uses ~3.
    backend = ScriptedBackend(["short reply"], cycle=True)
    backend.limiter = Limiter(max_concurrency=None, tpm=300, window_s=60)
    with anyio.fail_after(10):  # without the correction the second run waits 60 s
        async with Engine(backend) as engine:
            for i in range(5):
                await engine.run(Direct(max_tokens=200), f"question {i}")
    assert backend.calls == 5


@pytest.mark.anyio
async def test_engine_waits_when_real_usage_fills_the_window() -> None:
    long_reply = " ".join(["word"] * 250)
    backend = ScriptedBackend([Reply(long_reply)], cycle=True)
    backend.limiter = Limiter(max_concurrency=None, tpm=300, window_s=60)
    async with Engine(backend) as engine:
        await engine.run(Direct(max_tokens=260), "first")
        with anyio.move_on_after(0.3):
            await engine.run(Direct(max_tokens=260), "second")
    assert backend.calls == 1  # the second call never reached the backend


# -- priority among waiting calls -------------------------------------------------------


@pytest.mark.anyio
async def test_waiting_calls_get_the_slot_lowest_priority_first() -> None:
    limiter = Limiter(1)
    granted: list[float] = []
    release = anyio.Event()

    async def holder() -> None:
        async with limiter.slot(0, priority=0):
            await release.wait()

    async def waiter(priority: float) -> None:
        async with limiter.slot(0, priority=priority):
            granted.append(priority)

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        for priority in (5.0, 1.0, 3.0, 1.0):
            tg.start_soon(waiter, priority)
            await anyio.wait_all_tasks_blocked()
        release.set()
    assert granted == [1.0, 1.0, 3.0, 5.0]


@pytest.mark.anyio
async def test_a_cancelled_waiter_does_not_lose_or_keep_a_slot() -> None:
    limiter = Limiter(1)
    release = anyio.Event()
    got: list[str] = []

    async def holder() -> None:
        async with limiter.slot(0):
            await release.wait()

    async def waiter(name: str) -> None:
        async with limiter.slot(0):
            got.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as doomed:
            doomed.cancel()
            await waiter("cancelled")
        tg.start_soon(waiter, "next")
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert got == ["next"]
    async with limiter.slot(0):  # the slot came back
        got.append("again")
    assert got == ["next", "again"]


@pytest.mark.anyio
async def test_a_saturated_batch_finishes_the_questions_it_started_first() -> None:
    def script(request: Request) -> Reply:
        if request.prefill == "1.":
            return Reply(" A\n2. B\n3. C\n4. D", delay_s=0.1)
        return Reply(" text.", delay_s=0.1)

    questions = [f"Question number {i}?" for i in range(5)]
    backend = ScriptedBackend(script, max_concurrency=2)
    async with Engine(backend) as engine:
        answers = await engine.batch(sotflow.SkeletonOfThought(), questions, concurrency=5)
    assert all(a.ok for a in answers)

    def asked(request: Request) -> int:
        (index,) = [
            i for i, q in enumerate(questions) if any(q in m.content for m in request.messages)
        ]
        return index

    # Five questions want 25 calls of 0.1 s through 2 slots. A freed slot goes to the
    # question that started first: question 0's points overtake the skeletons of
    # questions 3-4 that were queued before them, so its 5 calls are among the first 8
    # started (in arrival order its last point would be the 9th). Counted in call
    # order, not in seconds, so a slow machine cannot fail it.
    started = [asked(r) for r in backend.requests]
    assert sorted(started) == sorted(list(range(5)) * 5)
    assert max(i for i, q in enumerate(started) if q == 0) < 8, started
    finished = sorted(range(5), key=lambda i: answers[i].latency_s)
    assert finished == [0, 1, 2, 3, 4]


# -- fairness between clients (sotflow serve's one limiter) ----------------------------


async def _grant_order(limiter: Limiter, queued: list[tuple[str, float]]) -> list[str]:
    """Queue ``(client, priority)`` calls behind one held slot; the order they get it."""
    granted: list[str] = []
    release = anyio.Event()

    async def holder() -> None:
        async with limiter.slot(0):
            await release.wait()

    async def waiter(client: str, priority: float) -> None:
        with sotflow.limits.client_scope(client):
            async with limiter.slot(0, priority=priority):
                granted.append(client)

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        for client, priority in queued:
            tg.start_soon(waiter, client, priority)
            await anyio.wait_all_tasks_blocked()
        release.set()
    return granted


@pytest.mark.anyio
async def test_a_fair_limiter_serves_waiting_clients_in_turn() -> None:
    # One client queued ten calls before another queued one, and a third two.
    queued = [("batch", float(i)) for i in range(10)] + [("single", 0.0), ("pair", 0.0)] * 1
    queued.append(("pair", 1.0))
    order = await _grant_order(Limiter(1, fair=True), queued)
    assert order[:5] == ["batch", "single", "pair", "batch", "pair"]
    assert order[5:] == ["batch"] * 8
    # Without fairness the single call waits behind the whole batch (equal priorities
    # aside, lowest priority first: the batch's calls of priority 0..9 and the others).
    unfair = await _grant_order(Limiter(1), [(c, p + 10) for c, p in queued[:10]] + queued[10:])
    assert unfair[:3] == ["single", "pair", "pair"]  # priorities 0, 0, 1 beat 10..19
    by_arrival = await _grant_order(Limiter(1), [(c, 0.0) for c, _ in queued])
    assert by_arrival.index("single") == 10


@pytest.mark.anyio
async def test_within_one_client_the_earliest_run_goes_first() -> None:
    order: list[float] = []
    limiter = Limiter(1, fair=True)
    release = anyio.Event()

    async def holder() -> None:
        async with limiter.slot(0):
            await release.wait()

    async def waiter(priority: float) -> None:
        with sotflow.limits.client_scope("one"):
            async with limiter.slot(0, priority=priority):
                order.append(priority)

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        for priority in (3.0, 1.0, 2.0):
            tg.start_soon(waiter, priority)
            await anyio.wait_all_tasks_blocked()
        release.set()
    assert order == [1.0, 2.0, 3.0]


@pytest.mark.anyio
async def test_a_cancelled_fair_waiter_leaves_its_queue_and_the_slot_comes_back() -> None:
    limiter = Limiter(1, fair=True)
    release = anyio.Event()
    got: list[str] = []

    async def holder() -> None:
        async with limiter.slot(0):
            await release.wait()

    async def waiter(client: str) -> None:
        with sotflow.limits.client_scope(client):
            async with limiter.slot(0):
                got.append(client)

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as doomed:
            doomed.cancel()
            await waiter("gone")
        tg.start_soon(waiter, "next")
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert got == ["next"]
    async with limiter.slot(0):
        got.append("again")
    assert got == ["next", "again"]


@pytest.mark.anyio
async def test_a_fair_limiter_takes_turns_for_the_rate_windows_too() -> None:
    # No in-flight cap: calls wait only for the request window, one at a time.
    async def order(limiter: Limiter) -> list[str]:
        granted: list[str] = []

        async def call(client: str) -> None:
            with sotflow.limits.client_scope(client):
                async with limiter.slot(0):
                    granted.append(client)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(call, "batch")
                await anyio.wait_all_tasks_blocked()
            tg.start_soon(call, "single")
        return granted

    # The first batch call went straight through, the second holds the turn while it
    # waits for the window; the single call is next but one (its turn after a batch's).
    assert (await order(Limiter(None, rpm=1, window_s=0.05, fair=True))).index("single") == 3
    assert (await order(Limiter(None, rpm=1, window_s=0.05))).index("single") == 6


@pytest.mark.anyio
@pytest.mark.parametrize("start", [8, None], ids=["capped", "uncapped"])
async def test_narrowing_the_cap_mid_flight_lets_no_new_call_past_it(start: int | None) -> None:
    # A server found to run one call at a time: the calls already sent finish, and no
    # new one starts until the count is under the new cap.
    limiter = Limiter(max_concurrency=start)
    started: list[int] = []  # in-flight count seen by each call as it starts
    release = anyio.Event()

    async def one() -> None:
        async with limiter.slot():
            started.append(limiter.in_flight)
            await (release.wait() if len(started) <= 4 else anyio.sleep(0.001))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
        while limiter.in_flight < 4:  # noqa: ASYNC110
            await anyio.sleep(0.001)
        limiter.narrow(1)
        for _ in range(6):
            tg.start_soon(one)
        await anyio.sleep(0.02)
        assert len(started) == 4  # nothing new while four are out
        release.set()
    assert started[4:] == [1] * 6
    assert limiter.max_concurrency == 1
    limiter.narrow(5)  # never widens
    assert limiter.max_concurrency == 1
    with pytest.raises(ConfigurationError):
        limiter.narrow(0)
