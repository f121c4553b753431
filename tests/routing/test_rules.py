"""RuleRouter: decisions on hand-picked questions, input handling, and its quality gate.

The questions here are written for these tests; none comes from the data files.
"""

from __future__ import annotations

import pytest

from sotflow.errors import ConfigurationError
from sotflow.routing import (
    DIRECT,
    SELF_CONSISTENCY,
    SOT,
    SOT_DAG,
    KeywordBaseline,
    Router,
    RuleRouter,
    decide_many,
    decide_sync,
)
from sotflow.routing.evaluate import Labelled, score_decisions
from sotflow.routing.rules import RULES, normalise, score

ROUTER = RuleRouter()

SOT_CASES = {
    "advice": [
        "How can I get my toddler to eat more vegetables?",
        "What are some ways to stay warm in a drafty old house?",
        "Any tips for a first solo camping trip?",
        "How do I become more confident when giving presentations?",
        "What should I consider before adopting a rescue dog?",
        "how can i save more money each month",
        "What can I do to feel less lonely after retiring?",
        "As a new teacher, how can I manage a noisy classroom?",
    ],
    "comparison": [
        "What are the differences between a credit card and a debit card?",
        "Compare hiking boots and trail runners for long-distance walking.",
        "What are the pros and cons of remote schooling?",
        "Laptop vs desktop for a student: what are the trade-offs?",
        "How does Spanish differ from Portuguese?",
        "What are the advantages and disadvantages of solar panels on a north-facing roof?",
    ],
    "explanation": [
        "What are the main causes of the French Revolution?",
        "Why do people keep New Year's resolutions so rarely?",
        "How does poverty affect children's education?",
        "What are the benefits of learning a musical instrument as an adult?",
        "What are the key principles of minimalist design?",
        "What makes a good mentor?",
        "What led to the decline of the Ottoman Empire?",
        "What challenges do small farmers face today?",
        "Can you explain the basics of machine learning?",
    ],
    "code-tips": [
        "What are the best practices for naming variables?",
        "What are common mistakes people make with async code?",
        "What are the benefits of code reviews?",
    ],
    "counterfactual": [
        "What if the dinosaurs had never gone extinct?",
        "What would happen if everyone stopped using plastic tomorrow?",
        "How would history be different if the telephone had never been invented?",
        "Imagine a world without money. What would change?",
    ],
    "role-framing-a-list": [
        "As a seasoned chef, what tips would you give a home cook who burns everything?",
        "Pretend you are a travel agent. What places would you recommend for a honeymoon?",
    ],
    "multi-part": [
        "What is a credit score, how is it calculated, and why does it matter?",
    ],
}

SOT_DAG_CASES = {
    "plan": [
        "Create a six-month plan to learn Spanish where each month builds on the last.",
        "Plan a two-week road trip through Scotland with a day-by-day itinerary.",
        "Make a study schedule for my final exams in May.",
        "Design a training programme for a new sales team, starting with product basics.",
        "Help me plan a small conference, from choosing a date to sending the follow-up survey.",
    ],
    "compare-then-decide": [
        "Compare Toyota and Honda hybrids and then recommend one for a family of five.",
        "Weigh the pros and cons of a gap year, then help me decide if I should take one.",
        "Compare three note-taking apps and tell me which one suits a law student.",
    ],
    "analyse-then-build": [
        "Find the weak points in my morning routine, then propose a new one based on them.",
        "First explain what a stock is, then use that to explain how an index fund works.",
    ],
}

