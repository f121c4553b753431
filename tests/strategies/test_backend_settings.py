"""Every backend setting of a strategy or router refuses what is not a backend, at once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import sotflow

MAKERS: dict[str, Callable[[object], object]] = {
    "expand_backend": lambda b: sotflow.SkeletonOfThought(expand_backend=b),  # type: ignore[arg-type]
    "BestOfN backend": lambda b: sotflow.BestOfN(2, len, backend=b),  # type: ignore[arg-type]
    "SelfConsistency backend": lambda b: sotflow.SelfConsistency(3, backend=b),  # type: ignore[arg-type]
    "critic_backend": lambda b: sotflow.Refine(critic_backend=b),  # type: ignore[arg-type]
    "TreeSearch backend": lambda b: sotflow.TreeSearch(2, 2, backend=b),  # type: ignore[arg-type]
    "Chain backend": lambda b: sotflow.Chain("Q: $question", backend=b),  # type: ignore[arg-type]
    "RejectionSampling backend": lambda b: sotflow.RejectionSampling(len, 3, backend=b),  # type: ignore[arg-type]
    "Judge backend": lambda b: sotflow.Judge(b),  # type: ignore[arg-type]
    "LLMRouter backend": lambda b: sotflow.LLMRouter(b),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("setting", sorted(MAKERS))
def test_a_model_name_where_a_backend_belongs_is_refused_with_a_hint(setting: str) -> None:
    with pytest.raises(sotflow.ConfigurationError, match="must be a backend") as caught:
        MAKERS[setting]("gpt-4o-mini")
    assert "OpenAIBackend(model=...)" in str(caught.value)
    MAKERS[setting](sotflow.ScriptedBackend(["ok"]))  # a real backend is taken


def test_the_llm_router_needs_a_backend() -> None:
    with pytest.raises(sotflow.ConfigurationError, match="LLMRouter's backend must be a backend"):
        sotflow.LLMRouter(None)  # type: ignore[arg-type]
