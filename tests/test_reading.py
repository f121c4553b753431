"""AppendOnlyText: withdrawable text released to a reader who cannot take it back."""

from __future__ import annotations

import random

from sotflow.events import AnswerDelta, AnswerReset
from sotflow.reading import AppendOnlyText


def test_text_goes_out_as_it_comes() -> None:
    text = AppendOnlyText()
    assert [text.add(p) for p in ("Hel", "lo", " there")] == ["Hel", "lo", " there"]
    assert text.finish("Hello there") == ("", True)


def test_a_retry_that_writes_the_same_text_streams_on_where_it_caught_up() -> None:
    text = AppendOnlyText()
    assert text.add("one two ") == "one two "
    text.withdraw(len("one two "))  # the stream broke; its retry starts over
    assert text.add("one ") == ""
    assert text.add("two three") == "three"
    assert text.finish("one two three") == ("", True)


def test_a_retry_that_writes_other_text_releases_nothing_more() -> None:
    text = AppendOnlyText()
    text.add("alpha beta")
    text.withdraw(10)
    assert text.add("alpha gamma delta") == ""
    assert text.finish("alpha gamma delta") == ("", False)


def test_withdrawing_past_a_difference_heals_it() -> None:
    text = AppendOnlyText()
    text.add("abc")
    text.withdraw(3)
    text.add("abX")  # differs at 2
    text.withdraw(1)
    assert text.add("cd") == "d"


def test_stop_sequences_cut_the_text_and_hold_back_a_possible_start() -> None:
    text = AppendOnlyText(("STOP",))
    assert text.add("go on ST") == "go on"  # " ST" could be the start of STOP
    assert text.add("OP and more") == " "
    assert text.stopped
    assert text.add(" and more") == ""
    assert text.finish("go on STOP and more and more") == ("", True)
    assert text.cut("go on STOP") == ("go on ", True)


def test_a_withdrawn_stop_sequence_no_longer_stops() -> None:
    text = AppendOnlyText(("END",))
    text.add("abc EN")
    text.add("D")
    text.withdraw(4)  # " END" gone
    assert not text.stopped
    assert text.add(" more text") == "more te"  # its space went out before
    assert text.finish("abc more text") == ("xt", True)


def test_feed_takes_answer_events() -> None:
    text = AppendOnlyText()
    assert text.feed(AnswerDelta("r", "1. a\n")) == "1. a\n"
    assert text.feed(AnswerReset("r", 5)) == ""
    assert text.feed(AnswerDelta("r", "1. a\n2. b")) == "2. b"


def test_what_goes_out_is_always_a_prefix_of_the_final_text() -> None:
    # Random deltas and withdrawals whose retries rewrite the same text.
    rng = random.Random(7)
    final = "".join(rng.choice("ab cd\nSTOP") for _ in range(400))
    for _ in range(50):
        text = AppendOnlyText(("STOP",))
        sent, position = "", 0
        while position < len(final):
            step = rng.randint(1, 9)
            sent += text.add(final[position : position + step])
            position += step
            if rng.random() < 0.2:
                back = rng.randint(0, min(position, 12))  # bounded: the text must get ahead
                text.withdraw(back)
                position -= back
        rest, whole = text.finish(final)
        assert whole
        assert sent + rest == text.cut(final)[0]
