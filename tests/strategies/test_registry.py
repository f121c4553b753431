"""Sampling strategies are available by name (CLI --strategy) and inside "auto"."""

from __future__ import annotations

import pytest

import sotflow
from sotflow.strategies import BestOfN, Refine, SelfConsistency, TreeSearch
from sotflow.strategies.registry import STRATEGY_NAMES, make_strategy


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("self-consistency", SelfConsistency),
        ("best-of-n", BestOfN),
        ("refine", Refine),
        ("tree-search", TreeSearch),
    ],
)
def test_by_name_with_settings_and_sampling_defaults(name: str, kind: type) -> None:
    assert name in STRATEGY_NAMES
    plain = make_strategy(name)
    assert isinstance(plain, kind) and plain.name == name
    tuned = make_strategy(name, max_tokens=64, temperature=0.3)
    assert tuned.params.max_tokens == 64 and tuned.params.temperature == 0.3  # type: ignore[attr-defined]
    if name != "refine":
        # No temperature given: a sampling strategy keeps its own, which is above zero.
        assert plain.params.temperature > 0  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_auto_can_route_to_self_consistency() -> None:
    class Numeric:
        name = "numeric"

        async def decide(self, question: str) -> sotflow.Decision:
            return sotflow.Decision(strategy="self-consistency", router=self.name)

    backend = sotflow.ScriptedBackend(["Answer: 4"], cycle=True)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(make_strategy("auto", router=Numeric()), "What is 2 + 2?")
    assert answer.strategy == "self-consistency" and answer.details["answer"] == "4"
    assert not answer.trace.warnings  # type: ignore[union-attr]