DIRECT_CASES = {
    "math": [
        "What is 48 divided by 6 plus 7?",
        "Solve for y: 4y - 7 = 21.",
        "If a cake costs $24 and I get 25% off, how much do I pay?",
        "What is the integral of 1/x?",
        "A car travels 300 km in 4 hours. What is its average speed?",
        "In how many ways can you arrange the letters of the word CAT?",
        "What's the probability of drawing an ace from a deck of cards?",
    ],
    "fermi": [
        "How many dentists are there in London?",
        "Estimate the number of windows in New York City.",
        "How much does the Eiffel Tower weigh? Explain your reasoning.",
    ],
    "code": [
        "Write a Python function that merges two sorted lists.",
        "Implement a stack in JavaScript.",
        "Write a SQL query to count orders per customer.",
        "Why do I get KeyError: 'name' when I read this dict?",
        "How do I split a string by commas in Java?",
        "Create a bash script that backs up my home folder every night.",
        "What does `x = [i * 2 for i in range(5)]` produce?",
    ],
    "writing": [
        "Write a poem about a lonely robot.",
        "Draft an email to my team announcing the office move.",
        "Write a short story about a dragon who is afraid of fire.",
        "Compose a birthday message for my best friend.",
        "Can you help me write a cover letter for a barista job?",
        "Write a toast for my parents' 40th anniversary.",
    ],
    "rewrite": [
        'Rewrite this more politely: "Give me the files now."',
        'Translate "good morning, how are you" into German.',
        'Summarize this: "The meeting ran long, nothing was decided, and we meet again Friday."',
        "Fix the spelling in this sentence: 'I recieved the pakage yesterday.'",
    ],
    "role-play": [
        "Pretend you are a wizard and welcome me to your tower.",
        "Act as a barista and take my order.",
        "You are a ship's captain in a storm. Describe what you see.",
    ],
    "trivia": [
        "Who invented the telephone?",
        "When did World War II end?",
        "What is the capital of Canada?",
        "Which planet is closest to the sun?",
        "How tall is the Eiffel Tower?",
    ],
    "yes-no": [
        "Is coffee bad for you?",
        "Can cats eat chocolate?",
        "Should I tip in Japan?",
        "Does the moon have gravity?",
    ],
    "definition": [
        "What is inflation?",
        "Define photosynthesis.",
        "What does ASAP stand for?",
        "What's a hashtag?",
    ],
    "procedure": [
        "How do I install Python on a Mac?",
        "Give me step-by-step instructions to change a bike tire.",
        "What are the steps to reset an iPhone?",
        "How do I make banana bread?",
        "Walk me through creating a Gmail account.",
    ],
    "mechanism": [
        "How does a microwave oven heat food?",
        "How do solar panels work?",
        "What happens when you swallow chewing gum?",
        "Explain how a rainbow forms.",
    ],
    "opinion": [
        "Is it better to read books or watch films?",
        "Do you think space tourism is a good idea?",
        "Should schools ban mobile phones, or teach students to use them well?",
    ],
    "short": [
        "Hi there!",
        "Thank you so much!",
        "What's the quickest way to defrost chicken?",
        "Name four types of clouds.",
        "What are the three primary colours of light?",
    ],
}


def _cases(table: dict[str, list[str]], expected: str) -> list[object]:
    return [
        pytest.param(q, expected, id=f"{kind}-{i}")
        for kind, questions in table.items()
        for i, q in enumerate(questions)
    ]


@pytest.mark.parametrize(
    ("question", "expected"),
    _cases(SOT_CASES, SOT) + _cases(SOT_DAG_CASES, SOT_DAG) + _cases(DIRECT_CASES, DIRECT),
)
def test_rule_router_routes_hand_picked_questions(question: str, expected: str) -> None:
    decision = ROUTER.classify(question)
    assert decision.strategy == expected, decision.reason


@pytest.mark.parametrize(
    "question",
    [
        # "list"/"ways"/"steps" in questions that are not lists
        "Which way is north if the sun sets on my left?",
        "My shopping list app crashed. How do I restore it from a backup?",
        "What are the steps to jump-start a motorbike?",
        # numbers in advice clothing
        "What's the smartest way to split a $90 taxi fare between 3 friends if one rode half?",
        # the role, not a list
        "As a pirate, what would you say to a sailor who wants to join your crew?",
    ],
)
def test_list_words_do_not_make_a_list_question(question: str) -> None:
    decision = ROUTER.classify(question)
    assert decision.strategy == DIRECT, decision.reason


@pytest.mark.xfail(strict=True, reason="known limits of the rules, kept visible")
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        # A bare "how can" (+1) only ties a language name (+1), and ties go to direct.
        ("How can I make my Docker images smaller?", SOT),
        # "affect" the word trips the "affects" cue.
        ("What is the difference between 'affect' and 'effect'?", DIRECT),
        # No rule knows "describe a scenario"; the default is direct.
        ("Describe a scenario where drones could improve farming.", SOT),
    ],
)
def test_known_limits(question: str, expected: str) -> None:
    assert ROUTER.classify(question).strategy == expected


def test_reason_names_the_rules_that_decided() -> None:
    decision = ROUTER.classify("What are the pros and cons of electric scooters?")
    assert decision.strategy == SOT
    assert decision.router == "rules"
    assert "list-noun" in decision.reason and "compare" in decision.reason
    code = ROUTER.classify("Write a Python function that reverses a string.")
    assert code.reason.startswith("direct: code-task")


def test_confidence_grows_with_the_margin() -> None:
    weak = ROUTER.classify("Where is the nearest beach?")
    strong = ROUTER.classify("What are the main benefits and drawbacks of renting a car?")
    nothing = ROUTER.classify("The weather was lovely on our walk by the river yesterday.")
    assert nothing.confidence == 0.5 and nothing.strategy == DIRECT
    assert "no rule fired" in nothing.reason
    assert 0.5 < weak.confidence < strong.confidence <= 1.0


def test_math_goes_to_self_consistency_only_when_asked() -> None:
    question = "If 3 pencils cost $1.20, how much do 10 pencils cost?"
    assert ROUTER.classify(question).strategy == DIRECT
    voting = RuleRouter(math_strategy=SELF_CONSISTENCY)
    decision = voting.classify(question)
    assert decision.strategy == SELF_CONSISTENCY
    assert "numeric problem" in decision.reason
    # Non-math direct questions and list questions are unaffected.
    assert voting.classify("Write a limerick about rain.").strategy == DIRECT
    assert voting.classify("What are some tips for saving money?").strategy == SOT
    assert voting.classify("Estimate how many cars are in Paris.").strategy == SELF_CONSISTENCY


