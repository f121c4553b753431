"""Settings every strategy shares are checked when it is made: backends and prompt names."""

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


PROMPTED: dict[str, tuple[Callable[..., object], str]] = {
    "SkeletonOfThought": (sotflow.SkeletonOfThought, "point.user"),
    "Refine": (sotflow.Refine, "critique.user"),
    "SelfConsistency": (lambda **kw: sotflow.SelfConsistency(3, **kw), "self_consistency.user"),
    "TreeSearch": (sotflow.TreeSearch, "tree_propose.user"),
    "Chain": (lambda **kw: sotflow.Chain("Q: $question", "More: $previous", **kw), "chain_next"),
    "Judge": (sotflow.Judge, "judge.user"),
    "LLMRouter": (
        lambda **kw: sotflow.LLMRouter(sotflow.ScriptedBackend(["A"]), **kw),
        "router.user",
    ),
}


@pytest.mark.parametrize("owner", sorted(PROMPTED))
def test_a_misspelt_prompt_override_is_refused_naming_the_real_ones(owner: str) -> None:
    make, real = PROMPTED[owner]
    with pytest.raises(sotflow.ConfigurationError, match=f"no prompt named '{real}.txt'") as caught:
        make(prompts={f"{real}.txt": "custom $question"})
    assert real in str(caught.value) and owner in str(caught.value)
    made = make(prompts={real: "custom $question"})
    assert made.prompts.text(real) == "custom $question"  # type: ignore[attr-defined]


def test_a_tree_searchs_judge_prompts_go_to_the_judge() -> None:
    with pytest.raises(sotflow.ConfigurationError, match=r"Judge\(prompts=\.\.\.\)"):
        sotflow.TreeSearch(prompts={"tree_judge.user": "Rate $text"})
    judge = sotflow.Judge(template="tree_judge", prompts={"tree_judge.user": "Rate $text"})
    assert sotflow.TreeSearch(scorer=judge).scorer is judge


@pytest.mark.parametrize(
    "make",
    [
        lambda: sotflow.Direct(max_token=5),
        lambda: sotflow.SelfConsistency(8, early_stopping=False),
        lambda: sotflow.BestOfN(4, len, treshold=7),
        lambda: sotflow.Refine(rounds=3),
        lambda: sotflow.TreeSearch(beam=3),
        lambda: sotflow.Chain("Q: $question", step_max_tokens=5),
        lambda: sotflow.RejectionSampling(len, 3, max_sample=4),
    ],
)
def test_a_misspelt_setting_is_named_with_what_is_taken(make: Callable[[], object]) -> None:
    # Extra keywords go on as sampling parameters, so a typo used to surface as
    # "SamplingParams.__init__() got an unexpected keyword argument".
    with pytest.raises(sotflow.ConfigurationError, match=r"has no setting '.+'; besides") as caught:
        make()
    assert "SamplingParams" not in str(caught.value) and "top_p" in str(caught.value)


def test_sampling_parameters_still_pass_through() -> None:
    assert sotflow.Direct(top_p=0.5, seed=3).params.seed == 3
    assert sotflow.SelfConsistency(3, top_k=20).params.top_k == 20  # type: ignore[attr-defined]
