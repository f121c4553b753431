"""A chat-completions body, checked field by field, as one ``ChatCall``.

Every field is checked for its type and range before anything runs, so one bad
request is refused alone (a 400 that names the field) and never reaches a batch it
could break. Messages, tools and response formats go through ``sotflow.openai_wire``
and ``Request``, the one place that knows their shapes. OpenAI fields sotflow does not
model (``presence_penalty``, ``logit_bias``, ...) are checked where their range is
known and kept in ``Request.extra_body``: an upstream gets them as they came, and a
backend that cannot honour them refuses them by name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from ..openai_wire import message_from_wire
from ..types import Message, Request, SamplingParams

__all__ = ["BadRequest", "ChatCall", "loads", "parse_chat"]

_MAX_INT = 2**31 - 1
# Read by sotflow itself; every other field is the upstream's (extra_body).
_OWN = frozenset(
    {
        "model", "messages", "stream", "stream_options", "max_tokens",
        "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
        "repetition_penalty", "stop", "n", "seed", "logprobs", "top_logprobs", "tools",
        "tool_choice", "response_format", "continue_final_message",
        "add_generation_prompt", "sotflow", "user",
    }
)  # fmt: skip


class BadRequest(Exception):
    """A request that cannot be served as sent; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One chat-completions request, checked.

    ``request`` is the whole request as the client sent it (for a direct call);
    ``given`` names the sampling fields the client set, so a strategy that cannot
    apply one refuses it instead of ignoring it.
    """

    model: str
    request: Request
    stream: bool = False
    include_usage: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    given: frozenset[str] = frozenset()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(raw: bytes) -> Any:
    """JSON as the standard defines it: no NaN or Infinity, which Python would accept."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise BadRequest(f"the request body is not valid JSON: {detail}") from None


def _number(
    body: Mapping[str, Any],
    name: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise BadRequest(
            f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}", name
        )
    if not integer and not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a finite number, got {value!r}", name)
    below = low is not None and (value <= low if low_open else value < low)
    if below or (high is not None and value > high):
        lower = "above" if low_open else "at least"
        if high is None:
            bounds = f"{lower} {low}"
        elif low is None:
            bounds = f"at most {high}"
        else:
            bounds = f"{'in (' if low_open else 'in ['}{low}, {high}]"
        raise BadRequest(f"'{name}' must be {bounds}, got {value!r}", name)
    return value


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false, got {value!r}", name)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    if len(stop) > 16:
        raise BadRequest(f"'stop' takes at most 16 strings, got {len(stop)}", "stop")
    return tuple(s for s in stop if s)


def _messages(body: Mapping[str, Any]) -> list[Message]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list of messages", "messages")
    try:
        return [message_from_wire(item, i) for i, item in enumerate(raw)]
    except ConfigurationError as exc:
        raise BadRequest(str(exc), "messages") from None


def _extras(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields sotflow passes on without modelling them, checked where it can."""
    extra = {k: v for k, v in body.items() if k not in _OWN}
    for name in ("presence_penalty", "frequency_penalty"):
        _number(extra, name, low=-2, high=2)
    bias = extra.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise BadRequest("'logit_bias' must be an object of token ids to numbers", "logit_bias")
        for token in bias:
            _number(bias, token, low=-100, high=100)
    for name in ("parallel_tool_calls", "store"):
        if extra.get(name) is not None:
            _flag(extra, name)
    return extra


def parse_chat(body: Any) -> ChatCall:
    """Check a chat-completions body; ``BadRequest`` names the first wrong field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("'model' must name a model (GET /v1/models lists them)", "model")
    messages = _messages(body)
    max_tokens = _number(body, "max_completion_tokens", integer=True, low=1, high=_MAX_INT)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", integer=True, low=1, high=_MAX_INT)
    logprobs = _flag(body, "logprobs")
    top_logprobs = _number(body, "top_logprobs", integer=True, low=0, high=20)
    if top_logprobs is not None and not logprobs:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    top_k = _number(body, "top_k", integer=True, low=-1, high=_MAX_INT)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("'user' must be a string", "user")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", low=0, high=2),
        top_p=_number(body, "top_p", low=0, high=1, low_open=True),
        top_k=top_k if top_k and top_k > 0 else None,
        min_p=_number(body, "min_p", low=0, high=1),
        repetition_penalty=_number(body, "repetition_penalty", low=0, high=10, low_open=True),
        stop=_stop(body),
        n=_number(body, "n", integer=True, low=1, high=128) or 1,
        # Any integer: a local model takes it modulo 2**64, an upstream as it is.
        seed=_number(body, "seed", integer=True),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
    prefill = None
    if _flag(body, "continue_final_message"):
        if body.get("add_generation_prompt") is True:
            raise BadRequest(
                "'continue_final_message' and 'add_generation_prompt' cannot both be true",
                "continue_final_message",
            )
        if messages[-1].role != "assistant" or messages[-1].tool_calls:
            raise BadRequest(
                "'continue_final_message' needs the last message to be the assistant's text",
                "continue_final_message",
            )
        prefill = messages.pop().content
        if not messages:
            raise BadRequest(
                "there must be a message before the continued assistant message", "messages"
            )
    else:
        _flag(body, "add_generation_prompt")
    stream = _flag(body, "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    include_usage = _flag(stream_options or {}, "include_usage")
    options = body.get("sotflow")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'sotflow' must be an object of strategy options", "sotflow")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise BadRequest("'tools' must be a list of tools", "tools")
    response_format = body.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise BadRequest("'response_format' must be an object", "response_format")
    extra = _extras(body)
    if user is not None:
        extra["user"] = user
    try:
        request = Request(
            tuple(messages),
            params,
            prefill,
            tools=tuple(tools or ()),
            tool_choice=body.get("tool_choice"),
            response_format=response_format,
            extra_body=extra or None,
        )
    except ConfigurationError as exc:
        message = str(exc)
        param = next((f for f in ("tool_choice", "tools", "response_format") if f in message), None)
        raise BadRequest(message, param) from None
    given = frozenset(
        name
        for name in (
            "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed",
            "logprobs", "top_logprobs", "n",
        )
        if body.get(name) not in (None, False) and not (name == "n" and body.get(name) == 1)
    )  # fmt: skip
    return ChatCall(model.strip(), request, stream, include_usage, dict(options or {}), given)
