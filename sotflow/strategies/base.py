"""The strategy protocol: a question in, a graph out. Strategies never do I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..graph import Graph

__all__ = ["BuildContext", "Strategy"]


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a strategy may know while it describes its graph."""

    backend: Backend
    """The run's default backend: strategies read its capabilities (e.g. prefill)."""


@runtime_checkable
class Strategy(Protocol):
    name: str

    def build(self, question: str, ctx: BuildContext) -> Graph: ...
