"""Chain on the engine: outputs feed templates, strategies embed, the last step streams."""

from __future__ import annotations

import re

import pytest

import sotflow
from sotflow.events import AnswerDelta, NodeFinished, RunFinished
from sotflow.strategies import Chain, Refine
from sotflow.types import Request

SKELETON = " Sleep\n2. Move\n3. Eat well"


def echo(request: Request) -> sotflow.Reply:
    """Answers "<<prompt>>" so each step's prompt is visible in the next step's."""
    return sotflow.Reply(f"<<{request.messages[-1].content}>>")


@pytest.mark.anyio
async def test_each_output_feeds_the_next_template() -> None:
    backend = sotflow.ScriptedBackend(echo)
    chain = Chain(
        "List the facts in: $question",
        "Answer $question from:\n$previous",
        "Shorten: $previous (first step said $step1)",
    )
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(chain, "Why is the sky blue?")
    prompts = [r.messages[-1].content for r in backend.requests]
    assert prompts[0] == "List the facts in: Why is the sky blue?"
    first = "<<List the facts in: Why is the sky blue?>>"
    assert prompts[1] == f"Answer Why is the sky blue? from:\n{first}"
    assert prompts[2].startswith("Shorten: <<Answer Why is the sky blue? from:")
    assert prompts[2].endswith("(first step said <<List the facts in: Why is the sky blue?>>)")
    assert answer.strategy == "chain"
    assert answer.text == f"<<{prompts[2]}>>"
    steps = answer.details["steps"]
    assert [s["kind"] for s in steps] == ["prompt", "prompt", "prompt"]
    assert [s["text"] for s in steps] == [f"<<{p}>>" for p in prompts]
    # Strictly one after another.
    trace = answer.trace
    assert trace is not None
    assert trace.node("step2").start_s >= trace.node("step1").end_s  # type: ignore[operator]
    assert trace.node("step3").needs == ["step2"]


@pytest.mark.anyio
async def test_previous_is_the_question_for_the_first_step() -> None:
    backend = sotflow.ScriptedBackend(echo)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(Chain("Translate: $previous"), "Bonjour")
    assert answer.text == "<<Translate: Bonjour>>"


def model(request: Request) -> sotflow.Reply:
    prompt = request.messages[-1].content
    if request.prefill == "1.":
        return sotflow.Reply(SKELETON)
    if request.prefill:
        return sotflow.Reply(" short detail.")
    if "reply with the single word DONE" in prompt:
        return sotflow.Reply("DONE")
    if "Build on this earlier answer" in prompt:
        return sotflow.Reply("a polished version")
    return sotflow.Reply("plain")


@pytest.mark.anyio
async def test_sot_then_refine_embeds_both_strategies() -> None:
    backend = sotflow.ScriptedBackend(model)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(
            Chain(sotflow.SkeletonOfThought(), Refine(1)), "How do I stay healthy?"
        )
    trace = answer.trace
    assert trace is not None
    ids = [n.id for n in trace.nodes]
    assert {"step1", "step1/skeleton", "step1/p1", "step1/p3", "step2/draft"} <= set(ids)
    assert trace.node("step1").meta["strategy"] == "sot"
    assert trace.node("step2").meta["strategy"] == "refine"
    # Refine drafts on the chain_next prompt: the question plus SoT's answer to build on.
    prompts = [r.messages[-1].content for r in backend.requests]
    (prompt,) = [p for p in prompts if "Build on this earlier answer" in p]
    assert prompt.startswith("How do I stay healthy?")
    assert (
        "1. Sleep - short detail.\n2. Move - short detail.\n3. Eat well - short detail." in prompt
    )
    assert answer.text == "a polished version"
    steps = answer.details["steps"]
    assert [s["kind"] for s in steps] == ["sot", "refine"]
    assert steps[1]["details"]["accepted"] is True
    assert answer.usage.total_tokens == sum(n.usage.total_tokens for n in trace.calls)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_strategy_step_can_have_its_own_template() -> None:
    backend = sotflow.ScriptedBackend(echo)
    chain = Chain("Draft: $question", (sotflow.Direct(), "Fix the grammar of: $previous"))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(chain, "hello")
    assert answer.text == "<<Fix the grammar of: <<Draft: hello>>>>"
    assert answer.details["steps"][1]["kind"] == "direct"


@pytest.mark.anyio
async def test_the_last_step_streams_as_the_answer() -> None:
    backend = sotflow.ScriptedBackend(
        lambda r: "first step text" if "Summarise" in r.messages[-1].content else
        "the final words of the chain",
        token_delay_s=0.02,
    )  # fmt: skip
    pieces: list[str] = []
    text_before_last_finished = ""
    async with sotflow.Engine(backend) as engine:
        chain = Chain("Summarise: $question", "Rewrite: $previous")
        async for event in engine.stream(chain, "Q?"):
            if isinstance(event, AnswerDelta):
                pieces.append(event.text)
            elif isinstance(event, NodeFinished) and event.node == "step2":
                text_before_last_finished = "".join(pieces)
            elif isinstance(event, RunFinished):
                answer = event.answer
    assert "".join(pieces) == answer.text == "the final words of the chain"
    # Streamed word by word while the last step was still writing; step 1 never showed.
    assert len(pieces) > 3 and text_before_last_finished == answer.text


@pytest.mark.anyio
async def test_an_embedded_sot_as_last_step_streams_its_points() -> None:
    backend = sotflow.ScriptedBackend(model)
    pieces: list[str] = []
    async with sotflow.Engine(backend) as engine:
        chain = Chain("Restate: $question", sotflow.SkeletonOfThought())
        async for event in engine.stream(chain, "How do I stay healthy?"):
            if isinstance(event, AnswerDelta):
                pieces.append(event.text)
            elif isinstance(event, RunFinished):
                answer = event.answer
    assert answer.ok, answer.error
    assert "".join(pieces) == answer.text
    assert re.match(r"1\. Sleep - short detail\.\n2\. Move", answer.text)
    assert [p.title for p in answer.points or []] == ["Sleep", "Move", "Eat well"]
    assert pieces[0] == "1. Sleep"  # the first point's heading, streamed as a part


@pytest.mark.anyio
async def test_a_failed_step_fails_the_chain_with_its_error() -> None:
    def script(request: Request) -> object:
        if "Second" in request.messages[-1].content:
            return sotflow.BadRequestError("too long", status_code=400)
        return "ok"

    backend = sotflow.ScriptedBackend(script)
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(sotflow.BadRequestError, match="too long"):
            await engine.run(Chain("First $question", "Second $previous", "Third"), "Q?")
    assert backend.calls == 2


def test_templates_are_checked_when_the_chain_is_made() -> None:
    with pytest.raises(sotflow.ConfigurationError, match=r"step 1's template uses \$previuos"):
        Chain("Fix: $previuos")
    with pytest.raises(sotflow.ConfigurationError, match=r"uses \$step2"):
        Chain("A $question", "B $step2")
    with pytest.raises(sotflow.ConfigurationError, match="malformed"):
        Chain("costs $ 5")
    with pytest.raises(sotflow.ConfigurationError, match="at least one step"):
        Chain()
    with pytest.raises(sotflow.ConfigurationError, match="chain step 2"):
        Chain("A", 42)  # type: ignore[arg-type]
