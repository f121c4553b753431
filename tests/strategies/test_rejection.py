"""Rejection sampling on the engine: sample until the verifier accepts, bounded."""

from __future__ import annotations

import anyio
import pytest

import sotflow
from sotflow.errors import NoAnswerError
from sotflow.strategies import Judge, RejectionSampling
from sotflow.types import Request


def numbered(delays: dict[int, float] | None = None):
    """Sample ``i`` (seed ``i``) answers "candidate i"."""

    def script(request: Request) -> sotflow.Reply:
        i = request.params.seed
        assert i is not None
        return sotflow.Reply(f"candidate {i}", delay_s=(delays or {}).get(i, 0.0))

    return script


def accepts(*good: int):
    return lambda text: int(text.split()[-1]) in good


@pytest.mark.anyio
async def test_one_at_a_time_it_stops_at_the_first_accepted_sample() -> None:
    backend = sotflow.ScriptedBackend(numbered())
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(RejectionSampling(accepts(3, 4), 10, seed=1), "Q?")
    assert answer.strategy == "rejection"
    assert answer.text == "candidate 3"
    assert backend.calls == 3 and backend.peak_in_flight == 1
    assert answer.details["accepted"] == 3 and answer.details["tried"] == 3
    assert [r["accepted"] for r in answer.details["samples"]] == [False, False, True]
    trace = answer.trace
    assert trace is not None
    assert trace.node("sample2").start_s >= trace.node("verify1").end_s  # type: ignore[operator]


@pytest.mark.anyio
async def test_nothing_accepted_within_the_bound_is_a_clear_error() -> None:
    backend = sotflow.ScriptedBackend(numbered())
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(NoAnswerError, match="accepted none of the 5 samples") as info:
            await engine.run(RejectionSampling(accepts(), 5, batch=2, seed=1), "Q?")
    # Batches of 2, 2 and 1: exactly the bound, never more.
    assert backend.calls == 5
    rows = info.value.details["samples"]
    assert [r["text"] for r in rows] == [f"candidate {i}" for i in range(1, 6)]
    assert all(r["accepted"] is False for r in rows)
    async with sotflow.Engine(backend) as engine:
        (answer,) = await engine.batch(RejectionSampling(accepts(), 2, seed=1), ["Q?"])
    assert answer.error is not None and answer.error.type == "NoAnswerError"


@pytest.mark.anyio
async def test_a_batch_runs_at_once_and_an_accept_cancels_the_rest() -> None:
    backend = sotflow.ScriptedBackend(numbered({1: 5, 2: 0.05, 3: 5, 4: 5}))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(RejectionSampling(accepts(2), 8, batch=4, seed=1), "Q?")
    assert answer.text == "candidate 2"
    assert backend.peak_in_flight == 4 and backend.calls == 4
    assert backend.cancelled == 3 and backend.in_flight == 0
    trace = answer.trace
    assert trace is not None
    assert [trace.node(f"sample{i}").status for i in (1, 3, 4)] == ["cancelled"] * 3
    assert answer.latency_s < 5  # shorter than the slow samples alone: not waited for


@pytest.mark.anyio
async def test_async_and_scoring_verifiers() -> None:
    async def slow_check(text: str) -> bool:
        await anyio.sleep(0.01)
        return text.endswith("2")

    backend = sotflow.ScriptedBackend(numbered())
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(RejectionSampling(slow_check, 4, seed=1), "Q?")
        assert answer.details["accepted"] == 2

        def score(text: str) -> float:
            return float(text.split()[-1]) / 10

        answer = await engine.run(RejectionSampling(score, 6, min_score=0.3, seed=1), "Q?")
    assert answer.details["accepted"] == 3
    assert [r["score"] for r in answer.details["samples"]] == [0.1, 0.2, 0.3]


@pytest.mark.anyio
async def test_a_judge_verifies_against_min_score() -> None:
    def script(request: Request) -> str:
        if request.prefill == "Score:":
            return " 9" if "candidate 2" in request.messages[-1].content else " 6"
        return numbered()(request).text  # type: ignore[return-value]

    backend = sotflow.ScriptedBackend(script)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(RejectionSampling(Judge(), 4, seed=1), "Q?")
    assert answer.details["accepted"] == 2  # 6 < 8 (80% of the scale) <= 9
    assert [r["score"] for r in answer.details["samples"]] == [6.0, 9.0]
    assert backend.calls == 4


@pytest.mark.anyio
async def test_failed_samples_count_against_the_bound_and_are_recorded() -> None:
    def script(request: Request) -> object:
        if request.params.seed in (1, 3):
            return sotflow.BadRequestError("refused", status_code=400)
        return numbered()(request)

    backend = sotflow.ScriptedBackend(script)
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(NoAnswerError, match=r"\(2 could not be sampled or verified\)"):
            await engine.run(RejectionSampling(accepts(), 4, batch=2, seed=1), "Q?")
    assert backend.calls == 4


@pytest.mark.anyio
async def test_a_batch_where_nothing_could_be_sampled_ends_the_search() -> None:
    backend = sotflow.ScriptedBackend(
        lambda r: sotflow.AuthenticationError("bad key", status_code=401)
    )
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(sotflow.AuthenticationError, match="bad key"):
            await engine.run(RejectionSampling(accepts(), 10, batch=2), "Q?")
    assert backend.calls == 2


@pytest.mark.anyio
async def test_a_token_budget_stops_the_sampling() -> None:
    backend = sotflow.ScriptedBackend(numbered())
    async with sotflow.Engine(backend, budget=30) as engine:
        with pytest.raises(sotflow.BudgetExceededError) as info:
            await engine.run(RejectionSampling(accepts(), 100, seed=1), "Q?")
    # Each call costs 3 tokens ("Q?" in, "candidate i" out): ten calls spend the budget.
    assert backend.calls == 10 and info.value.used == 30


def test_bad_settings_are_refused() -> None:
    with pytest.raises(sotflow.ConfigurationError, match="max_samples"):
        RejectionSampling(bool, 0)
    with pytest.raises(sotflow.ConfigurationError, match="batch"):
        RejectionSampling(bool, 3, batch=0)
    with pytest.raises(sotflow.ConfigurationError, match="verifier must be"):
        RejectionSampling("strict", 3)  # type: ignore[arg-type]
    with pytest.raises(sotflow.ConfigurationError, match="min_score must be a number"):
        RejectionSampling("judge", 3, min_score="high")  # type: ignore[arg-type]
