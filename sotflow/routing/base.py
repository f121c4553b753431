"""What every question router shares: the protocol, the strategy names, input checks.

A router looks at one question and returns a ``Decision``: which strategy should
answer it, how sure the router is, and why. Routers never call a strategy themselves;
the caller runs whatever ``decision.strategy`` names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Literal, Protocol, runtime_checkable

import anyio

from ..errors import ConfigurationError
from ..types import Decision

__all__ = [
    "DIRECT",
    "LABELS",
    "SELF_CONSISTENCY",
    "SOT",
    "SOT_DAG",
    "Label",
    "Router",
    "SyncRouter",
    "check_question",
    "decide_many",
    "decide_sync",
]

SOT: Final = "sot"
"""A list of points that can each be written independently: plain Skeleton-of-Thought."""
SOT_DAG: Final = "sot-dag"
"""A list whose later points build on earlier ones: dependency-aware Skeleton-of-Thought."""
DIRECT: Final = "direct"
"""Not a list of points: answer in one pass."""
SELF_CONSISTENCY: Final = "self-consistency"
"""Sample several answers and vote; routers choose it for math only when asked to."""

Label = Literal["sot", "sot-dag", "direct"]
LABELS: Final[tuple[Label, ...]] = (SOT, SOT_DAG, DIRECT)
"""The three classes routers are trained and scored on, in a fixed order."""


@runtime_checkable
class Router(Protocol):
    """Chooses a strategy for one question."""

    name: str

    async def decide(self, question: str) -> Decision: ...


class SyncRouter:
    """Base for routers that decide in-process without waiting on anything.

    Subclasses implement ``classify``; ``decide`` and ``decide_many`` call it directly,
    since a few microseconds of CPU work gains nothing from a worker thread.
    """

    name: str = "sync"

    def classify(self, question: str) -> Decision:
        raise NotImplementedError

    async def decide(self, question: str) -> Decision:
        return self.classify(question)

    async def decide_many(self, questions: Sequence[str]) -> list[Decision]:
        return [self.classify(q) for q in questions]


def check_question(question: object) -> str:
    """Return ``question`` if it is a non-blank string, else raise ``ConfigurationError``."""
    if not isinstance(question, str):
        raise ConfigurationError(
            f"a router needs the question as a string, got {type(question).__name__}"
        )
    if not question.strip():
        raise ConfigurationError("a router needs a question, got an empty string")
    return question


async def decide_many(router: Router, questions: Iterable[str]) -> list[Decision]:
    """Decide every question, in order; routers with a faster batch path provide their own."""
    batch = getattr(router, "decide_many", None)
    if batch is not None:
        return list(await batch(list(questions)))
    return [await router.decide(q) for q in questions]


def decide_sync(router: Router, question: str) -> Decision:
    """Blocking ``router.decide(question)`` for scripts without a running event loop."""
    return anyio.run(router.decide, question)
