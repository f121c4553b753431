"""Self-consistency on the engine, with a scripted model; and routing math to it."""

from __future__ import annotations

import re

import pytest

import sotflow
from sotflow.strategies import Judge, SelfConsistency
from sotflow.types import Request


def by_seed(replies: dict[int, sotflow.Reply | str | Exception]):
    """Sample ``i`` of a strategy built with ``seed=1`` carries seed ``i``."""

    def script(request: Request) -> object:
        assert request.params.seed is not None, "samples should carry their seeds here"
        return replies[request.params.seed]

    return script


def answers(*finals: str, delay_s: float = 0.0) -> dict[int, sotflow.Reply | str | Exception]:
    return {
        i: sotflow.Reply(f"Reasoning of sample {i}.\nAnswer: {a}", delay_s=delay_s)
        for i, a in enumerate(finals, start=1)
    }


@pytest.mark.anyio
async def test_n_samples_at_once_and_the_majority_wins() -> None:
    backend = sotflow.ScriptedBackend(by_seed(answers("12", "7", "12", "9", "12", delay_s=0.05)))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(5, early_stop=False, seed=1), "What is 3 * 4?")
    assert backend.peak_in_flight == 5
    assert answer.strategy == "self-consistency"
    assert answer.details["answer"] == "12"
    assert answer.details["votes"] == {"12": 3, "7": 1, "9": 1}
    assert answer.details["chosen"] == 1
    assert answer.text == "Reasoning of sample 1.\nAnswer: 12"
    assert not answer.details["tie"] and not answer.details["stopped_early"]
    prompt = backend.requests[0].messages[-1].content
    assert prompt.startswith("What is 3 * 4?") and '"Answer: <your answer>"' in prompt
    assert all(r.params.temperature == 0.8 for r in backend.requests)


@pytest.mark.anyio
async def test_early_stop_cancels_samples_that_cannot_change_the_winner() -> None:
    replies = answers("42", "42", "42", "42", "42", "41", "40", "39", delay_s=0.02)
    for slow in (6, 7, 8):
        replies[slow] = sotflow.Reply(f"Answer: {30 + slow}", delay_s=5)
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(8, seed=1), "Q?")
    # After five votes for 42, the three still out cannot reach it (5 > 3).
    assert answer.details["answer"] == "42"
    assert answer.details["votes"] == {"42": 5}
    assert answer.details["stopped_early"] and answer.details["cancelled"] == [6, 7, 8]
    assert backend.peak_in_flight == 8
    assert backend.cancelled == 3 and backend.in_flight == 0
    trace = answer.trace
    assert trace is not None
    for i in (6, 7, 8):
        assert trace.node(f"sample{i}").status == "cancelled"
        assert trace.node(f"vote{i}").status == "cancelled"
    assert answer.latency_s < 5  # shorter than the slow samples alone: not waited for
    # Cancelled calls spent nothing: usage is exactly the five completed samples.
    assert answer.usage.total_tokens == sum(
        trace.node(f"sample{i}").usage.total_tokens  # type: ignore[union-attr]
        for i in range(1, 6)
    )


@pytest.mark.anyio
async def test_a_cancelled_stream_is_charged_the_tokens_it_sent() -> None:
    # Providers bill what they streamed before a cancel. The slow samples stream 20
    # words each before the fast ones answer; then early stopping cancels them.
    import anyio

    streamed: dict[str, int] = {}
    enough = anyio.Event()
    slow = {6, 7, 8}

    def seen(event: sotflow.Event) -> None:
        if isinstance(event, sotflow.TextDelta) and event.node.endswith(("6", "7", "8")):
            streamed[event.node] = streamed.get(event.node, 0) + 1
            if len(streamed) == 3 and min(streamed.values()) >= 20:
                enough.set()

    async def script(request: Request) -> sotflow.Reply:
        seed = request.params.seed
        assert seed is not None
        if seed in slow:
            return sotflow.Reply(" ".join(["word"] * 1000), token_delay_s=0.002)
        await enough.wait()
        return sotflow.Reply(f"Reasoning {seed}.\nAnswer: 42")

    backend = sotflow.ScriptedBackend(script)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(8, seed=1), "Q?", on_event=seen)
    assert answer.details["cancelled"] == [6, 7, 8] and backend.cancelled == 3
    trace = answer.trace
    assert trace is not None
    done = sum(trace.node(f"sample{i}").usage.total_tokens for i in range(1, 6))  # type: ignore[union-attr]
    for i in slow:
        usage = trace.node(f"sample{i}").usage
        # At least the 20 words seen (5 characters each, about a token each), estimated.
        assert usage is not None and usage.estimated and usage.completion_tokens >= 20
    assert answer.usage.estimated and answer.usage.total_tokens > done


