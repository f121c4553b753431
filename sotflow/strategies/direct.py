"""Direct: one plain call, the baseline every other strategy is measured against."""

from __future__ import annotations

from typing import Any

from ..graph import Call, Graph, NodeContext, Part, Result
from ..types import Completion, Message, Request, SamplingParams
from .base import BuildContext

__all__ = ["Direct"]


class Direct:
    """Answer with a single model call."""

    name = "direct"

    def __init__(
        self,
        *,
        max_tokens: int | None = 512,
        temperature: float | None = None,
        system: str | None = None,
        **params: Any,
    ) -> None:
        self.params = SamplingParams.of(
            type(self).__name__, max_tokens=max_tokens, temperature=temperature, **params
        )
        self.system = system
        self._head = (Message.system(system),) if system else ()

    def request(self, question: str) -> Request:
        return Request((*self._head, Message.user(question)), self.params)

    def build(self, question: str, ctx: BuildContext) -> Graph:
        return Graph(
            nodes=(Call("answer", self.request(question), then=_result, part=Part((0,))),),
            output="answer",
        )

    def __repr__(self) -> str:
        return f"Direct(max_tokens={self.params.max_tokens}, temperature={self.params.temperature})"


def _result(completion: Completion, ctx: NodeContext) -> Result:
    return Result(text=completion.text, details={"finish_reason": completion.finish_reason})
