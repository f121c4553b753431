"""The graph engine: growth, fan-in, settle, cancellation, embedding, errors and traces."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from sotflow import (
    BadRequestError,
    Call,
    Completion,
    Direct,
    Embed,
    Engine,
    Expand,
    Graph,
    GraphError,
    NodeContext,
    Outcome,
    Part,
    Reply,
    Request,
    Result,
    ScriptedBackend,
    Step,
    StreamReset,
    TextDelta,
)
from sotflow.errors import error_from_status

from .support import GraphStrategy, answer_text, node_text

pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


def text_of(completion: Completion, ctx: NodeContext) -> str:
    return completion.text


def by_prompt(replies: Mapping[str, str | Reply | BaseException]) -> ScriptedBackend:
    """A backend that answers each prompt from a table (order of calls does not matter)."""
    return ScriptedBackend(lambda request: replies[request.messages[-1].content])


async def run(
    backend: ScriptedBackend, build: Any, question: str = "q", **engine_kwargs: Any
) -> Any:
    async with Engine(backend, **engine_kwargs) as engine:
        return await engine.run(GraphStrategy(build), question, return_errors=True)


# -- static checks ------------------------------------------------------------------------


def test_duplicate_ids_unknown_needs_cycles_and_bad_ids_are_graph_errors() -> None:
    with pytest.raises(GraphError, match="duplicate node id 'a'"):
        Graph([Step("a", lambda c: 1), Step("a", lambda c: 2)], output="a")
    with pytest.raises(GraphError, match="'b' needs 'nope'"):
        Graph([Step("a", lambda c: 1), Step("b", lambda c: 2, needs=("nope",))], output="b")
    with pytest.raises(GraphError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        Graph(
            [Step("a", lambda c: 1, needs=("b",)), Step("b", lambda c: 2, needs=("a",))],
            output="a",
        )
    with pytest.raises(GraphError, match="cycle"):
        Graph([Step("self", lambda c: 1, needs=("self",))], output="self")
    with pytest.raises(GraphError, match="no '/'"):
        Graph([Step("a/b", lambda c: 1)], output="a/b")
    with pytest.raises(GraphError, match="not a graph node"):
        Graph(["a"], output="a")  # type: ignore[list-item]
    with pytest.raises(GraphError, match="at least one node"):
        Graph([], output="a")
    with pytest.raises(GraphError, match="call 'a' has backend='gpt-4o-mini', which is not"):
        Graph([Call("a", Request.of("q"), backend="gpt-4o-mini")], output="a")  # type: ignore[arg-type]


def test_a_long_chain_is_not_a_cycle() -> None:
    nodes = [Step(f"n{i}", lambda c: 0, needs=(f"n{i - 1}",) if i else ()) for i in range(300)]
    assert len(Graph(nodes, output="n299").nodes) == 300


# -- growth, fan-out and fan-in ------------------------------------------------------------


@pytest.mark.anyio
async def test_fan_out_with_expand_add_and_fan_in() -> None:
    backend = ScriptedBackend(
        lambda r: Reply(f"<{r.messages[-1].content}>", delay_s=0.1), max_concurrency=10
    )

    def build(question: str) -> Graph:
        def plan(ctx: NodeContext) -> Expand:
            points = ["p0", "p1", "p2", "p3"]
            calls = [Call(p, Request.of(f"write {p}"), then=text_of) for p in points]
            join = Step("join", lambda c: " ".join(c[p] for p in points), needs=tuple(points))
            return Expand(value=len(points), add=[*calls, join])

        return Graph([Step("plan", plan), Step("done", lambda c: c["plan"])], output="join")

    answer = await run(backend, build)
    assert answer.ok, answer.error
    assert answer.text == "<write p0> <write p1> <write p2> <write p3>"
    assert backend.peak_in_flight == 4  # the points ran at once
    trace = answer.trace
    # ... and not one after another: every call started before the first one ended.
    assert max(n.start_s for n in trace.calls) < min(n.end_s for n in trace.calls)  # type: ignore[type-var]
    assert [n.id for n in trace.calls] and {n.id for n in trace.calls} == {"p0", "p1", "p2", "p3"}
    assert trace.node("join").needs == ["p0", "p1", "p2", "p3"]


@pytest.mark.anyio
async def test_request_builders_see_their_inputs() -> None:
    backend = ScriptedBackend(lambda r: r.messages[-1].content.upper())

    def build(question: str) -> Graph:
        return Graph(
            [
                Call("first", Request.of(question), then=text_of),
                Call(
                    "second", lambda c: Request.of(c["first"] + "!"), needs=("first",), then=text_of
                ),
            ],
            output="second",
        )

    answer = await run(backend, build, "hi")
    assert answer.text == "HI!"
    assert [r.messages[-1].content for r in backend.requests] == ["hi", "HI!"]


@pytest.mark.anyio
async def test_async_steps_and_context() -> None:
    async def slow_double(ctx: NodeContext) -> int:
        await anyio.sleep(0.01)
        return ctx["one"] * 2

    def report(ctx: NodeContext) -> str:
        ctx.warn("just so you know")
        outcomes = ctx.outcomes()
        return f"{ctx.node_id}:{ctx.question}:{sorted(outcomes)}:{ctx['two']}:{ctx.pending()}"

    def build(question: str) -> Graph:
        return Graph(
            [
                Step("one", lambda c: 21),
                Step("two", slow_double, needs=("one",)),
                Step("report", report, needs=("two",)),
            ],
            output="report",
        )

    answer = await run(ScriptedBackend([]), build, "why")
    assert answer.text == "report:why:['one', 'two']:42:['report']"
    assert answer.trace.warnings == ["report: just so you know"]


# -- settle and cancellation ---------------------------------------------------------------


@pytest.mark.anyio
async def test_settle_nodes_receive_outcomes_of_failed_needs() -> None:
    failure = error_from_status(400, "bad point")
    backend = by_prompt({"a": "fine", "b": failure})
    seen: dict[str, Outcome] = {}

    def gather(ctx: NodeContext) -> str:
        seen.update(ctx.inputs)
        return "|".join(o.value for o in ctx.inputs.values() if o.ok)

    def build(question: str) -> Graph:
        return Graph(
            [
                Call("a", Request.of("a"), then=text_of),
                Call("b", Request.of("b"), then=text_of),
                Step("gather", gather, needs=("a", "b"), settle=True),
            ],
            output="gather",
        )

    answer = await run(backend, build)
    assert answer.ok and answer.text == "fine"
    assert seen["a"].status == "ok" and seen["a"].value == "fine"
    assert seen["b"].status == "failed" and seen["b"].error is failure
    assert answer.trace.node("b").status == "failed"
    assert answer.trace.node("b").error.type == "BadRequestError"


@pytest.mark.anyio
async def test_expand_cancel_stops_siblings_in_flight() -> None:
    # Best-of-3: the first sample to finish wins and cancels the two still running.
    backend = by_prompt(
        {
            "s0": Reply("slow zero", delay_s=30),
            "s1": Reply("quick one", delay_s=0.05),
            "s2": Reply("slow two", delay_s=30),
        }
    )
    ids = ["s0", "s1", "s2"]

    def first_wins(completion: Completion, ctx: NodeContext) -> Expand:
        others = [i for i in ids if i != ctx.node_id and i in ctx.pending()]
        return Expand(completion.text, cancel=others)

    def pick(ctx: NodeContext) -> str:
        return next(o.value for o in ctx.inputs.values() if o.ok)

    def build(question: str) -> Graph:
        samples = [Call(i, Request.of(i), then=first_wins) for i in ids]
        return Graph([*samples, Step("pick", pick, needs=tuple(ids), settle=True)], "pick")

    start = time.monotonic()
    answer = await run(backend, build)
    assert time.monotonic() - start < 10
    assert answer.ok and answer.text == "quick one"
    assert backend.cancelled == 2 and backend.in_flight == 0
    statuses = {n.id: n.status for n in answer.trace.nodes}
    assert statuses == {"s0": "cancelled", "s1": "ok", "s2": "cancelled", "pick": "ok"}
    assert answer.trace.node("s0").end_s is not None


@pytest.mark.anyio
async def test_a_cancelled_need_cancels_plain_dependents() -> None:
    backend = by_prompt({"slow": Reply("x", delay_s=30)})

    def build(question: str) -> Graph:
        return Graph(
            [
                Call("slow", Request.of("slow")),
                Step("canceller", lambda c: Expand("done", cancel=["slow"])),
                Step("after", lambda c: "never", needs=("slow",)),
                Step(
                    "out", lambda c: c["canceller"].value, needs=("canceller", "after"), settle=True
                ),
            ],
            output="out",
        )

    answer = await run(backend, build)
    assert answer.text == "done"
    assert answer.trace.node("after").status == "cancelled"
    assert answer.trace.node("after").start_s is None  # it never ran


@pytest.mark.anyio
async def test_loops_by_appending_rounds() -> None:
    # Refine until the draft is long enough: each round adds the next call and check.
    backend = ScriptedBackend(lambda r: r.messages[-1].content + " more")

    def check(round_: int) -> Any:
        def fn(ctx: NodeContext) -> Any:
            draft = ctx[f"draft{round_}"]
            if len(draft.split()) >= 5:
                final = Step("final", lambda c: c[f"check{round_}"], needs=(f"check{round_}",))
                return Expand(draft, add=[final])
            nxt = round_ + 1
            return Expand(
                draft,
                add=[
                    Call(f"draft{nxt}", Request.of(draft), needs=(f"check{round_}",), then=text_of),
                    Step(f"check{nxt}", check(nxt), needs=(f"draft{nxt}",)),
                ],
            )

        return fn

    def build(question: str) -> Graph:
        return Graph(
            [
                Call("draft0", Request.of(question), then=text_of),
                Step("check0", check(0), needs=("draft0",)),
            ],
            output="final",
        )

    answer = await run(backend, build, "start")
    assert answer.ok and answer.text == "start more more more more"
    assert backend.calls == 4
    assert [n.id for n in answer.trace.calls] == ["draft0", "draft1", "draft2", "draft3"]


@pytest.mark.anyio
async def test_an_output_that_is_never_added_fails_instead_of_hanging() -> None:
    def build(question: str) -> Graph:
        return Graph([Call("only", Request.of(question))], output="missing")

    with anyio.fail_after(5):
        answer = await run(ScriptedBackend(["x"]), build)
    assert answer.error is not None and answer.error.type == "GraphError"
    assert "'missing'" in answer.error.message


@pytest.mark.anyio
async def test_a_bad_expansion_fails_with_graph_error() -> None:
    def build(question: str) -> Graph:
        grow = Step("grow", lambda c: Expand(add=[Step("grow", lambda c: 1)]))
        return Graph([grow, Step("out", lambda c: "x", needs=("grow",))], output="out")

    with anyio.fail_after(5):
        answer = await run(ScriptedBackend([]), build)
    assert answer.error is not None and answer.error.type == "GraphError"
    assert "duplicate" in answer.error.message


@pytest.mark.anyio
async def test_an_expansion_with_a_call_on_something_not_a_backend_fails_the_run_only() -> None:
    def build(question: str) -> Graph:
        bad = Call("late", Request.of("q"), backend="gpt-4o-mini")  # type: ignore[arg-type]
        return Graph([Step("grow", lambda c: Expand(add=[bad]))], output="late")

    backend = ScriptedBackend(["unused"])
    answer = await run(backend, build)  # leaving the engine must not trip over it either
    assert answer.error is not None and answer.error.type == "GraphError"
    assert "'late' has backend='gpt-4o-mini'" in answer.error.message
    assert backend.calls == 0


@pytest.mark.anyio
async def test_a_failed_dependency_propagates_its_original_exception() -> None:
    failure = error_from_status(400, "the model rejected this")

    def build(question: str) -> Graph:
        return Graph(
            [
                Call("a", Request.of("a")),
                Step("b", lambda c: "b", needs=("a",)),
                Step("c", lambda c: "c", needs=("b",)),
            ],
            output="c",
        )

    async with Engine(ScriptedBackend([failure])) as engine:
        with pytest.raises(BadRequestError) as caught:
            await engine.run(GraphStrategy(build), "q")
        assert caught.value is failure
    answer = await run(ScriptedBackend([failure]), build)
    assert {n.id: n.status for n in answer.trace.nodes} == {
        "a": "failed",
        "b": "failed",
        "c": "failed",
    }


@pytest.mark.anyio
async def test_step_exceptions_fail_the_run_with_their_type() -> None:
    def build(question: str) -> Graph:
        return Graph([Step("boom", lambda c: {}["missing"])], output="boom")

    async with Engine(ScriptedBackend([])) as engine:
        with pytest.raises(KeyError):
            await engine.run(GraphStrategy(build), "q")


# -- embedding -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_embed_runs_another_strategy_in_a_namespace() -> None:
    backend = ScriptedBackend(lambda r: f"answered: {r.messages[-1].content}")

    def build(question: str) -> Graph:
        return Graph(
            [
                Step("rewrite", lambda c: c.question.upper()),
                Embed("inner", Direct(), question=lambda c: c["rewrite"], needs=("rewrite",)),
                Step("out", lambda c: Result(text=c["inner"].text + "."), needs=("inner",)),
            ],
            output="out",
        )

    answer = await run(backend, build, "why")
    assert answer.ok and answer.text == "answered: WHY."
    ids = [n.id for n in answer.trace.nodes]
    assert "inner/answer" in ids and "answer" not in ids
    inner = answer.trace.node("inner")
    assert inner.kind == "embed" and inner.status == "ok"
    assert inner.meta["strategy"] == "direct"
    assert answer.trace.node("inner/answer").kind == "call"
    assert answer.usage.total_tokens == answer.trace.node("inner/answer").usage.total_tokens


@pytest.mark.anyio
async def test_embedded_answer_streams_as_part_of_the_answer() -> None:
    backend = ScriptedBackend(["streamed from inside"])

    def build(question: str) -> Graph:
        return Graph([Embed("routed", Direct(), question, part=Part((0,)))], output="routed")

    async with Engine(backend) as engine:
        events = [e async for e in engine.stream(GraphStrategy(build), "q")]
    answer = events[-1].answer  # type: ignore[attr-defined]
    assert answer.text == "streamed from inside"
    assert answer_text(events) == answer.text
    assert node_text(events, "routed/answer") == answer.text


@pytest.mark.anyio
async def test_cancelling_an_embed_cancels_its_sub_graph() -> None:
    backend = ScriptedBackend([Reply("never", delay_s=30)])

    def build(question: str) -> Graph:
        return Graph(
            [
                Embed("inner", Direct(), question),
                Step("stop", lambda c: Expand("stopped", cancel=["inner"])),
                Step("out", lambda c: c["stop"].value, needs=("stop", "inner"), settle=True),
            ],
            output="out",
        )

    with anyio.fail_after(5):
        answer = await run(backend, build)
    assert answer.text == "stopped"
    assert answer.trace.node("inner/answer").status == "cancelled"
    assert backend.cancelled == 1


# -- streamed answer parts -----------------------------------------------------------------


@pytest.mark.anyio
async def test_parts_stream_in_key_order_while_later_parts_finish_first() -> None:
    backend = by_prompt(
        {"first": Reply("one two three", token_delay_s=0.05), "second": Reply("four five")}
    )

    def assemble(ctx: NodeContext) -> str:
        return f"A: {ctx['a']}\nB: {ctx['b']}."

    def build(question: str) -> Graph:
        return Graph(
            [
                Call("a", Request.of("first"), then=text_of, part=Part((0,), prefix="A: ")),
                Call("b", Request.of("second"), then=text_of, part=Part((1,), "\nB: ", ".")),
                Step("out", assemble, needs=("a", "b")),
            ],
            output="out",
        )

    async with Engine(backend) as engine:
        events = [e async for e in engine.stream(GraphStrategy(build), "q")]
    answer = events[-1].answer  # type: ignore[attr-defined]
    assert answer.text == "A: one two three\nB: four five."
    assert answer_text(events) == answer.text


@pytest.mark.anyio
async def test_a_cancelled_part_withdraws_everything_it_showed() -> None:
    # Part b is already the live part (a finished) when it is cancelled: its prefix
    # and text were shown and must be withdrawn, since the answer leaves it out.
    backend = by_prompt(
        {"first": Reply("one two"), "second": Reply("x y z w v", token_delay_s=0.1)}
    )

    def stop_b(ctx: NodeContext) -> Expand:
        return Expand("stopped", cancel=["b"])

    def build(question: str) -> Graph:
        return Graph(
            [
                Call("a", Request.of("first"), then=text_of, part=Part((0,), prefix="A: ")),
                Call("b", Request.of("second"), then=text_of, part=Part((1,), "\nB: ")),
                Step("wait", lambda c: anyio.sleep(0.25), needs=("a",)),
                Step("stop", stop_b, needs=("wait",)),
                Step("out", lambda c: "A: " + c["a"].value, needs=("a", "b", "stop"), settle=True),
            ],
            output="out",
        )

    async with Engine(backend) as engine:
        events = [e async for e in engine.stream(GraphStrategy(build), "q")]
    answer = events[-1].answer  # type: ignore[attr-defined]
    assert answer.text == "A: one two"
    # b really streamed (and was live) before it was cancelled.
    assert any(isinstance(e, TextDelta) and e.node == "b" for e in events)
    assert any(isinstance(e, StreamReset) and e.node == "b" for e in events)
    assert answer_text(events) == answer.text


# -- traces -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_trace_records_every_node() -> None:
    backend = by_prompt(
        {
            "a": Reply("alpha", delay_s=0.05),
            "b": Reply("beta beta", delay_s=0.15),
            "c": Reply("gamma", delay_s=0.02),
        }
    )

    def build(question: str) -> Graph:
        return Graph(
            [
                Call("a", Request.of("a"), then=text_of, meta={"role": "root"}),
                Call("b", Request.of("b"), needs=("a",), then=text_of),
                Call("c", Request.of("c"), needs=("a",), then=text_of),
                Step("d", lambda c: c["b"] + c["c"], needs=("b", "c")),
            ],
            output="d",
        )

    answer = await run(backend, build)
    trace = answer.trace
    assert trace.strategy == "graph" and trace.duration_s >= 0.2
    assert [n.id for n in trace.nodes][:1] == ["a"]
    a, b, c, d = (trace.node(i) for i in "abcd")
    assert (a.kind, b.kind, d.kind) == ("call", "call", "step")
    assert all(n.status == "ok" for n in trace.nodes)
    assert all(n.attempts == 1 for n in (a, b, c)) and d.attempts == 0
    assert a.backend == "scripted" and a.model == "scripted" and d.backend is None
    assert a.usage is not None and a.usage.completion_tokens == 1
    assert b.usage is not None and b.usage.completion_tokens == 2
    assert a.meta == {"role": "root"}
    # Times are consistent: b and c start after a ends, d after both.
    assert a.end_s <= b.start_s and a.end_s <= c.start_s
    assert max(b.end_s, c.end_s) <= d.start_s <= d.end_s <= trace.duration_s
    assert b.duration_s >= 0.15 - 0.02
    # The critical path is a then the longer of b and c.
    expected = a.duration_s + max(b.duration_s, c.duration_s)
    assert trace.critical_path_s() == pytest.approx(expected)
    assert trace.critical_path_s("c") == pytest.approx(a.duration_s + c.duration_s)
    assert trace.attempts == 3 and answer.attempts == 3
    # The trace is data: it survives a JSON round trip.
    assert type(trace).model_validate_json(trace.model_dump_json()) == trace


@pytest.mark.anyio
async def test_critical_path_runs_through_embedded_calls() -> None:
    backend = by_prompt({"first": Reply("x", delay_s=0.1), "inner": Reply("y", delay_s=0.2)})

    def build(question: str) -> Graph:
        return Graph(
            [
                Call("first", Request.of("first")),
                Embed("sub", Direct(), "inner", needs=("first",)),
                Step("out", lambda c: c["sub"].text, needs=("sub",)),
            ],
            output="out",
        )

    answer = await run(backend, build)
    trace = answer.trace
    expected = trace.node("first").duration_s + trace.node("sub/answer").duration_s
    assert expected >= 0.3 - 0.04
    assert trace.critical_path_s() == pytest.approx(expected)
    assert trace.critical_path_s("out") == pytest.approx(expected)


@pytest.mark.anyio
async def test_a_part_added_before_the_live_one_is_streamed_in_key_order() -> None:
    backend = by_prompt(
        {"one": Reply("ONE ONE ONE", token_delay_s=0.05), "zero": Reply("zero", delay_s=0.05)}
    )

    def build(question: str) -> Graph:
        def late(ctx: NodeContext) -> Expand:
            zero = Call("zero", Request.of("zero"), then=text_of, part=Part((0,), "[", "]"))
            out = Step("out", lambda c: f"[{c['zero']}]{c['one']}", needs=("zero", "one"))
            return Expand(add=[zero, out])

        return Graph(
            [Call("one", Request.of("one"), then=text_of, part=Part((1,))), Step("adder", late)],
            output="out",
        )

    async with Engine(backend) as engine:
        events = [e async for e in engine.stream(GraphStrategy(build), "q")]
    answer = events[-1].answer  # type: ignore[attr-defined]
    assert answer.text == "[zero]ONE ONE ONE"
    assert answer_text(events) == answer.text


@pytest.mark.anyio
@pytest.mark.parametrize("seed", range(6))
async def test_streamed_answer_matches_for_random_parts(seed: int) -> None:
    # Parts with random keys, prefixes and suffixes are added at random times, stream at
    # random paces, and some fail or are cancelled: the reader's text must still add up.
    rng = random.Random(seed)
    count = 7
    keys = rng.sample(range(100), count)
    specs = {
        f"p{i}": {
            "key": (keys[i],),
            "prefix": rng.choice(["", "\n- ", f"<{i}>"]),
            "suffix": rng.choice(["", ".", f"</{i}>"]),
            "text": " ".join(rng.choice(["a", "bb", "ccc"]) for _ in range(rng.randint(1, 6))),
            "pace": rng.choice([0.0, 0.005, 0.02]),
            "after": rng.choice([0.0, 0.01, 0.05, 0.1]),
            "fate": rng.choice(["ok", "ok", "ok", "fail", "cancel"]),
        }
        for i in range(count)
    }

    def reply(request: Request) -> Reply | BaseException:
        spec = specs[request.messages[-1].content]
        if spec["fate"] == "fail":
            return error_from_status(400, "refused")
        delay = 30 if spec["fate"] == "cancel" else 0.0
        return Reply(spec["text"], token_delay_s=spec["pace"], delay_s=delay)

    def adder(pid: str) -> Any:
        spec = specs[pid]

        async def fn(ctx: NodeContext) -> Expand:
            await anyio.sleep(spec["after"])
            part = Part(spec["key"], spec["prefix"], spec["suffix"])
            return Expand(add=[Call(pid, Request.of(pid), then=text_of, part=part)])

        return fn

    doomed = [pid for pid, spec in specs.items() if spec["fate"] == "cancel"]

    async def reaper(ctx: NodeContext) -> Expand:
        await anyio.sleep(0.1)  # every part has been added (it needs the adders)
        return Expand(cancel=doomed)

    def assemble(ctx: NodeContext) -> str:
        ordered = sorted(specs, key=lambda pid: specs[pid]["key"])
        return "".join(
            specs[p]["prefix"] + ctx.inputs[p].value + specs[p]["suffix"]
            for p in ordered
            if ctx.inputs[p].ok
        )

    def build(question: str) -> Graph:
        adders = [Step(f"add_{pid}", adder(pid)) for pid in specs]
        late = Step(
            "assemble_later",
            lambda c: Expand(add=[Step("out", assemble, needs=tuple(specs), settle=True)]),
            needs=tuple(f"add_{pid}" for pid in specs),
        )
        reap = Step("reaper", reaper, needs=tuple(a.id for a in adders))
        return Graph([*adders, reap, late], output="out")

    async with Engine(ScriptedBackend(reply)) as engine:
        with anyio.fail_after(10):
            events = [e async for e in engine.stream(GraphStrategy(build), "q")]
    answer = events[-1].answer  # type: ignore[attr-defined]
    assert answer.ok, answer.error
    assert answer_text(events) == answer.text