@pytest.mark.anyio
async def test_no_early_stop_while_the_leader_can_still_be_caught() -> None:
    # Four votes for 42 with four still out: a 4-4 tie is possible, so everything runs
    # (and the tie then goes to 42, the answer of the lowest-numbered sample).
    replies = answers("42", "42", "42", "42", "7", "7", "7", "7")
    for slow in (5, 6, 7, 8):
        replies[slow] = sotflow.Reply("Answer: 7", delay_s=0.3)
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(8, seed=1), "Q?")
    assert backend.cancelled == 0 and backend.calls == 8
    assert answer.details["votes"] == {"42": 4, "7": 4}
    assert answer.details["tie"] and answer.details["answer"] == "42"
    assert not answer.details["stopped_early"]


@pytest.mark.anyio
async def test_without_early_stop_every_sample_runs() -> None:
    replies = answers(*["5"] * 6, delay_s=0.01)
    replies[6] = sotflow.Reply("Answer: 6", delay_s=0.3)
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(6, early_stop=False, seed=1), "Q?")
    assert backend.cancelled == 0
    assert answer.details["votes"] == {"5": 5, "6": 1}


@pytest.mark.anyio
async def test_number_formats_and_case_are_normalised_before_voting() -> None:
    finals = ("1,000", "1000.0", "$1000.", "999", "**1000**")
    backend = sotflow.ScriptedBackend(by_seed(answers(*finals)))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(5, early_stop=False, seed=1), "Q?")
    assert answer.details["votes"] == {"1000": 4, "999": 1}
    rows = answer.details["samples"]
    assert [r["answer"] for r in rows] == list(finals)
    assert [r["normalized"] for r in rows] == ["1000", "1000", "1000", "999", "1000"]

    words = ("Paris.", "paris", " PARIS ", "Lyon")
    backend = sotflow.ScriptedBackend(by_seed(answers(*words)))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(
            SelfConsistency(4, extract="answer-line", early_stop=False, seed=1), "Q?"
        )
    assert answer.details["votes"] == {"paris": 3, "lyon": 1}


@pytest.mark.anyio
async def test_unextractable_samples_are_recorded_and_not_counted() -> None:
    replies: dict[int, sotflow.Reply | str | Exception] = {
        1: "I am not sure.",
        2: "Answer: 7",
        3: "It depends on the weather.",
        4: "Answer: 8",
        5: "Answer: 8",
    }
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(5, seed=1), "Q?")
    assert answer.details["votes"] == {"8": 2, "7": 1}
    assert answer.details["unextracted"] == [1, 3]
    assert answer.details["samples"][0]["answer"] is None
    assert answer.text == "Answer: 8" and answer.details["chosen"] == 4


@pytest.mark.anyio
async def test_no_extractable_answer_at_all_is_a_clear_error() -> None:
    backend = sotflow.ScriptedBackend(["no idea", "still no idea"], cycle=True)
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(sotflow.errors.NoAnswerError, match="none of the 3 samples") as info:
            await engine.run(SelfConsistency(3, extract="answer-line"), "Q?")
        assert len(info.value.details["samples"]) == 3
        answers_ = await engine.batch(SelfConsistency(3, extract="answer-line"), ["Q?"])
    assert answers_[0].error is not None and answers_[0].error.type == "NoAnswerError"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("finals", "winner", "chosen"),
    [(("7", "8", "8", "7"), "7", 1), (("8", "7", "7", "8"), "8", 1), (("9", "8", "7"), "9", 1)],
)
async def test_ties_go_to_the_answer_given_first_by_the_lowest_sample(
    finals: tuple[str, ...], winner: str, chosen: int
) -> None:
    # Reverse the finishing order so that "first to finish" would give another answer.
    replies = {
        i: sotflow.Reply(f"Answer: {a}", delay_s=0.02 * (len(finals) - i))
        for i, a in enumerate(finals, start=1)
    }
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(len(finals), seed=1), "Q?")
    assert answer.details["tie"]
    assert answer.details["answer"] == winner and answer.details["chosen"] == chosen


@pytest.mark.anyio
async def test_votes_weighted_by_probability_can_outvote_the_majority() -> None:
    replies: dict[int, sotflow.Reply | str | Exception] = {
        1: sotflow.Reply("Answer: 5", logprob=-3.0),
        2: sotflow.Reply("Answer: 5", logprob=-3.0),
        3: sotflow.Reply("Answer: 5", logprob=-3.0),
        4: sotflow.Reply("Answer: 6", logprob=-0.1),
        5: sotflow.Reply("Answer: 6", logprob=-0.1),
    }
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(5, weights="logprob", seed=1), "Q?")
    assert answer.details["answer"] == "6" and answer.details["weighted"]
    votes = answer.details["votes"]
    assert list(votes) == ["6", "5"]
    assert votes["6"] == pytest.approx(2 * 0.904837, rel=1e-4)
    assert votes["5"] == pytest.approx(3 * 0.049787, rel=1e-4)
    assert answer.details["counts"] == {"6": 2, "5": 3}
    assert all(r.params.logprobs for r in backend.requests)


