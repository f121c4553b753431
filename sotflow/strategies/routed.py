"""Routed ("auto"): ask a router which strategy fits the question, then run that one.

The chosen strategy runs embedded in the same run (one trace, one budget, one set of
limits); its answer parts stream as this run's answer. The router's ``Decision`` is in
``answer.decision`` and ``answer.strategy`` names the strategy that really answered.

SoT only pays where the server writes its points side by side. Before running a
Skeleton-of-Thought strategy the server's profile is asked for (measured once per
backend); where it runs one call at a time (parallel gain below ``min_parallel_gain``)
the question is answered directly, and the decision's reason says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backends.base import SERIAL_GAIN
from ..errors import ConfigurationError
from ..graph import Embed, Expand, Graph, NodeContext, Part, Result, Step
from ..types import Decision
from .base import BuildContext, Strategy
from .direct import Direct
from .skeleton import SkeletonOfThought, server_profile, why_sot_is_slow

__all__ = ["Routed"]


class Routed:
    """Route each question to SoT, dependency-aware SoT, or a direct answer (or more)."""

    name = "auto"

    def __init__(
        self,
        router: Any = None,
        *,
        strategies: Mapping[str, Strategy] | None = None,
        min_parallel_gain: float = SERIAL_GAIN,
    ) -> None:
        if router is None:
            from ..routing.rules import RuleRouter

            router = RuleRouter()
        if not callable(getattr(router, "decide", None)):
            raise TypeError(f"router must have an async decide(question) method, got {router!r}")
        for name, strategy in (strategies or {}).items():
            if not isinstance(strategy, Strategy):
                raise ConfigurationError(
                    f"strategies[{name!r}] must be a strategy (e.g. SelfConsistency(8)), "
                    f"got {strategy!r}"
                )
        self.router = router
        self.min_parallel_gain = min_parallel_gain
        self.strategies: dict[str, Strategy] = {
            "sot": SkeletonOfThought(),
            "sot-dag": SkeletonOfThought(dependencies=True),
            "direct": Direct(),
            **(strategies or {}),
        }

    def __repr__(self) -> str:
        return f"Routed(router={self.router!r}, strategies={sorted(self.strategies)})"

    def build(self, question: str, ctx: BuildContext) -> Graph:
        node = getattr(self.router, "node", None)
        if callable(node):
            route = node(question, "route")
        else:
            route = Step("route", lambda c: self.router.decide(c.question))
        return Graph((route, Step("dispatch", self._dispatch, needs=("route",))), output="answer")

    async def _dispatch(self, ctx: NodeContext) -> Expand:
        decision: Decision = ctx["route"]
        warnings = []
        strategy = self.strategies.get(decision.strategy)
        if strategy is None:
            warnings.append(
                f"the router chose {decision.strategy!r}, which has no strategy here; "
                "answered directly (pass strategies={...} to Routed to add it)"
            )
            strategy = self.strategies["direct"]
        elif isinstance(strategy, SkeletonOfThought):
            profile = await server_profile(strategy.expand_backend or ctx.backend)
            gain = profile.parallel_gain if profile is not None else None
            needed = max(self.min_parallel_gain, (profile and profile.sot_min_gain) or 0.0)
            if profile is not None and gain is not None and gain < needed:
                why = (
                    f"{why_sot_is_slow(profile, needed)}, so {decision.strategy} would be "
                    "slower; answered directly"
                )
                decision = decision.model_copy(
                    update={"strategy": "direct", "reason": f"{decision.reason}; but {why}"}
                )
                strategy = self.strategies["direct"]
        return Expand(
            value=decision,
            add=[
                Embed("run", strategy, ctx.question, part=Part((0,))),
                Step("answer", _attach_decision, needs=("run", "dispatch")),
            ],
            warnings=warnings,
        )


def _attach_decision(ctx: NodeContext) -> Result:
    value = ctx["run"]
    result = value if isinstance(value, Result) else Result(str(value))
    chosen = ctx.trace("run")
    strategy = result.strategy or (chosen.meta.get("strategy") if chosen else None)
    return Result(
        result.text,
        strategy=strategy,
        points=result.points,
        skeleton=result.skeleton,
        decision=ctx["dispatch"],
        details=result.details,
    )
