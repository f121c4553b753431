"""The data that flows between strategies, the engine and backends.

Requests and completions are frozen dataclasses: they are built on the hot path, one or
more per model call. What a user gets back (``Answer`` and its trace) is a pydantic
model, so it validates, serialises to JSON and has a schema.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

from .errors import ConfigurationError

__all__ = [
    "Answer",
    "Choice",
    "Completion",
    "Decision",
    "Delta",
    "ErrorInfo",
    "Message",
    "NodeTrace",
    "Point",
    "Request",
    "Role",
    "SamplingParams",
    "TokenLogprob",
    "ToolCall",
    "Trace",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
_ROLES = frozenset(get_args(Role))


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for, in OpenAI's shape.

    ``arguments`` is the JSON text exactly as the model wrote it: a model can write
    invalid JSON, and the caller decides what to do with that (``parsed()`` raises).
    """

    id: str
    name: str
    arguments: str = "{}"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"a tool call needs a function name, got {self.name!r}")
        if not isinstance(self.arguments, str):
            raise ConfigurationError(
                f"tool call {self.name!r}: arguments must be JSON text (a str), "
                f"got {type(self.arguments).__name__}; use json.dumps(...)"
            )

    def parsed(self) -> Any:
        """The arguments as JSON values (``ValueError`` if the model wrote invalid JSON)."""
        return json.loads(self.arguments) if self.arguments.strip() else {}


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation.

    Content stays text. An assistant turn may carry ``tool_calls``; a ``tool`` turn is
    the result of one call and names it with ``tool_call_id``.
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ConfigurationError(
                f"a message role must be one of {sorted(_ROLES)}, got {self.role!r}"
            )
        if self.tool_calls:
            if not isinstance(self.tool_calls, tuple):
                object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
            if self.role != "assistant":
                raise ConfigurationError(
                    f"only an assistant message can carry tool calls, not a {self.role!r} one"
                )
        if self.role == "tool" and not self.tool_call_id:
            raise ConfigurationError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ConfigurationError(
                f"tool_call_id belongs on a tool message, not a {self.role!r} one"
            )

    @classmethod
    def system(cls, content: str) -> Message:
        return cls("system", content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls("user", content)

    @classmethod
    def assistant(cls, content: str, tool_calls: Sequence[ToolCall] = ()) -> Message:
        return cls("assistant", content, tuple(tool_calls))

    @classmethod
    def tool(cls, content: str, tool_call_id: str, *, name: str | None = None) -> Message:
        return cls("tool", content, tool_call_id=tool_call_id, name=name)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Token-level decoding settings. ``None`` means "the backend's default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigurationError(f"n must be at least 1, got {self.n}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigurationError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ConfigurationError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigurationError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, owner: str, **settings: Any) -> SamplingParams:
        """The sampling parameters among ``owner``'s keyword arguments.

        Strategies pass their extra keywords on as sampling parameters, so a misspelt
        setting of their own lands here: say so in the owner's terms.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ConfigurationError(
                f"{owner} has no setting {', '.join(map(repr, unknown))}; besides its own "
                f"settings it takes sampling parameters: {', '.join(names)}"
            )
        return cls(**settings)


@dataclass(frozen=True, slots=True)
class Request:
    """One model call: the conversation, how to sample, and an optional prefill.

    ``prefill`` is text the assistant's reply must start with. Backends that can
    continue an assistant message send it as the start of the reply; the completion's
    text is only what comes *after* the prefill.

    ``tools``, ``tool_choice`` and ``response_format`` are OpenAI's JSON values, passed
    to the API unchanged (``tools``: ``{"type": "function", "function": {...}}`` items;
    ``tool_choice``: ``"none"``, ``"auto"``, ``"required"`` or one named function;
    ``response_format``: ``{"type": "json_object"}`` or a ``json_schema``). ``model``
    asks for another model than the backend's own on this one call. ``extra_body`` holds
    OpenAI fields sotflow does not model (``presence_penalty``, ``logit_bias``, ...), sent
    to the API as they are, as a proxy must.
    """

    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    prefill: str | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None
    model: str | None = None
    extra_body: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages:
            raise ConfigurationError("a Request needs at least one message")
        if self.tools or self.tool_choice is not None or self.response_format is not None:
            _check_tools(self)
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ConfigurationError(
                f"model must be a non-empty string or None, got {self.model!r}"
            )
        if self.extra_body is not None and not isinstance(self.extra_body, Mapping):
            raise ConfigurationError(
                f"extra_body must be a dict of API fields or None, got {self.extra_body!r}"
            )

    def tool_fields(self) -> list[str]:
        """The fields of this request that go beyond plain text chat, by name.

        A backend that only writes text refuses a request that has any (naming them),
        and a meta-generation strategy has no meaning for one: it is a single call.
        """
        found = [
            name
            for name, value in (
                ("tools", self.tools),
                ("tool_choice", self.tool_choice),
                ("response_format", self.response_format),
            )
            if value
        ]
        found.extend(self.extra_body or ())
        for i, m in enumerate(self.messages):
            if m.tool_calls:
                found.append(f"messages[{i}].tool_calls")
            elif m.role == "tool":
                found.append(f"messages[{i}] (a tool result)")
        return found

    @classmethod
    def of(
        cls,
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        prefill: str | None = None,
        **params: Any,
    ) -> Request:
        """Shorthand: ``Request.of("question", max_tokens=100, temperature=0)``."""
        messages: list[Message] = [Message.system(system)] if system else []
        if isinstance(prompt, str):
            messages.append(Message.user(prompt))
        else:
            messages.extend(prompt)
        return cls(tuple(messages), SamplingParams(**params), prefill)


_TOOL_CHOICES = ("none", "auto", "required")
_FORMATS = ("text", "json_object", "json_schema")


def _check_tools(request: Request) -> None:
    """OpenAI's shapes for tools, tool_choice and response_format, checked before sending."""
    if not isinstance(request.tools, tuple):
        object.__setattr__(request, "tools", tuple(request.tools))
    names = []
    for i, tool in enumerate(request.tools):
        if not isinstance(tool, Mapping):
            raise ConfigurationError(
                f"tools[{i}] must be a dict (OpenAI's tool shape), got {tool!r}"
            )
        function = tool.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if tool.get("type") != "function" or not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"tools[{i}] must look like {{'type': 'function', 'function': {{'name': ..., "
                f"'parameters': {{...}}}}}}, got {tool!r}"
            )
        names.append(name)
    choice = request.tool_choice
    if choice is not None:
        if not request.tools:
            raise ConfigurationError("tool_choice needs tools to choose from; pass tools=[...]")
        if isinstance(choice, str):
            if choice not in _TOOL_CHOICES:
                raise ConfigurationError(
                    f"tool_choice must be one of {', '.join(map(repr, _TOOL_CHOICES))} or "
                    f"{{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r}"
                )
        else:
            function = choice.get("function") if isinstance(choice, Mapping) else None
            name = function.get("name") if isinstance(function, Mapping) else None
            if name not in names:
                raise ConfigurationError(
                    f"tool_choice names {name!r}, which is not among the tools ({', '.join(names)})"
                )
    fmt = request.response_format
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, Mapping) else None
        if kind not in _FORMATS:
            raise ConfigurationError(
                f"response_format must have a type among {', '.join(_FORMATS)}, got {fmt!r}"
            )
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
                raise ConfigurationError(
                    "a json_schema response_format needs {'type': 'json_schema', "
                    "'json_schema': {'name': ..., 'schema': {...}}}"
                )


