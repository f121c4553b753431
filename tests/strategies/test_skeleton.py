"""Skeleton-of-Thought on the engine, with a scripted model."""

from __future__ import annotations

import re

import anyio
import pytest

import sotflow
from sotflow.events import AnswerDelta, AnswerReset, NodeFinished, RunFinished
from sotflow.types import Request
from tests.support import answer_text

SKELETON = " Plan the day\n2. Cut distractions\n3. Take breaks\n4. Review each week"


def point_number(request: Request) -> int:
    assert request.prefill is not None
    return int(request.prefill.split(".", 1)[0])


def model(skeleton: str = SKELETON, delays: dict[int, float] | None = None):
    """A scripted model: the skeleton for the outline call, a sentence per point."""

    def script(request: Request) -> sotflow.Reply:
        if request.prefill == "1.":
            return sotflow.Reply(skeleton)
        if request.prefill:
            n = point_number(request)
            return sotflow.Reply(f" detail {n} here.", delay_s=(delays or {}).get(n, 0.0))
        return sotflow.Reply("a plain direct answer")

    return script


@pytest.mark.anyio
async def test_sot_expands_every_point_at_once_and_assembles_in_order() -> None:
    backend = sotflow.ScriptedBackend(model(delays={1: 0.2, 2: 0.05, 3: 0.1, 4: 0.0}))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(sotflow.SkeletonOfThought(), "How do I manage my time?")
    assert answer.strategy == "sot"
    assert answer.text == (
        "1. Plan the day - detail 1 here.\n2. Cut distractions - detail 2 here.\n"
        "3. Take breaks - detail 3 here.\n4. Review each week - detail 4 here."
    )
    assert [(p.index, p.title, p.text) for p in answer.points or []] == [
        (1, "Plan the day", "detail 1 here."),
        (2, "Cut distractions", "detail 2 here."),
        (3, "Take breaks", "detail 3 here."),
        (4, "Review each week", "detail 4 here."),
    ]
    assert answer.skeleton == "1." + SKELETON
    # All four points were in flight together: latency is skeleton + slowest point.
    assert backend.peak_in_flight == 4
    # Every point started before any point ended (the trace agrees with the backend).
    starts = [p.start_s for p in answer.points or []]
    ends = [p.end_s for p in answer.points or []]
    assert max(starts) < min(ends)  # type: ignore[type-var]
    assert all(p.usage and p.usage.completion_tokens == 3 for p in answer.points or [])
    assert answer.usage.total_tokens == sum(n.usage.total_tokens for n in answer.trace.calls)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_prompts_carry_question_skeleton_and_prefill() -> None:
    backend = sotflow.ScriptedBackend(model())
    async with sotflow.Engine(backend) as engine:
        await engine.run(sotflow.SkeletonOfThought(max_points=6), "How do I manage my time?")
    skeleton_call, *point_calls = backend.requests
    assert skeleton_call.prefill == "1."
    assert "How do I manage my time?" in skeleton_call.messages[-1].content
    assert "3 to 6 points" in skeleton_call.messages[-1].content
    prefills = sorted(r.prefill or "" for r in point_calls)
    assert prefills == [
        "1. Plan the day -",
        "2. Cut distractions -",
        "3. Take breaks -",
        "4. Review each week -",
    ]
    for request in point_calls:
        text = request.messages[-1].content
        assert "How do I manage my time?" in text
        assert "1. Plan the day\n2. Cut distractions\n3. Take breaks\n4. Review each week" in text
        n = point_number(request)
        assert f"Write point {n} only" in text
        assert f"\n{n + 1}." in request.params.stop


@pytest.mark.anyio
async def test_expand_backend_writes_the_points() -> None:
    planner = sotflow.ScriptedBackend(model())
    writer = sotflow.ScriptedBackend(model())
    async with sotflow.Engine(planner) as engine:
        answer = await engine.run(sotflow.SkeletonOfThought(expand_backend=writer), "Q?")
    assert planner.calls == 1 and writer.calls == 4
    assert answer.ok and len(answer.points or []) == 4
    assert {n.backend for n in answer.trace.calls} == {"scripted"}  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("skeleton", "reason"),
    [("", "no points"), (" Only one idea, so just answer it", "only one point")],
)
async def test_too_few_points_fall_back_to_a_direct_answer(skeleton: str, reason: str) -> None:
    backend = sotflow.ScriptedBackend(model(skeleton))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(sotflow.SkeletonOfThought(), "What is 2 + 2?")
    assert answer.ok
    assert answer.strategy == "direct"
    assert answer.text == "a plain direct answer"
    assert reason in answer.details["fallback"]
    assert any("answered directly" in w for w in answer.trace.warnings)  # type: ignore[union-attr]
    assert backend.calls == 2


