"""Routing: the LLM router's call and parsing, and Routed running the chosen strategy."""

from __future__ import annotations

import math

import pytest

import sotflow
from sotflow.types import Choice, Completion, Request, TokenLogprob, Usage

SKELETON = " Plan\n2. Focus\n3. Rest"


def model(letter: str = "A"):
    def script(request: Request) -> sotflow.Reply:
        if "Reply with one letter" in request.messages[-1].content:
            return sotflow.Reply(letter)
        if request.prefill == "1.":
            return sotflow.Reply(SKELETON)
        if request.prefill:
            return sotflow.Reply(" point.")
        return sotflow.Reply("plain answer")

    return script


class FixedRouter:
    name = "fixed"

    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.asked: list[str] = []

    async def decide(self, question: str) -> sotflow.Decision:
        self.asked.append(question)
        return sotflow.Decision(
            strategy=self.strategy, confidence=0.9, reason="fixed", router=self.name
        )


def completion(text: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> Completion:
    return Completion((Choice(0, text, "stop", logprobs),), Usage.of(10, 1))


@pytest.mark.parametrize(
    ("reply", "strategy"),
    [("A", "sot"), (" B", "sot-dag"), ("C.", "direct"), ("Answer: A", "sot"), ("(b)", "sot-dag")],
)
def test_llm_router_reads_the_letter(reply: str, strategy: str) -> None:
    router = sotflow.LLMRouter(sotflow.ScriptedBackend(["x"]))
    decision = router.parse(completion(reply))
    assert decision.strategy == strategy and decision.router == "llm"


def test_llm_router_falls_back_to_direct_when_it_cannot_read_the_answer() -> None:
    router = sotflow.LLMRouter(sotflow.ScriptedBackend(["x"]))
    decision = router.parse(completion("I think this is a list question"))
    assert decision.strategy == "direct" and decision.confidence == 0.0
    assert "did not answer" in decision.reason


def test_llm_router_confidence_is_the_models_probability_of_its_letter() -> None:
    router = sotflow.LLMRouter(sotflow.ScriptedBackend(["x"]))
    top = (("A", math.log(0.6)), ("C", math.log(0.3)), ("B", math.log(0.1)))
    decision = router.parse(completion("A", (TokenLogprob("A", math.log(0.6), top),)))
    assert decision.confidence == pytest.approx(0.6, abs=1e-3)


def test_llm_router_request_is_short_and_deterministic() -> None:
    backend = sotflow.ScriptedBackend(["x"], logprobs=True)
    request = sotflow.LLMRouter(backend).request("How do I sleep better?")
    assert request.params.max_tokens is not None and request.params.max_tokens <= 4
    assert request.params.temperature == 0.0 and request.params.logprobs
    assert "How do I sleep better?" in request.messages[-1].content


@pytest.mark.anyio
async def test_llm_router_decides_through_the_engine() -> None:
    backend = sotflow.ScriptedBackend(model("B"))
    decision = await sotflow.LLMRouter(backend).decide("Plan a migration")
    assert decision.strategy == "sot-dag"
    assert backend.calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize(("letter", "strategy", "calls"), [("A", "sot", 5), ("C", "direct", 2)])
async def test_routed_runs_the_chosen_strategy_inside_one_run(
    letter: str, strategy: str, calls: int
) -> None:
    backend = sotflow.ScriptedBackend(model(letter))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(sotflow.Routed(sotflow.LLMRouter(backend)), "Q?")
    assert answer.strategy == strategy
    assert answer.decision is not None and answer.decision.router == "llm"
    assert backend.calls == calls  # the router's call plus the chosen strategy's
    ids = [n.id for n in answer.trace.nodes]  # type: ignore[union-attr]
    assert ids[0] == "route" and "run" in ids
    assert answer.trace.node("route").kind == "call"  # type: ignore[union-attr]
    assert all(i.startswith("run/") for i in ids if i not in {"route", "dispatch", "run", "answer"})
    assert answer.usage.total_tokens == sum(n.usage.total_tokens for n in answer.trace.calls)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_routed_with_a_model_free_router_makes_no_extra_call() -> None:
    backend = sotflow.ScriptedBackend(model())
    router = FixedRouter("sot")
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(sotflow.Routed(router), "Q?")
    assert router.asked == ["Q?"]
    assert answer.strategy == "sot" and backend.calls == 4
    assert answer.decision == sotflow.Decision(
        strategy="sot", confidence=0.9, reason="fixed", router="fixed"
    )
    assert answer.text.startswith("1. Plan - point.")


@pytest.mark.anyio
async def test_default_router_is_the_rule_router() -> None:
    backend = sotflow.ScriptedBackend(model())
    async with sotflow.Engine(backend) as engine:
        math_answer = await engine.run(sotflow.Routed(), "What is 17 * 23?")
        list_answer = await engine.run(
            sotflow.Routed(), "What are the benefits of regular exercise?"
        )
    assert math_answer.strategy == "direct" and math_answer.decision.router == "rules"  # type: ignore[union-attr]
    assert list_answer.strategy == "sot"


@pytest.mark.anyio
async def test_an_unregistered_choice_falls_back_to_direct_with_a_warning() -> None:
    backend = sotflow.ScriptedBackend(model())
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(sotflow.Routed(FixedRouter("self-consistency")), "Q?")
    assert answer.strategy == "direct" and answer.text == "plain answer"
    assert any("self-consistency" in w for w in answer.trace.warnings)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_extra_strategies_can_be_registered() -> None:
    backend = sotflow.ScriptedBackend(model())
    short = sotflow.Direct(max_tokens=5)
    routed = sotflow.Routed(FixedRouter("short"), strategies={"short": short})
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(routed, "Q?")
    assert answer.strategy == "direct"
    assert backend.requests[-1].params.max_tokens == 5


@pytest.mark.anyio
async def test_routed_streams_the_chosen_strategys_answer_in_order() -> None:
    backend = sotflow.ScriptedBackend(model())
    pieces: list[str] = []
    async with sotflow.Engine(backend) as engine:
        async for event in engine.stream(sotflow.Routed(FixedRouter("sot")), "Q?"):
            if isinstance(event, sotflow.AnswerDelta):
                pieces.append(event.text)
            elif isinstance(event, sotflow.RunFinished):
                final = event.answer
    assert "".join(pieces) == final.text == "1. Plan - point.\n2. Focus - point.\n3. Rest - point."


def test_a_router_needs_decide() -> None:
    with pytest.raises(TypeError, match="decide"):
        sotflow.Routed(object())


def test_extra_strategies_must_be_strategies() -> None:
    with pytest.raises(sotflow.ConfigurationError, match=r"strategies\['self-consistency'\]"):
        sotflow.Routed(strategies={"self-consistency": "SelfConsistency"})  # type: ignore[dict-item]
