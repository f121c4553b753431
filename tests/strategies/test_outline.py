"""The skeleton parser against the ways real models write outlines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sotflow.openai_wire import cut_prefill_echo
from sotflow.strategies.outline import parse_outline
from sotflow.strategies.skeleton import SkeletonOfThought


def titles(text: str, **kw: object) -> list[str]:
    return [p.title for p in parse_outline(text, **kw).points]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "1. Plan the day\n2. Cut distractions\n3. Rest well",
            ["Plan the day", "Cut distractions", "Rest well"],
        ),
        ("1) Plan the day\n2) Cut distractions", ["Plan the day", "Cut distractions"]),
        ("(1) Plan the day\n(2) Cut distractions", ["Plan the day", "Cut distractions"]),
        ("**1.** Plan the day\n**2.** Cut distractions", ["Plan the day", "Cut distractions"]),
        ("1. **Plan the day**\n2. **Cut distractions**", ["Plan the day", "Cut distractions"]),
        ("### 1. Plan the day\n### 2. Cut distractions", ["Plan the day", "Cut distractions"]),
        ("Step 1: Plan the day\nStep 2: Cut distractions", ["Plan the day", "Cut distractions"]),
        ("- 1. Plan the day\n- 2. Cut distractions", ["Plan the day", "Cut distractions"]),
        (
            "1. Plan the day\n\n2. Cut distractions\n\n\n3. Rest",
            ["Plan the day", "Cut distractions", "Rest"],
        ),
        (
            "Sure! Here is an outline:\n1. Plan the day\n2. Cut distractions\nHope this helps!",
            ["Plan the day", "Cut distractions"],
        ),
        ("1. Plan the day.\n2. Cut distractions;", ["Plan the day", "Cut distractions"]),
        ('1. "Plan the day"\n2. `Cut distractions`', ["Plan the day", "Cut distractions"]),
        (
            "1. Prioritize: list tasks every morning by value\n2. Batch email: twice a day",
            ["Prioritize", "Batch email"],
        ),
        (
            "1. Upgrade to version 3.8 first\n2. Test on 2.7 too",
            ["Upgrade to version 3.8 first", "Test on 2.7 too"],
        ),
        ("1. Main\n   1. sub a\n   2. sub b\n2. Other\n   - detail", ["Main", "Other"]),
        (
            "1. Syntax: Python is verbose. 2. Types: dynamic. 3. Speed: fast",
            ["Syntax", "Types", "Speed"],
        ),
        ("1. Use Python 3. It is faster\n2. Profile", ["Use Python 3. It is faster", "Profile"]),
        (
            "- Plan the day\n- Cut distractions\n* Rest",
            ["Plan the day", "Cut distractions", "Rest"],
        ),
    ],
)
def test_accepts_real_world_list_shapes(text: str, expected: list[str]) -> None:
    assert titles(text) == expected


def test_first_occurrence_of_a_number_wins_and_is_recorded() -> None:
    outline = parse_outline("1. Alpha\n2. Beta\n2. Beta again\n3. Gamma")
    assert [p.title for p in outline.points] == ["Alpha", "Beta", "Gamma"]
    assert any("second point numbered 2" in w for w in outline.warnings)


def test_repeated_titles_are_dropped_and_later_points_renumbered() -> None:
    outline = parse_outline(
        "1. Safety\n2. Price\n3. safety.\n4. Reputation (needs 2)", dependencies=True
    )
    assert [(p.index, p.title, p.needs) for p in outline.points] == [
        (1, "Safety", ()),
        (2, "Price", ()),
        (3, "Reputation", (2,)),
    ]
    assert any("repeats 'Safety'" in w for w in outline.warnings)


def test_a_list_of_ones_is_a_single_point() -> None:
    # Markdown renders "1. 1. 1." as 1, 2, 3, but as text it is one numbered point.
    assert titles("1. Alpha\n1. Beta\n1. Gamma") == ["Alpha"]


def test_gaps_are_renumbered_in_order_of_appearance() -> None:
    outline = parse_outline("1. Alpha\n2. Beta\n5. Gamma (needs 2)", dependencies=True)
    assert [(p.index, p.title, p.needs) for p in outline.points] == [
        (1, "Alpha", ()),
        (2, "Beta", ()),
        (3, "Gamma", (2,)),
    ]


def test_too_many_points_are_capped_with_a_warning() -> None:
    text = "\n".join(f"{i}. Point number {i}" for i in range(1, 16))
    outline = parse_outline(text, max_points=10)
    assert len(outline.points) == 10
    assert outline.points[-1].title == "Point number 10"
    assert any("15 points" in w for w in outline.warnings)


@pytest.mark.parametrize(
    "text", ["", "   \n\n", "I cannot outline this question.", "2023 was a good year"]
)
def test_no_points(text: str) -> None:
    assert parse_outline(text).points == ()


def test_long_titles_are_cut_at_a_word() -> None:
    long = " ".join(["word"] * 60)
    (point,) = parse_outline(f"1. {long}").points
    assert len(point.title) <= 120 and point.title.endswith("word")


def test_dependency_marks_are_parsed_and_removed_from_titles() -> None:
    text = (
        "1. Current costs\n2. New system costs\n3. Compare the totals (needs 1, 2)\n"
        "4. Recommendation [depends on 3]\n5. Risks (needs: 1 and 2)"
    )
    outline = parse_outline(text, dependencies=True)
    assert [(p.title, p.needs) for p in outline.points] == [
        ("Current costs", ()),
        ("New system costs", ()),
        ("Compare the totals", (1, 2)),
        ("Recommendation", (3,)),
        ("Risks", (1, 2)),
    ]
    assert outline.warnings == ()


def test_dependency_marks_are_ignored_without_dependencies() -> None:
    outline = parse_outline("1. A\n2. B (needs 1)")
    assert [(p.title, p.needs) for p in outline.points] == [("A", ()), ("B", ())]


def test_unknown_self_and_cyclic_references_are_dropped_with_warnings() -> None:
    text = "1. A (needs 9)\n2. B (needs 2)\n3. C (needs 4)\n4. D (needs 3)"
    outline = parse_outline(text, dependencies=True)
    needs = {p.index: p.needs for p in outline.points}
    assert needs[1] == () and needs[2] == ()
    assert (needs[3], needs[4]) in {((4,), ()), ((), (3,))}  # exactly one edge of the cycle left
    joined = " ".join(outline.warnings)
    assert "does not exist" in joined and "itself" in joined and "cycle" in joined


def test_render_is_the_normalised_skeleton() -> None:
    outline = parse_outline("Sure:\n1) **Alpha**\n2) Beta.")
    assert outline.render() == "1. Alpha\n2. Beta"


SMOLLM2 = Path(__file__).parents[1] / "data" / "smollm2_skeletons.jsonl"


def test_outputs_of_the_real_small_model_parse_into_several_clean_points() -> None:
    rows = [json.loads(line) for line in SMOLLM2.read_text().splitlines()]
    assert len(rows) >= 10
    for row in rows:
        outline = parse_outline(row["prefill"] + row["output"], max_points=10)
        assert len(outline.points) >= 2, row
        for point in outline.points:
            assert point.title and "\n" not in point.title
            assert not (point.title[0].isdigit() and point.title[1:2] in {".", ")"})
            assert len(point.title) <= 120


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A number alone on its line, the title on the next (SmolLM2 at temperature 0).
        ("1.\nRelaxation\n2.\nExercise\n3.\nSleep", ["Relaxation", "Exercise", "Sleep"]),
        ("1. \nRelaxation\n\n2. \nExercise", ["Relaxation", "Exercise"]),
        # Doubled numbering, also in brackets; a line of nothing but numbers is no point.
        ("1. 1. Relaxation\n2. 2. Exercise", ["Relaxation", "Exercise"]),
        ("1. [1] Streams;\n2. [2] Functions;", ["Streams", "Functions"]),
        ("1. 1. 1. 1. 1. 1", []),
        # Bullets, "Point 1:", bold titles, trailing colons.
        ("* Relaxation\n* Exercise", ["Relaxation", "Exercise"]),
        ("Point 1: Relaxation\nPoint 2: Exercise", ["Relaxation", "Exercise"]),
        ("**Point 1:** Relaxation\n**Point 2:** Exercise", ["Relaxation", "Exercise"]),
        ("1. **Relaxation**: breathe\n2. **Exercise**:", ["Relaxation", "Exercise"]),
        ("1. Relaxation:\n2. Exercise:", ["Relaxation", "Exercise"]),
        # A stray preamble fused to the forced "1." (no prefill: the model wrote its own).
        ("1.Sure! Here is the outline:\n1. Relaxation\n2. Exercise", ["Relaxation", "Exercise"]),
        (
            "1.Python vs. JavaScript: 1. Syntax, 2. Speed 3. Tooling",
            ["Syntax", "Speed", "Tooling"],
        ),
    ],
)
def test_shapes_real_small_models_write(text: str, expected: list[str]) -> None:
    assert titles(text) == expected


def test_repeats_are_dropped_before_the_cap_so_distinct_points_are_kept() -> None:
    lines = [f"{i}. {t}" for i, t in enumerate("ABCDEFAGHIJ", start=1)]
    assert titles("\n".join(lines), max_points=10) == list("ABCDEFGHIJ")


REAL = Path(__file__).parents[1] / "data" / "real_skeletons.jsonl"
ROWS = [json.loads(line) for line in REAL.read_text().splitlines() if line.strip()]


def _pipeline_text(row: dict[str, object]) -> str:
    """What SoT's skeleton call returns for this reply: the reply itself where the
    backend continued the prefill, otherwise the reply with its echo of ``1.`` cut, as
    the OpenAI backend cuts it."""
    reply = str(row["reply"])
    return reply if row["prefilled"] else str(cut_prefill_echo(reply, str(row["prefill"])))


def test_the_collected_skeletons_cover_both_runtimes_and_temperatures() -> None:
    labelled = [r for r in ROWS if r["points"] is not None]
    assert len(labelled) >= 40
    assert {r["source"] for r in labelled} >= {"torch", "llama.cpp", "llama-cpp-python-server"}
    assert {r["temperature"] for r in labelled} >= {0.0, 0.8}


def test_at_least_95_percent_of_real_skeletons_parse_to_the_labelled_count() -> None:
    strategy = SkeletonOfThought()
    wrong = []
    labelled = [r for r in ROWS if r["points"] is not None]
    for row in labelled:
        _, outline = strategy.parse(_pipeline_text(row))
        if len(outline.points) != row["points"]:
            wrong.append((row["source"], row["temperature"], row["question"][:40], outline))
        for point in outline.points:
            assert point.title and "\n" not in point.title and len(point.title) <= 120
            assert not re.match(r"\d+[.)]", point.title), point
    assert len(wrong) <= 0.05 * len(labelled), wrong


def test_a_last_line_cut_off_while_repeating_an_earlier_point_is_dropped() -> None:
    text = "1. Sleep well\n2. Eat well\n3. Sleep we"
    assert titles(text) == ["Sleep well", "Eat well"]
    # A cut-off line that starts a new point is kept, and so is a prefix before the end.
    assert titles("1. Sleep well\n2. Eat well\n3. Exerc") == ["Sleep well", "Eat well", "Exerc"]
    assert titles("1. Sleep\n2. Sleep well\n3. Eat well") == ["Sleep", "Sleep well", "Eat well"]