def test_unknown_math_strategy_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="math_strategy"):
        RuleRouter(math_strategy="best-of-n")


@pytest.mark.parametrize("bad", ["", "   ", "\n\t", None, 42, b"bytes", ["a list"]])
def test_empty_or_non_string_questions_are_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="question"):
        ROUTER.classify(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        KeywordBaseline().classify(bad)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_decide_refuses_empty_input_too() -> None:
    with pytest.raises(ConfigurationError, match="empty"):
        await ROUTER.decide(" ")


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("¿Qué es la fotosíntesis?", DIRECT),  # non-English falls back to direct
        ("What are the benefits of drinking green tea 🍵?", SOT),
        ("Wha t are sum tips 4 better sleep??", SOT),
        ("WHAT ARE THE BEST WAYS TO LEARN TO SWIM", SOT),
        ("Write a poem about “curly quotes” — and dashes.", DIRECT),
        ("?", DIRECT),
        ("🙂", DIRECT),
    ],
)
def test_unusual_text(question: str, expected: str) -> None:
    assert ROUTER.classify(question).strategy == expected


def test_very_long_input_is_decided_by_its_two_ends() -> None:
    filler = "The quarterly report covers sales, staffing and the new office. " * 400
    summarise = f'Summarise this report: "{filler}"'
    assert len(summarise) > 20_000
    decision = ROUTER.classify(summarise)
    assert decision.strategy == DIRECT and "rewrite-given-text" in decision.reason
    ask_at_end = filler + " What are the main risks for the company, based on that report?"
    assert "list-noun" in ROUTER.classify(ask_at_end).reason
    # Pathological input stays well-behaved (no catastrophic backtracking).
    for text in ("1" * 100_000, "how does " + "x " * 50_000 + "work", "a, " * 50_000):
        assert ROUTER.classify(text).strategy == DIRECT


def test_normalise_folds_case_quotes_and_space() -> None:
    assert normalise("  What’s   “THIS”\n—thing?  ") == 'what\'s "this" -thing?'


def test_every_rule_has_a_unique_name_and_a_positive_weight() -> None:
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    assert all(r.weight > 0 for r in RULES)
    assert all(r.label in (SOT, SOT_DAG, DIRECT) for r in RULES)


def test_ties_go_to_direct() -> None:
    verdict = score("How can I learn Python?")  # how-can (+1) against code-language (+1)
    assert verdict.scores[SOT] == verdict.scores[DIRECT] == 1.0
    assert verdict.label == DIRECT
    assert ROUTER.classify("How can I learn Python?").confidence == 0.5


def test_keyword_baseline_is_one_regex() -> None:
    base = KeywordBaseline()
    assert base.classify("What are some ways to relax?").strategy == SOT
    assert base.classify("Write a poem about the sea.").strategy == DIRECT
    # Its known blind spot: list words in non-list questions.
    assert base.classify("What are the steps to install Python?").strategy == SOT


def test_routers_satisfy_the_protocol() -> None:
    assert isinstance(ROUTER, Router)
    assert isinstance(KeywordBaseline(), Router)


@pytest.mark.anyio
async def test_decide_and_decide_many_agree() -> None:
    questions = ["How can I sleep better?", "What is 2 + 2?", "Plan a 3-day trip to Rome."]
    one_by_one = [await ROUTER.decide(q) for q in questions]
    assert await ROUTER.decide_many(questions) == one_by_one
    assert await decide_many(ROUTER, questions) == one_by_one
    assert [d.strategy for d in one_by_one] == [SOT, DIRECT, SOT_DAG]


def test_decide_sync_outside_an_event_loop() -> None:
    assert decide_sync(ROUTER, "What if the sun went out?").strategy == SOT


def _accuracy(router: RuleRouter, rows: list[Labelled]) -> float:
    return score_decisions([router.classify(r.question) for r in rows], rows).accuracy


def test_quality_gate_on_held_out_data(
    test_rows: list[Labelled], vicuna_rows: list[Labelled]
) -> None:
    """Binary SoT accuracy on data the rules were not tuned on (a quality gate)."""
    assert _accuracy(ROUTER, test_rows) >= 0.90
    assert _accuracy(ROUTER, vicuna_rows) >= 0.90


def test_rules_beat_the_keyword_baseline(
    test_rows: list[Labelled], vicuna_rows: list[Labelled]
) -> None:
    base = KeywordBaseline()
    for rows in (test_rows, vicuna_rows):
        ours = score_decisions([ROUTER.classify(r.question) for r in rows], rows)
        theirs = score_decisions([base.classify(r.question) for r in rows], rows)
        assert ours.accuracy > theirs.accuracy
        assert ours.f1 > theirs.f1