@pytest.mark.anyio
async def test_streamed_answer_comes_in_reading_order_while_points_run() -> None:
    # Point 1 is the slowest; later points finish first but must wait their turn.
    backend = sotflow.ScriptedBackend(
        model(delays={1: 0.3, 2: 0.0, 3: 0.0, 4: 0.0}), token_delay_s=0.01
    )
    pieces: list[str] = []
    finished_before_point_1_text: set[str] = set()
    async with sotflow.Engine(backend) as engine:
        async for event in engine.stream(sotflow.SkeletonOfThought(), "Q?"):
            if isinstance(event, NodeFinished) and "detail" not in "".join(pieces):
                finished_before_point_1_text.add(event.node)
            elif isinstance(event, AnswerDelta):
                pieces.append(event.text)
            elif isinstance(event, AnswerReset):
                pytest.fail("no stream was retried here")
            elif isinstance(event, RunFinished):
                answer = event.answer
    assert "".join(pieces) == answer.text
    # Points 2-4 were done before point 1 wrote anything, yet the text starts with point 1,
    # whose heading is out at once and whose words follow as they are written.
    assert {"p2", "p3", "p4"} <= finished_before_point_1_text
    assert pieces[:3] == ["1. Plan the day", " - detail", " 1"]
    assert re.match(r"1\. Plan the day - detail 1 here\.\n2\. ", answer.text)


@pytest.mark.anyio
async def test_dependency_aware_sot_runs_points_as_a_graph() -> None:
    skeleton = " Current costs\n2. New costs\n3. Compare totals (needs 1, 2)\n4. Risks"
    backend = sotflow.ScriptedBackend(model(skeleton, delays={1: 0.1, 2: 0.2, 3: 0.0, 4: 0.0}))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(
            sotflow.SkeletonOfThought(dependencies=True), "Should we migrate?"
        )
    assert answer.strategy == "sot-dag"
    points = {p.index: p for p in answer.points or []}
    assert points[3].needs == [1, 2]
    # Point 3 starts only once 1 and 2 are written; 4 runs alongside 1 and 2.
    assert points[3].start_s >= max(points[1].end_s, points[2].end_s)  # type: ignore[operator]
    assert points[4].start_s < points[1].end_s  # type: ignore[operator]
    (request,) = [r for r in backend.requests if r.prefill == "3. Compare totals -"]
    prompt = request.messages[-1].content
    assert "1. Current costs: detail 1 here." in prompt
    assert "2. New costs: detail 2 here." in prompt
    assert answer.details["dependencies"] == {1: [], 2: [], 3: [1, 2], 4: []}
    assert answer.trace.node("p3").needs == ["skeleton", "p1", "p2"]  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_dependency_aware_sot_survives_bad_references() -> None:
    skeleton = " A (needs 7)\n2. B (needs 3)\n3. C (needs 2)\n4. D (needs 4)"
    backend = sotflow.ScriptedBackend(model(skeleton))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(sotflow.SkeletonOfThought(dependencies=True), "Q?")
    assert answer.ok and len(answer.points or []) == 4
    warnings = " ".join(answer.details["outline_warnings"])
    assert "does not exist" in warnings and "cycle" in warnings and "itself" in warnings


@pytest.mark.anyio
async def test_prompts_can_be_overridden(tmp_path) -> None:
    (tmp_path / "point.user.txt").write_text("POINT $index OF [$skeleton] FOR $question$written")
    backend = sotflow.ScriptedBackend(model())
    strategy = sotflow.SkeletonOfThought(
        prompt_dir=tmp_path, prompts={"skeleton.user": "OUTLINE $question ($max_points max)"}
    )
    async with sotflow.Engine(backend) as engine:
        await engine.run(strategy, "Q?")
    assert backend.requests[0].messages[-1].content == "OUTLINE Q? (10 max)"
    assert any(r.messages[-1].content.startswith("POINT 2 OF [1. Plan") for r in backend.requests)


def test_a_template_with_an_unknown_placeholder_says_which() -> None:
    strategy = sotflow.SkeletonOfThought(prompts={"skeleton.user": "Q: $question in $language"})
    with pytest.raises(sotflow.ConfigurationError, match=r"\$language"):
        strategy.build("Q?", sotflow.BuildContext(sotflow.ScriptedBackend(["x"])))


def failing_points(*numbers: int):
    """The scripted model, with the points numbered ``numbers`` failing for good."""

    def script(request: Request) -> object:
        if request.prefill == "1.":
            return SKELETON
        if request.prefill and point_number(request) in numbers:
            return sotflow.BadRequestError("context too long", status_code=400)
        return f" detail {point_number(request)}."

    return script


