"""Core data types and the public surface: validation, arithmetic, serialisation."""

from __future__ import annotations

import pytest

import sotflow
from sotflow import (
    Answer,
    Choice,
    Completion,
    ConfigurationError,
    DeadlineExceededError,
    ErrorInfo,
    Message,
    Request,
    SamplingParams,
    SotflowError,
    Usage,
)
from sotflow.types import TokenLogprob


def test_public_api_is_sorted_and_importable() -> None:
    assert sotflow.__all__ == sorted(sotflow.__all__)
    for name in sotflow.__all__:
        assert getattr(sotflow, name) is not None


def test_sampling_params_validate() -> None:
    for bad in ({"n": 0}, {"max_tokens": 0}, {"temperature": -0.1}, {"top_p": 0}, {"top_p": 1.5}):
        with pytest.raises(ConfigurationError):
            SamplingParams(**bad)  # type: ignore[arg-type]
    assert SamplingParams(stop="END").stop == ("END",)  # type: ignore[arg-type]
    assert SamplingParams().replace(n=3).n == 3


def test_request_shorthand_and_validation() -> None:
    request = Request.of("q", system="s", prefill="1.", max_tokens=5)
    assert request.messages == (Message.system("s"), Message.user("q"))
    assert request.prefill == "1." and request.params.max_tokens == 5
    with pytest.raises(ConfigurationError, match="at least one message"):
        Request(())
    listed = Request([Message.user("a")])  # type: ignore[arg-type]
    assert isinstance(listed.messages, tuple)


def test_usage_adds_up() -> None:
    total = Usage.of(3, 4) + Usage.of(1, 2, estimated=True)
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (4, 6, 10)
    assert total.estimated
    assert not (Usage.of(1, 1) + Usage.of(1, 1)).estimated


def test_completion_and_choice_helpers() -> None:
    choice = Choice(0, "hi", "stop", (TokenLogprob("h", -1.0), TokenLogprob("i", -3.0)))
    completion = Completion((choice,), Usage.of(1, 2), "m")
    assert completion.text == "hi" and completion.finish_reason == "stop"
    assert choice.mean_logprob == -2.0 and Choice(0, "x").mean_logprob is None


def test_answer_round_trips_as_json() -> None:
    answer = Answer(
        question="q",
        text="t",
        strategy="direct",
        usage=Usage.of(1, 2),
        error=ErrorInfo.of(DeadlineExceededError("too slow")),
    )
    assert not answer.ok and answer.attempts == 0
    assert Answer.model_validate_json(answer.model_dump_json()) == answer
    assert answer.error == ErrorInfo(type="DeadlineExceededError", message="too slow")
    assert ErrorInfo.of(ValueError()).message == "ValueError"  # never an empty message


def test_error_tree() -> None:
    assert issubclass(ConfigurationError, SotflowError) and issubclass(
        ConfigurationError, ValueError
    )
    assert issubclass(DeadlineExceededError, TimeoutError)
