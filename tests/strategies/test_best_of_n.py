"""Best-of-N on the engine, with a scripted model."""

from __future__ import annotations

import re

import anyio
import pytest

import sotflow
from sotflow.events import AnswerDelta, NodeStarted, RunFinished
from sotflow.strategies import BestOfN, Judge
from sotflow.types import Request


def by_seed(replies: dict[int, sotflow.Reply | str | Exception]):
    """Sample ``i`` of a strategy built with ``seed=1`` carries seed ``i``."""

    def script(request: Request) -> object:
        assert request.params.seed is not None, "samples should carry their seeds here"
        return replies[request.params.seed]

    return script


def score_of(text: str) -> float:
    return float(re.search(r"quality (\d+)", text).group(1))  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_n_samples_in_flight_at_once_and_the_best_score_wins() -> None:
    replies = {i: sotflow.Reply(f"draft {i}, quality {q}", delay_s=0.05)
               for i, q in zip(range(1, 6), [3, 9, 4, 9, 1], strict=True)}  # fmt: skip
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(BestOfN(5, score_of, seed=1), "Write a tagline.")
    assert backend.peak_in_flight == 5
    assert backend.calls == 5
    assert answer.strategy == "best-of-n"
    # Samples 2 and 4 tie at 9: the lower number wins.
    assert answer.text == "draft 2, quality 9"
    assert answer.details["chosen"] == 2
    assert answer.details["scores"] == {1: 3.0, 2: 9.0, 3: 4.0, 4: 9.0, 5: 1.0}
    assert not answer.details["stopped_early"]
    assert [r["status"] for r in answer.details["samples"]] == ["ok"] * 5
    assert [n.id for n in answer.trace.calls] == [f"sample{i}" for i in range(1, 6)]  # type: ignore[union-attr]
    assert answer.usage.total_tokens == sum(n.usage.total_tokens for n in answer.trace.calls)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_an_llm_judge_rates_every_sample_on_its_own_backend() -> None:
    writer = sotflow.ScriptedBackend(
        by_seed({1: "short answer", 2: "a much longer and better answer", 3: "meh"})
    )

    def judge_script(request: Request) -> str:
        text = request.messages[-1].content
        return " 9" if "much longer" in text else "Score: 4/10"

    judge_backend = sotflow.ScriptedBackend(judge_script)
    strategy = BestOfN(3, Judge(judge_backend), seed=1)
    async with sotflow.Engine(writer) as engine:
        answer = await engine.run(strategy, "Explain tides.")
    assert answer.text == "a much longer and better answer"
    assert answer.details["scores"] == {1: 4.0, 2: 9.0, 3: 4.0}
    assert writer.calls == 3 and judge_backend.calls == 3
    for request in judge_backend.requests:
        assert request.prefill == "Score:"
        assert "Explain tides." in request.messages[-1].content
        assert "from 1 (wrong or useless) to 10" in request.messages[-1].content
    judges = [n for n in answer.trace.calls if n.meta.get("judge")]  # type: ignore[union-attr]
    assert sorted(n.id for n in judges) == ["score1", "score2", "score3"]


@pytest.mark.anyio
async def test_a_judge_reply_without_a_score_is_recorded_and_skipped() -> None:
    writer = sotflow.ScriptedBackend(by_seed({1: "one", 2: "two"}))
    judge = sotflow.ScriptedBackend(
        lambda r: "What a lovely answer!" if "one" in r.messages[-1].content else " 3"
    )
    async with sotflow.Engine(writer) as engine:
        answer = await engine.run(BestOfN(2, Judge(judge), seed=1), "Q?")
    assert answer.text == "two"
    first = answer.details["samples"][0]
    assert first["status"] == "failed" and "no score" in first["error"]
    assert any("sample 1 has no score" in w for w in answer.trace.warnings)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_threshold_takes_the_first_good_sample_and_cancels_the_rest() -> None:
    replies = {
        1: sotflow.Reply("quality 2", delay_s=0.02),
        2: sotflow.Reply("quality 8", delay_s=0.1),
        3: sotflow.Reply("quality 10", delay_s=5),
        4: sotflow.Reply("quality 10", delay_s=5),
    }
    backend = sotflow.ScriptedBackend(by_seed(replies))

    async def slow_scorer(text: str) -> float:
        await anyio.sleep(0.01)
        return score_of(text)

    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(BestOfN(4, slow_scorer, threshold=7, seed=1), "Q?")
    assert answer.text == "quality 8"
    assert answer.details["chosen"] == 2 and answer.details["stopped_early"]
    assert answer.details["scores"] == {1: 2.0, 2: 8.0}
    assert backend.peak_in_flight == 4
    assert backend.cancelled == 2 and backend.in_flight == 0
    trace = answer.trace
    assert trace is not None
    for node in ("sample3", "sample4", "score3", "score4"):
        assert trace.node(node).status == "cancelled"
    assert trace.node("score2").status == "ok"
    assert answer.latency_s < 5  # shorter than the slow samples alone: not waited for