@pytest.mark.anyio
async def test_a_failed_point_is_left_out_with_a_warning() -> None:
    backend = sotflow.ScriptedBackend(failing_points(2))
    events: list[sotflow.Event] = []
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(sotflow.SkeletonOfThought(), "Q?", on_event=events.append)
    assert answer.ok, answer.error
    assert answer.text == (
        "1. Plan the day - detail 1.\n3. Take breaks - detail 3.\n4. Review each week - detail 4."
    )
    assert [p.index for p in answer.points or []] == [1, 3, 4]
    assert answer.details["failed_points"] == [2]
    assert answer.trace is not None
    (warning,) = [w for w in answer.trace.warnings if "point 2" in w]
    assert "'Cut distractions'" in warning and "BadRequestError: context too long" in warning
    assert answer.warnings == answer.trace.warnings
    # The streamed answer is the written one: the failed point's text never shows.
    assert answer_text(events) == answer.text


@pytest.mark.anyio
async def test_half_the_points_failing_still_gives_an_answer() -> None:
    backend = sotflow.ScriptedBackend(failing_points(1, 4))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(sotflow.SkeletonOfThought(), "Q?")
    assert answer.ok and [p.index for p in answer.points or []] == [2, 3]


@pytest.mark.anyio
async def test_more_than_half_the_points_failing_fails_the_answer_with_their_error() -> None:
    backend = sotflow.ScriptedBackend(failing_points(1, 2, 4))
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(sotflow.BadRequestError, match="context too long"):
            await engine.run(sotflow.SkeletonOfThought(), "Q?")
        answers = await engine.batch(sotflow.SkeletonOfThought(), ["Q?"])
    assert answers[0].error is not None and answers[0].error.type == "BadRequestError"
    assert answers[0].trace is not None
    assert sum("failed after its retries" in w for w in answers[0].trace.warnings) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("routed", [False, True], ids=["sot", "auto"])
async def test_a_failed_skeleton_fails_the_answer_with_its_error(routed: bool) -> None:
    # The skeleton's `then` adds the rest of the graph; when the skeleton fails there is
    # no rest, and the run must still report why (not that the graph stalled).
    def script(request: Request) -> object:
        return sotflow.AuthenticationError("invalid api key", status_code=401)

    backend = sotflow.ScriptedBackend(script)
    strategy = (
        sotflow.Routed(strategies={"direct": sotflow.SkeletonOfThought()})
        if routed
        else sotflow.SkeletonOfThought()
    )
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(sotflow.AuthenticationError, match="invalid api key"):
            await engine.run(strategy, "Write a haiku.")
        answer = await engine.run(strategy, "Write a haiku.", return_errors=True)
    assert answer.error is not None
    assert (answer.error.type, answer.error.message) == ("AuthenticationError", "invalid api key")


@pytest.mark.anyio
async def test_points_share_the_backend_cap() -> None:
    backend = sotflow.ScriptedBackend(
        model(delays={1: 0.05, 2: 0.05, 3: 0.05, 4: 0.05}), max_concurrency=2
    )
    async with sotflow.Engine(backend) as engine:
        answers = await engine.batch(sotflow.SkeletonOfThought(), ["A?", "B?", "C?"])
    assert all(a.ok for a in answers)
    assert backend.peak_in_flight == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(sotflow.ConfigurationError, match="max_points"):
        sotflow.SkeletonOfThought(max_points=1)
    with pytest.raises(sotflow.ConfigurationError, match="min_points"):
        sotflow.SkeletonOfThought(min_points=12, max_points=10)


@pytest.mark.anyio
async def test_run_can_be_cancelled_mid_expansion() -> None:
    backend = sotflow.ScriptedBackend(model(delays={1: 5, 2: 5, 3: 5, 4: 5}))
    async with sotflow.Engine(backend) as engine, anyio.create_task_group() as tg:
        tg.start_soon(engine.run, sotflow.SkeletonOfThought(), "Q?")
        # Cancelled once all four points are being written, however long that took.
        with anyio.fail_after(10):
            while backend.in_flight < 4:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert backend.in_flight == 0
    assert backend.cancelled == 4


@pytest.mark.anyio
async def test_points_join_their_heading_with_one_space_whatever_the_model_put_first() -> None:
    # Real small models continue "3. Title -" with " \nA ..." or "\n\nA ..." (issue 13):
    # the stray break is replaced by one space, live and in the written answer alike;
    # a point that came back empty keeps its heading without a dangling dash.
    texts = {1: " \nFirst detail.", 2: "\n  Second detail.", 3: "", 4: "   "}

    def script(request: Request) -> sotflow.Reply:
        if request.prefill == "1.":
            return sotflow.Reply(SKELETON)
        return sotflow.Reply(texts[point_number(request)], token_delay_s=0.001)

    events: list[sotflow.Event] = []
    async with sotflow.Engine(sotflow.ScriptedBackend(script)) as engine:
        answer = await engine.run(sotflow.SkeletonOfThought(), "Q?", on_event=events.append)
    assert answer.text == (
        "1. Plan the day - First detail.\n2. Cut distractions - Second detail.\n"
        "3. Take breaks\n4. Review each week"
    )
    assert answer_text(events) == answer.text
    assert [p.text for p in answer.points or []] == ["First detail.", "Second detail.", "", ""]
