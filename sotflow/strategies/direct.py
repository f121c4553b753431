"""Direct: one plain call, the baseline every other strategy is measured against.

``Passthrough`` is the same single call for a request that is already whole: a
conversation with tool calls and tool results, tools to choose from, a response format.
A meta-generation strategy has no meaning there (there is no question to outline or
sample), so chat models and proxies send such a request as it is, through the engine
for its limits, retries and events.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from ..graph import Call, Graph, NodeContext, Part, Result
from ..types import Completion, Message, Request, SamplingParams
from .base import BuildContext

__all__ = ["Direct", "Passthrough"]


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


class Passthrough:
    """Send one ready request as it is; the answer keeps the reply's tool calls.

    ``answer.details`` has ``finish_reason``, ``model`` (as the server named it) and,
    when the model called tools, ``tool_calls`` (``ToolCall`` objects).
    """

    name = "direct"

    def __init__(self, request: Request) -> None:
        if not isinstance(request, Request):
            raise ConfigurationError(f"Passthrough takes a Request, got {type(request).__name__}")
        self.request = request

    def build(self, question: str, ctx: BuildContext) -> Graph:
        return Graph(
            nodes=(Call("answer", self.request, then=_reply, part=Part((0,))),), output="answer"
        )

    def __repr__(self) -> str:
        return f"Passthrough({len(self.request.messages)} messages)"


def _reply(completion: Completion, ctx: NodeContext) -> Result:
    details: dict[str, Any] = {
        "finish_reason": completion.finish_reason,
        "model": completion.model,
    }
    if completion.tool_calls:
        details["tool_calls"] = list(completion.tool_calls)
    return Result(text=completion.text, details=details)
