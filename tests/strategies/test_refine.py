"""Refine on the engine: draft, critique, revise, with a scripted model."""

from __future__ import annotations

import re

import pytest

import sotflow
from sotflow.strategies import Refine
from sotflow.strategies.refine import critique_is_done
from sotflow.types import Request


def model(satisfied_at: int | None):
    """Drafts are "answer vN"; the critic says DONE once it sees version ``satisfied_at``."""

    def script(request: Request) -> str:
        prompt = request.messages[-1].content
        if "reply with the single word DONE" in prompt:
            version = int(re.search(r"answer v(\d+)", prompt).group(1))  # type: ignore[union-attr]
            if satisfied_at is not None and version >= satisfied_at:
                return "DONE"
            return f"v{version} lacks an example."
        if "feedback on it" in prompt:
            version = int(re.search(r"answer v(\d+)", prompt).group(1))  # type: ignore[union-attr]
            return f"answer v{version + 1}"
        return "answer v0"

    return script


@pytest.mark.anyio
async def test_the_model_critic_loops_until_it_is_satisfied() -> None:
    backend = sotflow.ScriptedBackend(model(satisfied_at=2))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(Refine(5), "Explain recursion.")
    assert answer.strategy == "refine"
    assert answer.text == "answer v2"
    assert [n.id for n in answer.trace.nodes] == [  # type: ignore[union-attr]
        "draft", "critique0", "revise1", "critique1", "revise2", "critique2", "answer",
    ]  # fmt: skip
    assert answer.details["rounds"] == [
        {"round": 0, "text": "answer v0", "critique": "v0 lacks an example.", "done": False},
        {"round": 1, "text": "answer v1", "critique": "v1 lacks an example.", "done": False},
        {"round": 2, "text": "answer v2", "critique": "DONE", "done": True},
    ]
    assert answer.details["accepted"] is True and answer.details["stopped"] == "accepted"
    # The revision sees the question, the text it revises and the critique of it.
    revise = backend.requests[2].messages[-1].content
    assert "Explain recursion." in revise
    assert "answer v0" in revise and "v0 lacks an example." in revise
    critique = backend.requests[1]
    assert "answer v0" in critique.messages[-1].content
    assert critique.params.temperature == 0.0


@pytest.mark.anyio
async def test_rounds_run_out_without_a_useless_last_critique() -> None:
    backend = sotflow.ScriptedBackend(model(satisfied_at=None))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(Refine(2), "Q?")
    # draft, critique, revise, critique, revise: nothing could act on a third critique.
    assert backend.calls == 5
    assert answer.text == "answer v2"
    assert [r["done"] for r in answer.details["rounds"]] == [False, False, None]
    assert answer.details["accepted"] is None and answer.details["stopped"] == "max_rounds"


@pytest.mark.anyio
async def test_no_rounds_means_just_the_draft() -> None:
    backend = sotflow.ScriptedBackend(model(satisfied_at=None))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(Refine(0), "Q?")
    assert backend.calls == 1 and answer.text == "answer v0"


@pytest.mark.anyio
async def test_an_external_check_gives_the_feedback_and_checks_the_last_revision() -> None:
    seen: list[str] = []

    async def check(text: str) -> str | None:
        seen.append(text)
        return None if text.endswith("v2") else f"{text} fails test_parse"

    backend = sotflow.ScriptedBackend(model(satisfied_at=None))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(Refine(3, feedback=check), "Fix the parser.")
    assert seen == ["answer v0", "answer v1", "answer v2"]
    assert backend.calls == 3  # the draft and two revisions; the check costs no call
    assert answer.text == "answer v2" and answer.details["accepted"] is True
    assert "answer v1 fails test_parse" in backend.requests[2].messages[-1].content

    # Out of rounds while the check still fails: the last revision is checked too.
    backend = sotflow.ScriptedBackend(model(satisfied_at=None))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(Refine(1, feedback=lambda t: "still wrong"), "Q?")
    assert answer.details["accepted"] is False and answer.details["stopped"] == "max_rounds"
    assert [r["critique"] for r in answer.details["rounds"]] == ["still wrong", "still wrong"]


@pytest.mark.anyio
async def test_a_check_that_returns_something_else_fails_clearly() -> None:
    backend = sotflow.ScriptedBackend(model(satisfied_at=None))
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(TypeError, match="string or None"):
            await engine.run(Refine(1, feedback=lambda t: False), "Q?")  # type: ignore[arg-type,return-value]


@pytest.mark.anyio
async def test_a_token_budget_stops_the_loop() -> None:
    backend = sotflow.ScriptedBackend(model(satisfied_at=None))
    async with sotflow.Engine(backend, budget=150) as engine:
        with pytest.raises(sotflow.BudgetExceededError) as info:
            await engine.run(Refine(50), "Explain recursion.")
    assert info.value.used >= 150
    # Each call is well under the budget, so several ran, but the loop did not run to 50.
    assert 3 <= backend.calls < 20


@pytest.mark.anyio
async def test_the_critic_can_be_another_model() -> None:
    writer = sotflow.ScriptedBackend(model(satisfied_at=None))
    critic = sotflow.ScriptedBackend(model(satisfied_at=1))
    async with sotflow.Engine(writer) as engine:
        answer = await engine.run(Refine(3, critic_backend=critic), "Q?")
    assert writer.calls == 2 and critic.calls == 2
    assert answer.text == "answer v1"
    assert answer.trace.node("critique0").model == "scripted"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("critique", "done"),
    [
        ("DONE", True),
        ("Done.", True),
        ("**DONE**", True),
        ("The answer is correct and complete.\nDONE", True),
        ("- The second step is wrong.\n- No example.", False),
        ("This is not done yet: the intro is missing.", False),
        ("", False),
    ],
)
def test_reading_the_critics_verdict(critique: str, done: bool) -> None:
    assert critique_is_done(critique) is done


def test_bad_settings_are_refused() -> None:
    with pytest.raises(sotflow.ConfigurationError, match="max_rounds"):
        Refine(-1)
    with pytest.raises(TypeError, match="feedback"):
        Refine(2, feedback="be nicer")  # type: ignore[arg-type]