class Usage(BaseModel):
    """Token counts. ``estimated`` is true when the server reported none and we counted."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            estimated=self.estimated or other.estimated,
        )

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, *, estimated: bool = False) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            estimated=estimated,
        )


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Choice:
    """One sample. A reply that calls tools has ``tool_calls`` and, usually, no text
    (``finish_reason`` is then ``"tool_calls"``)."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def mean_logprob(self) -> float | None:
        if not self.logprobs:
            return None
        return sum(t.logprob for t in self.logprobs) / len(self.logprobs)


@dataclass(frozen=True, slots=True)
class Completion:
    """What one model call returned: one choice per sample (``n``)."""

    choices: tuple[Choice, ...]
    usage: Usage
    model: str = ""

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.choices[0].tool_calls


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of streamed text for choice ``index``; with ``logprobs`` asked for, the
    log-probabilities of the tokens it was written in (as far as the backend streams them)."""

    text: str
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None


class ErrorInfo(BaseModel):
    """An error as data: its class name and message (never a secret)."""

    model_config = ConfigDict(frozen=True)

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        return cls(type=type(exc).__name__, message=str(exc) or type(exc).__name__)


class NodeTrace(BaseModel):
    """What happened to one node of a run. Times are seconds from the run's start."""

    id: str
    kind: Literal["call", "step", "embed"]
    status: Literal["ok", "failed", "cancelled"]
    needs: list[str] = []
    start_s: float | None = None
    end_s: float | None = None
    backend: str | None = None
    model: str | None = None
    usage: Usage | None = None
    attempts: int = 0
    error: ErrorInfo | None = None
    meta: dict[str, Any] = {}

    @property
    def duration_s(self) -> float | None:
        if self.start_s is None or self.end_s is None:
            return None
        return self.end_s - self.start_s


