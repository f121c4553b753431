"""Our types <-> OpenAI's chat-completions JSON, in one place.

The OpenAI backend (a client) and an OpenAI-compatible server speak the same shapes
from opposite ends: messages with tool calls and tool results, the request body, a
completion, and the stream of chunks a completion arrives in. Everything that knows
those shapes lives here; backends move bytes, servers route requests.

Client side: ``request_body``, ``completion_from_wire``, ``StreamAssembler``.
Server side and both: ``message_to_wire`` / ``message_from_wire``, ``choice_to_wire``,
``tool_calls_to_wire`` / ``tool_calls_from_wire``, ``usage_to_wire``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigurationError, MalformedResponseError, StreamInterruptedError
from .types import Choice, Completion, Delta, Message, Request, TokenLogprob, ToolCall, Usage

__all__ = [
    "StreamAssembler",
    "choice_to_wire",
    "completion_from_wire",
    "cut_prefill_echo",
    "estimate_usage",
    "message_from_wire",
    "message_to_wire",
    "parse_logprobs",
    "parse_usage",
    "request_body",
    "tool_calls_from_wire",
    "tool_calls_to_wire",
    "usage_to_wire",
]

# "developer" is OpenAI's newer name for a system message.
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


# ---------------------------------------------------------------------- messages
def tool_calls_to_wire(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def tool_calls_from_wire(raw: Any, where: str = "the message") -> tuple[ToolCall, ...]:
    """Complete tool calls (a response's or a request's); a malformed one raises."""
    if not raw:
        return ()
    calls = []
    try:
        for position, item in enumerate(raw):
            function = item.get("function") or {}
            arguments = function.get("arguments")
            if isinstance(arguments, Mapping):
                # Some servers send the arguments already parsed; keep them as JSON text.
                arguments = json.dumps(arguments, ensure_ascii=False)
            calls.append(
                ToolCall(
                    str(item.get("id") or f"call_{position}"),
                    str(function.get("name") or ""),
                    "" if arguments is None else str(arguments),
                )
            )
    except (AttributeError, TypeError, ConfigurationError) as exc:
        raise MalformedResponseError(f"{where} has a malformed tool call: {exc}") from exc
    return tuple(calls)


def message_to_wire(message: Message) -> dict[str, Any]:
    """One message as OpenAI's JSON (a request's history, or a response's reply)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = tool_calls_to_wire(message.tool_calls)
        if not message.content:
            out["content"] = None  # OpenAI's shape for a reply that only calls tools
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _text_content(value: Any, where: str) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text") or ""))
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ConfigurationError(
                    f"{where}.content: only text parts are supported, got a {kind!r} part"
                )
        return "".join(parts)
    raise ConfigurationError(f"{where}.content must be a string or a list of text parts")


def message_from_wire(item: Any, index: int = 0) -> Message:
    """One message of a request body; a bad one raises ``ConfigurationError`` naming it."""
    where = f"messages[{index}]"
    if not isinstance(item, Mapping):
        raise ConfigurationError(f"{where} must be an object with 'role' and 'content'")
    role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise ConfigurationError(
            f"{where}.role must be one of {sorted(_ROLES)}, got {item.get('role')!r}"
        )
    try:
        calls = tool_calls_from_wire(item.get("tool_calls"), where)
    except MalformedResponseError as exc:
        raise ConfigurationError(str(exc)) from None
    name = item.get("name")
    return Message(
        role,  # type: ignore[arg-type]
        _text_content(item.get("content"), where),
        calls,
        item.get("tool_call_id"),
        name if isinstance(name, str) else None,
    )