@pytest.mark.anyio
async def test_a_weight_function_stops_early_only_with_a_max_weight() -> None:
    replies = answers("3", "3", "3", delay_s=0.01)
    replies[4] = sotflow.Reply("Answer: 4", delay_s=0.5)

    def confidence(text: str) -> float:
        return 2.0 if "3" in text else 1.0

    # Three votes of weight 2 lead by 6; one vote of at most 2 is out: stop.
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(
            SelfConsistency(4, weights=confidence, max_weight=2.0, seed=1), "Q?"
        )
    assert answer.details["votes"] == {"3": 6.0} and backend.cancelled == 1

    # Without a bound on a vote's weight, no lead is safe: every sample runs.
    backend = sotflow.ScriptedBackend(by_seed(replies))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(4, weights=confidence, seed=1), "Q?")
    assert answer.details["votes"] == {"3": 6.0, "4": 1.0} and backend.cancelled == 0


@pytest.mark.anyio
async def test_a_judge_can_weigh_the_votes() -> None:
    def script(request: Request) -> str:
        if request.prefill == "Score:":
            return " 9" if "careful" in request.messages[-1].content else " 2"
        return {1: "quick guess\nAnswer: 10", 2: "quick guess\nAnswer: 10",
                3: "careful work\nAnswer: 12"}[request.params.seed or 0]  # fmt: skip

    backend = sotflow.ScriptedBackend(script)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(3, weights=Judge(), seed=1), "Q?")
    assert answer.details["votes"] == {"12": 9.0, "10": 4.0}
    assert backend.calls == 6


@pytest.mark.anyio
async def test_extractors_regex_and_function() -> None:
    replies = {1: "result [[blue]] ok", 2: "result [[Blue]]", 3: "result [[red]]"}
    backend = sotflow.ScriptedBackend(by_seed(replies))  # type: ignore[arg-type]
    async with sotflow.Engine(backend) as engine:
        by_regex = await engine.run(
            SelfConsistency(3, extract=re.compile(r"\[\[(\w+)\]\]"), early_stop=False, seed=1),
            "Q?",
        )
        by_function = await engine.run(
            SelfConsistency(3, extract=lambda t: t.split()[1], early_stop=False, seed=1), "Q?"
        )
    assert by_regex.details["votes"] == {"blue": 2, "red": 1}
    assert by_function.details["votes"] == {"[[blue]]": 2, "[[red]]": 1}


@pytest.mark.anyio
async def test_the_backend_cap_still_applies() -> None:
    backend = sotflow.ScriptedBackend(["Answer: 1"], cycle=True, delay_s=0.02, max_concurrency=3)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(SelfConsistency(6, early_stop=False), "Q?")
    assert answer.ok and backend.calls == 6 and backend.peak_in_flight == 3


class FakeRouter:
    name = "fake-math"

    def __init__(self) -> None:
        self.questions: list[str] = []

    async def decide(self, question: str) -> sotflow.Decision:
        self.questions.append(question)
        return sotflow.Decision(strategy="self-consistency", reason="numeric", router=self.name)


@pytest.mark.anyio
async def test_routed_sends_math_to_self_consistency() -> None:
    backend = sotflow.ScriptedBackend(by_seed(answers("4", "4", "5")))
    router = FakeRouter()
    strategy = SelfConsistency(3, early_stop=False, seed=1)
    routed = sotflow.Routed(router, strategies={"self-consistency": strategy})
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(routed, "What is 2 + 2?")
    assert router.questions == ["What is 2 + 2?"]
    assert answer.strategy == "self-consistency"
    assert answer.decision is not None and answer.decision.strategy == "self-consistency"
    assert answer.details["answer"] == "4" and answer.details["votes"] == {"4": 2, "5": 1}
    assert {n.id for n in answer.trace.calls} == {"run/sample1", "run/sample2", "run/sample3"}  # type: ignore[union-attr]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(sotflow.ConfigurationError, match="n must be"):
        SelfConsistency(0)
    with pytest.raises(sotflow.ConfigurationError, match="max_weight"):
        SelfConsistency(3, weights=len, max_weight=0)
    with pytest.raises(sotflow.ConfigurationError, match="unknown extractor"):
        SelfConsistency(3, extract="final")
