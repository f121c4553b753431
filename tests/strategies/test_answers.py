"""Final-answer extraction, normalisation and judge-score parsing (shared by strategies)."""

from __future__ import annotations

import re

import pytest

import sotflow
from sotflow.strategies.answers import (
    extract_answer_line,
    extract_last_number,
    make_extractor,
    normalize_answer,
)
from sotflow.strategies.scoring import parse_score


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("1,000", "1000"),
        ("1000.0", "1000"),
        ("$1,000.", "1000"),
        ("+1000", "1000"),
        ("-0.0", "0"),
        ("0.50", "0.5"),
        ("1,234,567.80", "1234567.8"),
        (" **42** ", "42"),
        ("`12`", "12"),
        ("\\boxed{7}", "7"),
        ("(B)", "b"),
        ("Paris.", "paris"),
        ("  The  Eiffel\nTower! ", "the eiffel tower"),
        ('"Yes"', "yes"),
        ("1,2", "1,2"),  # not a thousands separator: stays text
        ("3.14159", "3.14159"),
    ],
)
def test_normalize_answer(raw: str, normal: str) -> None:
    assert normalize_answer(raw) == normal


def test_last_number_skips_numbers_inside_words_and_keeps_signs() -> None:
    text = "3 apples on the 2nd try, x3 faster; total 1,234.5 and then -7."
    assert extract_last_number(text) == "-7"
    assert extract_last_number("from 10-5 we get 5.") == "5"
    assert extract_last_number("no numbers here") is None


def test_answer_line_takes_the_last_marked_line() -> None:
    text = "Answer: 41 (first try)\nwait, recount\n**Final answer:** 1,000.\n"
    assert extract_answer_line(text) == "1,000."
    assert extract_answer_line("Answer:\n") is None
    assert extract_answer_line("The answer: 5 is inline, not a line") is None


def test_auto_prefers_the_answer_line_and_falls_back_to_the_last_number() -> None:
    auto = make_extractor("auto")
    assert auto("so 3 + 4 = 7\nAnswer: seven") == "seven"
    assert auto("so 3 + 4 = 7") == "7"
    assert auto("no idea") is None


def test_regex_and_function_extractors() -> None:
    assert make_extractor(re.compile(r"=\s*(\d+)"))("a = 1, b = 2") == "2"
    assert make_extractor(r"\[\[(.+?)\]\]")("x [[A]] y [[B]]") == "B"
    assert make_extractor(r"\d+")("1 and 22") == "22"
    assert make_extractor(lambda t: t.split()[-1])("the end") == "end"


def test_a_misspelt_extractor_name_is_refused() -> None:
    with pytest.raises(sotflow.ConfigurationError, match="unknown extractor 'last_number'"):
        make_extractor("last_number")
    with pytest.raises(sotflow.ConfigurationError, match="not a valid regex"):
        make_extractor("Answer: (")


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Score: 8", 8.0),
        ("Score: 7.5/10", 7.5),
        ("**Score:** 9 out of 10", 9.0),
        ("Score: 4/5", 8.0),
        ("Score: 3, no wait. Score: 5", 5.0),
        ("I would rate it a 7.", 7.0),
        ("Rating: 6/10, because", 6.0),
        ("8", 8.0),
        ("Score: 0", 0.0),
        ("Score: 12", None),
        ("Score: great", None),
        ("It is a fine answer.", None),
    ],
)
def test_parse_score(reply: str, score: float | None) -> None:
    assert parse_score(reply, 10) == score