@pytest.mark.anyio
async def test_mean_logprob_scores_samples() -> None:
    replies = {1: sotflow.Reply("unsure", logprob=-2.0), 2: sotflow.Reply("sure", logprob=-0.1)}
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(BestOfN(2, "logprob", seed=1), "Q?")
    assert answer.text == "sure"
    assert answer.details["scores"] == {1: pytest.approx(-2.0), 2: pytest.approx(-0.1)}
    assert all(r.params.logprobs for r in backend.requests)


@pytest.mark.anyio
async def test_logprob_scoring_is_refused_when_the_backend_has_no_logprobs() -> None:
    backend = sotflow.ScriptedBackend(["x"], logprobs=False)
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(sotflow.ConfigurationError, match=r"logprob.*capabilities\.logprobs"):
            await engine.run(BestOfN(3, "logprob"), "Q?")
    assert backend.calls == 0


@pytest.mark.anyio
async def test_when_every_sample_fails_the_run_fails_with_their_error() -> None:
    backend = sotflow.ScriptedBackend(
        lambda r: sotflow.BadRequestError("prompt too long", status_code=400)
    )
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(sotflow.BadRequestError, match="prompt too long"):
            await engine.run(BestOfN(3, len), "Q?")


@pytest.mark.anyio
async def test_one_failed_sample_leaves_the_others_to_choose_from() -> None:
    replies = {1: "quality 5", 2: sotflow.ServerError("boom", status_code=500), 3: "quality 6"}
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend, max_retries=0) as engine:
        answer = await engine.run(BestOfN(3, score_of, seed=1), "Q?")
    assert answer.text == "quality 6"
    assert answer.details["samples"][1]["status"] == "failed"
    assert "ServerError" in answer.details["samples"][1]["error"]


@pytest.mark.anyio
async def test_the_engine_limits_apply_to_samples() -> None:
    # The backend's in-flight cap holds the samples back; the deadline cancels them all.
    capped = sotflow.ScriptedBackend(["quality 1"], cycle=True, delay_s=0.05, max_concurrency=2)
    async with sotflow.Engine(capped) as engine:
        answer = await engine.run(BestOfN(6, score_of), "Q?")
    assert answer.ok and capped.calls == 6 and capped.peak_in_flight == 2

    slow = sotflow.ScriptedBackend(["quality 1"], cycle=True, delay_s=5)
    async with sotflow.Engine(slow, deadline=0.3) as engine:
        with pytest.raises(sotflow.DeadlineExceededError):
            await engine.run(BestOfN(4, score_of), "Q?")
    assert slow.cancelled == 4 and slow.in_flight == 0


@pytest.mark.anyio
async def test_events_show_every_sample_and_the_answer_arrives_whole() -> None:
    backend = sotflow.ScriptedBackend(by_seed({1: "quality 1", 2: "quality 2", 3: "quality 3"}))
    started: list[str] = []
    text: list[str] = []
    async with sotflow.Engine(backend) as engine:
        async for event in engine.stream(BestOfN(3, score_of, seed=1), "Q?"):
            if isinstance(event, NodeStarted):
                started.append(event.node)
            elif isinstance(event, AnswerDelta):
                text.append(event.text)
            elif isinstance(event, RunFinished):
                answer = event.answer
    assert {"sample1", "sample2", "sample3", "score1", "score2", "score3", "answer"} == set(started)
    assert "".join(text) == answer.text == "quality 3"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(sotflow.ConfigurationError, match="n must be"):
        BestOfN(0, len)
    with pytest.raises(sotflow.ConfigurationError, match="scorer must be"):
        BestOfN(3, "best")  # type: ignore[arg-type]
    with pytest.raises(sotflow.ConfigurationError, match="threshold must be a number"):
        BestOfN(3, len, threshold="8")  # type: ignore[arg-type]
