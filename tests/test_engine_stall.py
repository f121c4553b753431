"""A growing graph that stops growing reports why: the failure, not the stall."""

from __future__ import annotations

import pytest

import sotflow
from sotflow.graph import Call, Expand, Graph, NodeContext, Outcome, Step
from sotflow.strategies.base import BuildContext
from sotflow.types import Request


@pytest.mark.anyio
async def test_a_failed_call_that_would_grow_the_graph_is_the_runs_error() -> None:
    backend = sotflow.ScriptedBackend([sotflow.AuthenticationError("bad key", status_code=401)])
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(sotflow.AuthenticationError, match="bad key"):
            await engine.run(sotflow.SkeletonOfThought(), "Q?")


class _Handled:
    """A failure taken in by a settle node, then a step that forgets the output."""

    name = "handled"

    def build(self, question: str, ctx: BuildContext) -> Graph:
        def fan_in(ctx: NodeContext) -> Expand:
            outcome: Outcome = ctx["call"]
            assert outcome.status == "failed"
            return Expand(value=None, add=[Step("not-the-output", lambda c: 1)])

        return Graph(
            (Call("call", Request.of("x")), Step("fan-in", fan_in, needs=("call",), settle=True)),
            output="answer",
        )


@pytest.mark.anyio
async def test_a_failure_a_settle_node_handled_does_not_hide_a_graph_bug() -> None:
    backend = sotflow.ScriptedBackend([sotflow.BadRequestError("nope", status_code=400)])
    async with sotflow.Engine(backend) as engine:
        with pytest.raises(sotflow.GraphError, match="without ever adding its output"):
            await engine.run(_Handled(), "Q?")