class Trace(BaseModel):
    """The record of one run: every node, in the order they started."""

    run_id: str
    strategy: str
    started_at: float
    duration_s: float = 0.0
    nodes: list[NodeTrace] = []
    warnings: list[str] = []

    def node(self, node_id: str) -> NodeTrace:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def calls(self) -> list[NodeTrace]:
        return [n for n in self.nodes if n.kind == "call"]

    @property
    def attempts(self) -> int:
        return sum(n.attempts for n in self.nodes if n.kind == "call")

    def critical_path_s(self, node_id: str | None = None) -> float:
        """Length of the longest chain of calls that ends in ``node_id`` (or anywhere).

        The ideal latency of a run whose every call started the moment its inputs were
        ready: durations of calls summed along ``needs`` edges; an ``Embed`` counts as
        the longest chain of its own sub-graph.
        """
        by_id = {n.id: n for n in self.nodes}
        memo: dict[str, float] = {}

        def longest(nid: str) -> float:
            if nid in memo:
                return memo[nid]
            n = by_id[nid]
            if n.kind == "call":
                own = n.duration_s or 0.0
            elif n.kind == "embed":
                # An embedded strategy's calls are its own chain, after its needs.
                inner = f"{nid}/"
                own = max((longest(k) for k in by_id if k.startswith(inner)), default=0.0)
            else:
                own = 0.0
            before = max((longest(d) for d in n.needs if d in by_id), default=0.0)
            memo[nid] = own + before
            return memo[nid]

        if node_id is not None:
            return longest(node_id)
        return max((longest(n) for n in by_id), default=0.0)


class Point(BaseModel):
    """One point of a Skeleton-of-Thought answer."""

    index: int
    title: str
    text: str = ""
    needs: list[int] = []
    start_s: float | None = None
    end_s: float | None = None
    usage: Usage | None = None


class Decision(BaseModel):
    """A router's choice for one question."""

    model_config = ConfigDict(frozen=True)

    strategy: str
    confidence: float = 1.0
    reason: str = ""
    router: str = ""


class Answer(BaseModel):
    """The result of running a strategy on one question.

    ``error`` is set (and ``text`` may be partial or empty) when the run failed; batch
    runs return such an answer in the failed question's place instead of raising.
    """

    question: str
    text: str = ""
    strategy: str
    usage: Usage = Usage()
    latency_s: float = 0.0
    trace: Trace | None = None
    error: ErrorInfo | None = None
    points: list[Point] | None = None
    skeleton: str | None = None
    decision: Decision | None = None
    details: dict[str, Any] = {}

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def attempts(self) -> int:
        return self.trace.attempts if self.trace else 0

    @property
    def warnings(self) -> list[str]:
        """What went wrong without failing the answer (a point left out, a slow server)."""
        return list(self.trace.warnings) if self.trace else []
