"""A run's events as OpenAI chunks, and a finished run as an OpenAI response.

Nothing sent can be taken back, so text goes through ``AppendOnlyText``: a stream the
engine retried streams on where the retry has caught up with what was sent. A direct
call's stream relays every choice (``n``) with its log-probabilities as they arrive,
and its tool calls whole at the end; a strategy's stream is its answer in reading
order (``AnswerDelta``), cut at the client's stop sequences.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..events import AnswerDelta, AnswerReset, StreamReset, TextDelta
from ..openai_wire import choice_to_wire, message_to_wire, tool_calls_to_wire, usage_to_wire
from ..reading import AppendOnlyText
from ..types import Answer, Completion, Message, TokenLogprob, Usage

__all__ = ["AnswerRelay", "Chunks", "DirectRelay", "Diverged", "logprobs_to_wire", "response_body"]


class Diverged(Exception):
    """A retried stream wrote other text than the part of it already sent."""


def logprobs_to_wire(items: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if items is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(tok, lp) for tok, lp in t.top]}
            for t in items
        ]
    }


class Chunks:
    """Server-sent events of one response: ``chat.completion.chunk`` objects, then [DONE]."""

    def __init__(self, ident: str, created: int, model: str) -> None:
        # The fields every chunk repeats, encoded once.
        self._head = (
            f'data: {{"id":{json.dumps(ident)},"object":"chat.completion.chunk",'
            f'"created":{created},"model":{json.dumps(model)},'
        ).encode()

    def choices(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        tail = "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in extra.items())
        return self._head + f'"choices":{json.dumps(choices)}{tail}}}\n\n'.encode()

    def text(self, index: int, text: str, logprobs: Any = None) -> bytes:
        choice: dict[str, Any] = {"index": index, "delta": {"content": text}}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        choice["finish_reason"] = None
        return self.choices([choice])

    def roles(self, count: int) -> bytes:
        return b"".join(
            self.choices(
                [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
            for i in range(count)
        )

    def finish(self, index: int, reason: str, **extra: Any) -> bytes:
        return self.choices([{"index": index, "delta": {}, "finish_reason": reason}], **extra)

    def usage(self, usage: Usage) -> bytes:
        return self.choices([], usage=usage_to_wire(usage))

    @staticmethod
    def error(message: str, kind: str, code: str | None) -> bytes:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return f"data: {json.dumps(body)}\n\n".encode()

    DONE = b"data: [DONE]\n\n"


def _released_logprobs(
    text: str, released: str, logprobs: Sequence[TokenLogprob] | None
) -> tuple[TokenLogprob, ...] | None:
    """The tokens of a delta that lie in its released tail (a retry catching up sends
    only the end of a delta; the tokens before were sent with the first attempt)."""
    if logprobs is None:
        return None
    skip = len(text) - len(released)
    if skip <= 0:
        return tuple(logprobs)
    out, position = [], 0
    for item in logprobs:
        position += len(item.token)
        if position > skip:
            out.append(item)
    return tuple(out)


class DirectRelay:
    """The stream of a direct call: every choice's text and log-probabilities."""

    def __init__(self, chunks: Chunks, node: str = "answer") -> None:
        self.chunks = chunks
        self.node = node
        self.texts: dict[int, AppendOnlyText] = {}

    def wants(self, event: object) -> bool:
        return isinstance(event, TextDelta | StreamReset) and event.node == self.node

    def feed(self, event: TextDelta | StreamReset) -> bytes:
        if isinstance(event, StreamReset):
            # The attempt starts over: every choice's text with it.
            for text in self.texts.values():
                text.withdraw(len(text.current))
            return b""
        text = self.texts.setdefault(event.index, AppendOnlyText())
        released = text.add(event.text)
        if not released:
            return b""
        logprobs = _released_logprobs(event.text, released, event.logprobs)
        return self.chunks.text(event.index, released, logprobs_to_wire(logprobs))

    def finish(self, completion: Completion) -> bytes:
        """The rest of every choice, its tool calls whole, and its finish reason."""
        out = []
        for choice in completion.choices:
            text = self.texts.setdefault(choice.index, AppendOnlyText())
            rest, whole = text.finish(choice.text)
            if not whole:
                raise Diverged(
                    f"choice {choice.index}: the upstream stream broke after part of it was "
                    "sent, and its retry wrote different text; ask again"
                )
            if rest:
                out.append(self.chunks.text(choice.index, rest))
            if choice.tool_calls:
                calls = [
                    {"index": i, **call}
                    for i, call in enumerate(tool_calls_to_wire(choice.tool_calls))
                ]
                out.append(
                    self.chunks.choices(
                        [
                            {
                                "index": choice.index,
                                "delta": {"tool_calls": calls},
                                "finish_reason": None,
                            }
                        ]
                    )
                )
            reason = choice.finish_reason or ("tool_calls" if choice.tool_calls else "stop")
            out.append(self.chunks.finish(choice.index, reason))
        return b"".join(out)


class AnswerRelay:
    """The stream of a strategy: its answer in reading order, cut at stop sequences."""

    def __init__(self, chunks: Chunks, stops: tuple[str, ...]) -> None:
        self.chunks = chunks
        self.text = AppendOnlyText(stops)

    @staticmethod
    def wants(event: object) -> bool:
        return isinstance(event, AnswerDelta | AnswerReset)

    def feed(self, event: AnswerDelta | AnswerReset) -> bytes:
        released = self.text.feed(event)
        return self.chunks.text(0, released) if released else b""

    def finish(self, answer: Answer, **extra: Any) -> bytes:
        rest, whole = self.text.finish(answer.text)
        if not whole:
            raise Diverged(
                "a retried call wrote different text after part of the answer was sent; ask again"
            )
        out = self.chunks.text(0, rest) if rest else b""
        return out + self.chunks.finish(0, finish_reason(answer, self.text), **extra)


def finish_reason(answer: Answer, text: AppendOnlyText) -> str:
    _, stopped = text.cut(answer.text)
    if stopped:
        return "stop"
    reason = answer.details.get("finish_reason")
    return reason if isinstance(reason, str) and reason else "stop"


def response_body(
    ident: str,
    created: int,
    model: str,
    answer: Answer,
    completion: Completion | None,
    stops: tuple[str, ...],
    info: dict[str, Any],
) -> dict[str, Any]:
    """The non-streamed response: a direct call's every choice, or a strategy's answer."""
    if completion is not None:
        choices = []
        for choice in completion.choices:
            wire = choice_to_wire(choice)
            wire["logprobs"] = logprobs_to_wire(choice.logprobs)
            choices.append(wire)
        model = completion.model or model
    else:
        cutter = AppendOnlyText(stops)
        text, _ = cutter.cut(answer.text)
        choices = [
            {
                "index": 0,
                "message": message_to_wire(Message("assistant", text)),
                "finish_reason": finish_reason(answer, cutter),
                "logprobs": None,
            }
        ]
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_to_wire(answer.usage),
        "sotflow": info,
    }
