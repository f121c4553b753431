"""Typed events a run emits while it executes.

Every event carries the ``run_id`` of its run, so one consumer can follow a whole batch.
``TextDelta`` and ``StreamReset`` are per node; ``AnswerDelta`` and ``AnswerReset`` are
the answer in reading order (what a user should print). Joining every ``AnswerDelta``
text, minus what ``AnswerReset`` withdrew, gives exactly ``answer.text``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import Answer, ErrorInfo, TokenLogprob, Usage

__all__ = [
    "AnswerDelta",
    "AnswerReset",
    "Event",
    "NodeFailed",
    "NodeFinished",
    "NodeStarted",
    "Retrying",
    "RunFinished",
    "RunStarted",
    "StreamReset",
    "TextDelta",
]


@dataclass(frozen=True, slots=True)
class Event:
    run_id: str


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    question: str
    strategy: str


@dataclass(frozen=True, slots=True)
class NodeStarted(Event):
    node: str
    kind: str


@dataclass(frozen=True, slots=True)
class TextDelta(Event):
    node: str
    text: str
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None
    """The log-probabilities of the tokens of ``text``, where the call asked for them."""


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """The node's stream broke and will be retried: drop the text it streamed so far."""

    node: str


@dataclass(frozen=True, slots=True)
class Retrying(Event):
    node: str
    attempt: int
    wait_s: float
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class NodeFinished(Event):
    node: str
    kind: str
    duration_s: float
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class NodeFailed(Event):
    node: str
    kind: str
    error: ErrorInfo
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class AnswerDelta(Event):
    text: str


@dataclass(frozen=True, slots=True)
class AnswerReset(Event):
    """Withdraw the last ``chars`` characters of answer text (a retried stream)."""

    chars: int


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    answer: Answer