# ---------------------------------------------------------------------- requests
def request_body(
    request: Request,
    *,
    model: str,
    stream: bool,
    prefill: bool,
    extra_body: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body for ``request``.

    ``prefill``: the server continues a final assistant message when asked with
    ``continue_final_message`` (vLLM, ``sotflow serve``); without it the reply is asked
    to begin with the prefill in words, and ``strip_prefill`` cuts it off again.
    """
    messages = [message_to_wire(m) for m in request.messages]
    body: dict[str, Any] = {"model": request.model or model, "messages": messages}
    if request.prefill:
        if prefill:
            messages.append({"role": "assistant", "content": request.prefill})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        else:
            last = dict(messages[-1])
            last["content"] = (
                f"{last.get('content') or ''}\n\nBegin your reply with exactly: {request.prefill}"
            )
            messages[-1] = last
    p = request.params
    if p.max_tokens is not None:
        body["max_tokens"] = p.max_tokens
    if p.temperature is not None:
        body["temperature"] = p.temperature
    if p.top_p is not None:
        body["top_p"] = p.top_p
    if p.n != 1:
        body["n"] = p.n
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    if p.logprobs:
        body["logprobs"] = True
        if p.top_logprobs:
            body["top_logprobs"] = p.top_logprobs
    # Not in OpenAI's API; vLLM and sotflow serve accept them. Sent only when asked.
    if p.top_k is not None:
        body["top_k"] = p.top_k
    if p.min_p is not None:
        body["min_p"] = p.min_p
    if p.repetition_penalty is not None:
        body["repetition_penalty"] = p.repetition_penalty
    # Tool calling and structured output go through exactly as given.
    if request.tools:
        body["tools"] = [dict(t) for t in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.response_format is not None:
        body["response_format"] = dict(request.response_format)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(extra_body or {})
    # Fields of this one request that sotflow does not model, as the caller gave them.
    body.update(request.extra_body or {})
    return body


_SEPARATORS = " \t-:–—."


def cut_prefill_echo(text: str, prefill: str, *, final: bool = True) -> str | None:
    """What follows the prefill in a reply that was asked to start with it.

    A server that cannot continue a prefilled message was asked, in words, to begin
    with ``prefill``. Models do, but loosely: ``1. Set goals -`` comes back as
    ``1. Set goals - ...``, ``1. Set goals\n...``, ``Set goals: ...`` or ``set goals``.
    Every such echo (its list number optional, case and spacing free, its trailing
    punctuation optional) is cut with the separator after it; a reply that does not
    start with it is returned whole. ``None`` (only when not ``final``) means "too
    little text yet to tell".
    """
    candidate = text.lstrip()
    head = re.match(r"(\d+)[.)]\s*", prefill)
    title = prefill[head.end() :] if head else prefill
    core = title.rstrip(_SEPARATORS)
    if not core:
        # A bare list number ("1."): exactly it, what follows untouched.
        if len(candidate) < len(prefill) and prefill.startswith(candidate) and not final:
            return None
        return candidate[len(prefill) :] if candidate.startswith(prefill) else text
    number = rf"(?:{head.group(1)}[.)]\s*)?" if head else ""
    words = r"\s+".join(re.escape(w) for w in core.split())
    bold = r"(?:\*\*)?"
    pattern = re.compile(
        rf"{bold}{number}{bold}{words}{bold}[ \t]*(?:[-:–—.][ \t]*)?", re.IGNORECASE
    )
    if not final and len(candidate) < len(prefill) + 2:
        return None  # a separator (or a newline) may still come
    match = pattern.match(candidate)
    if match is None:
        return text
    return candidate[match.end() :]


def strip_prefill(text: str, request: Request, *, asked_in_words: bool) -> str:
    """Without real prefill we asked the model to start with it; keep only what follows."""
    prefill = request.prefill
    if prefill and asked_in_words:
        return cut_prefill_echo(text, prefill) or ""
    return text


# ---------------------------------------------------------------------- completions
def parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        prompt = int(raw.get("prompt_tokens") or 0)
        completion = int(raw.get("completion_tokens") or 0)
        total = int(raw.get("total_tokens") or prompt + completion)
    except (TypeError, ValueError):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


def usage_to_wire(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def estimate_usage(
    request: Request, choices: Sequence[Choice], chunks: Mapping[int, int] | None = None
) -> Usage:
    """A stand-in, marked ``estimated``, when the server reports no usage.

    Roughly 4 characters a token; a streamed choice is at least as many tokens as it
    came in chunks (``chunks``: servers send about one token a chunk), and a choice cut
    by the length limit is exactly ``max_tokens``.
    """
    prompt = sum(len(m.content) for m in request.messages) // 4 + 4 * len(request.messages)
    limit = request.params.max_tokens
    completion = 0
    for c in choices:
        written = len(c.text) + sum(len(t.name) + len(t.arguments) for t in c.tool_calls)
        count = max(1, written // 4) if written else 0
        count = max(count, (chunks or {}).get(c.index, 0))
        if limit is not None:
            count = limit if c.finish_reason == "length" else min(count, limit)
        completion += count
    return Usage.of(prompt, completion, estimated=True)


def parse_logprobs(raw: Any) -> tuple[TokenLogprob, ...] | None:
    if not raw:
        return None
    out = []
    for item in raw:
        top = tuple(
            (str(t.get("token", "")), float(t.get("logprob", 0.0)))
            for t in item.get("top_logprobs") or ()
        )
        out.append(TokenLogprob(str(item.get("token", "")), float(item.get("logprob", 0.0)), top))
    return tuple(out)


def completion_from_wire(
    data: Any, request: Request, *, model: str, where: str, prefill_in_words: bool
) -> Completion:
    """A chat-completion response body (an error body is the caller's to map first)."""
    if not isinstance(data, dict):
        raise MalformedResponseError(f"{where} answered with something other than an object")
    raw_choices = data.get("choices")
    if not isinstance(raw_choices, list) or not raw_choices:
        raise MalformedResponseError(f"{where} answered without choices")
    choices = []
    for position, raw in enumerate(raw_choices):
        try:
            message = raw.get("message") or {}
            text = message.get("content") or ""
            logprobs = parse_logprobs((raw.get("logprobs") or {}).get("content"))
            index = raw.get("index", position)
            calls = tool_calls_from_wire(message.get("tool_calls"), f"{where}'s reply")
        except (AttributeError, TypeError) as exc:
            raise MalformedResponseError(f"{where} sent a malformed choice") from exc
        text = strip_prefill(text, request, asked_in_words=prefill_in_words)
        choices.append(Choice(index, text, raw.get("finish_reason"), logprobs, calls))
    choices.sort(key=lambda c: c.index)
    usage = parse_usage(data.get("usage")) or estimate_usage(request, choices)
    return Completion(tuple(choices), usage, str(data.get("model") or request.model or model))


def choice_to_wire(choice: Choice) -> dict[str, Any]:
    """A choice as a non-streamed response's JSON (logprobs are the server's to add)."""
    message = message_to_wire(Message("assistant", choice.text, choice.tool_calls))
    reason = choice.finish_reason or ("tool_calls" if choice.tool_calls else "stop")
    return {"index": choice.index, "message": message, "finish_reason": reason}


class _PartialCall:
    """A tool call whose pieces are still arriving (OpenAI streams the arguments)."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class StreamAssembler:
    """Turns chat-completion chunks into text deltas and, at the end, one ``Completion``.

    Tool calls arrive in pieces (an id and a name, then the arguments a few characters
    at a time, per call ``index``); they are assembled here and come whole in the final
    completion.
    """

    def __init__(self, request: Request, *, model: str, where: str, prefill_in_words: bool) -> None:
        self.request = request
        self.default_model = request.model or model
        self.where = where
        self.texts: dict[int, list[str]] = {}
        self.reasons: dict[int, str] = {}
        self.logprobs: dict[int, list[TokenLogprob]] = {}
        self.calls: dict[int, dict[int, _PartialCall]] = {}
        self.usage: Usage | None = None
        self.model = ""
        # Without real prefill the model writes the prefill itself: text is held back
        # until it is clear whether the reply starts with it, then the prefill is cut.
        self.strip = bool(request.prefill) and prefill_in_words
        self.held: dict[int, str] = {}
        self.decided: set[int] = set()
        self.released: list[Delta] = []
        self.chunks: dict[int, int] = {}
        """Content chunks per choice: a floor for an estimated token count."""

    def add(self, chunk: dict[str, Any]) -> list[Delta]:
        if not self.model and chunk.get("model"):
            self.model = str(chunk["model"])
        usage = chunk.get("usage")
        if usage:
            self.usage = parse_usage(usage)
        out: list[Delta] = []
        choices = chunk.get("choices")
        if not choices:
            return out
        try:
            for raw in choices:
                index = raw.get("index", 0)
                delta = raw.get("delta") or {}
                lp = raw.get("logprobs")
                tokens = parse_logprobs(lp.get("content")) if lp else None
                if tokens:
                    self.logprobs.setdefault(index, []).extend(tokens)
                text = delta.get("content")
                if text:
                    self.chunks[index] = self.chunks.get(index, 0) + 1
                if text and self.strip and index not in self.decided:
                    text = self._cut_prefill(index, text)
                if text:
                    self.texts.setdefault(index, []).append(text)
                    # A chunk's log-probabilities are those of the tokens of its text.
                    out.append(Delta(text, index, tokens))
                for piece in delta.get("tool_calls") or ():
                    self._add_call(index, piece)
                if raw.get("finish_reason"):
                    self.reasons[index] = raw["finish_reason"]
        except (AttributeError, TypeError) as exc:
            raise MalformedResponseError(f"{self.where} sent a malformed stream chunk") from exc
        return out

    def _add_call(self, choice: int, piece: dict[str, Any]) -> None:
        calls = self.calls.setdefault(choice, {})
        call = calls.setdefault(int(piece.get("index", len(calls))), _PartialCall())
        if piece.get("id"):
            call.id = str(piece["id"])
        function = piece.get("function") or {}
        if function.get("name"):
            call.name += str(function["name"])
        if function.get("arguments"):
            call.arguments.append(str(function["arguments"]))

    def _cut_prefill(self, index: int, text: str) -> str:
        seen = self.held.pop(index, "") + text
        cut = cut_prefill_echo(seen, self.request.prefill or "", final=False)
        if cut is None:
            self.held[index] = seen
            return ""
        self.decided.add(index)
        return cut

    def _tool_calls(self, index: int) -> tuple[ToolCall, ...]:
        calls = self.calls.get(index)
        if not calls:
            return ()
        out = []
        for position, (_, call) in enumerate(sorted(calls.items())):
            if not call.name:
                raise MalformedResponseError(
                    f"{self.where} streamed a tool call without a function name"
                )
            out.append(ToolCall(call.id or f"call_{position}", call.name, "".join(call.arguments)))
        return tuple(out)

    def completion(self) -> Completion:
        if not self.reasons:
            raise StreamInterruptedError(
                f"the stream from {self.where} stopped before any choice finished "
                "(some servers end a running stream when another request arrives)"
            )
        for index, held in self.held.items():
            # The reply ended while it could still have been the prefill: decide now.
            rest = cut_prefill_echo(held, self.request.prefill or "")
            if rest:
                self.texts.setdefault(index, []).append(rest)
                self.released.append(Delta(rest, index))
        self.held.clear()
        indices = sorted(set(self.texts) | set(self.reasons) | set(self.calls))
        choices = tuple(
            Choice(
                index,
                "".join(self.texts.get(index, ())),
                self.reasons.get(index),
                tuple(self.logprobs[index]) if index in self.logprobs else None,
                self._tool_calls(index),
            )
            for index in indices
        )
        usage = self.usage or estimate_usage(self.request, choices, self.chunks)
        return Completion(choices, usage, self.model or self.default_model)
