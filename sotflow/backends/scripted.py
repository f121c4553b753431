"""A backend that answers from a script: for tests, examples and offline demos.

Replies come from a list (consumed in order) or from a function of the request. Each
reply can be delayed, streamed token by token at a set pace, cut by ``max_tokens`` and
stop strings like a real model, or replaced by a failure, optionally after part of a
stream, so every engine path can be exercised without a network.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from ..errors import ConfigurationError
from ..types import Choice, Completion, Delta, Request, TokenLogprob, Usage
from .base import BaseBackend, Capabilities, ServerProfile, StreamItem, check_text_request

__all__ = ["Fail", "Reply", "ScriptedBackend", "split_tokens"]

_TOKEN = re.compile(r"\s*\S+|\s+")


def split_tokens(text: str) -> list[str]:
    """Words with their leading whitespace: joined back they give ``text`` exactly."""
    return _TOKEN.findall(text)


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted completion. ``text`` may be a list: one text per sample (``n``)."""

    text: str | Sequence[str]
    delay_s: float | None = None
    token_delay_s: float | None = None
    finish_reason: str = "stop"
    logprob: float | None = None
    """Log-probability given to every token (mean log-probability of the sample)."""


@dataclass(frozen=True, slots=True)
class Fail:
    """A scripted failure, raised after ``delay_s`` or after ``after_tokens`` streamed."""

    error: BaseException
    delay_s: float = 0.0
    after_tokens: int | None = None


ScriptItem = str | Reply | Fail | BaseException
Script = Sequence[ScriptItem] | Callable[[Request], ScriptItem | Awaitable[ScriptItem]]


class ScriptedBackend(BaseBackend):
    """Answers from a script; counts calls and concurrency for tests."""

    name = "scripted"

    def __init__(
        self,
        script: Script,
        *,
        model: str = "scripted",
        delay_s: float = 0.0,
        token_delay_s: float = 0.0,
        cycle: bool = False,
        prefill: bool = True,
        logprobs: bool = True,
        max_concurrency: int | None = 64,
        rpm: int | None = None,
        tpm: int | None = None,
        profile: ServerProfile | None = None,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency, rpm=rpm, tpm=tpm)
        # What strategies are told about the "server" (e.g. that it serialises), so the
        # choices they make from a profile can be tested without one.
        self.known_profile = profile
        if not callable(script):
            script = list(script)
        self.script = script
        self.model = model
        self.delay_s = delay_s
        self.token_delay_s = token_delay_s
        self.cycle = cycle
        self.capabilities = Capabilities(prefill=prefill, logprobs=logprobs, n=True)
        self.requests: list[Request] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.cancelled = 0
        self.completed = 0
        self._position = 0

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def _next(self, request: Request) -> ScriptItem:
        check_text_request(request, "ScriptedBackend")
        self.requests.append(request)
        if callable(self.script):
            item = self.script(request)
            if inspect.isawaitable(item):
                item = await item
            return item
        if self._position >= len(self.script):
            if not self.cycle or not self.script:
                raise ConfigurationError(
                    f"ScriptedBackend ran out of replies after {len(self.script)} calls; "
                    "add more replies or pass cycle=True"
                )
            self._position = 0
        item = self.script[self._position]
        self._position += 1
        return item

    def _texts(self, reply: Reply, request: Request) -> list[str]:
        texts = [reply.text] if isinstance(reply.text, str) else list(reply.text)
        n = request.params.n
        return [texts[i % len(texts)] for i in range(n)]

    def _choice(self, index: int, text: str, reply: Reply, request: Request) -> Choice:
        tokens = split_tokens(text)
        finish = reply.finish_reason
        limit = request.params.max_tokens
        if limit is not None and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        out = "".join(tokens)
        for stop in request.params.stop:
            cut = out.find(stop)
            if cut >= 0:
                out, finish = out[:cut], "stop"
                tokens = split_tokens(out)
        logprobs = None
        if request.params.logprobs:
            lp = reply.logprob if reply.logprob is not None else -0.5
            logprobs = tuple(TokenLogprob(t, lp) for t in tokens)
        return Choice(index=index, text=out, finish_reason=finish, logprobs=logprobs)

    def _completion(self, reply: Reply, request: Request) -> Completion:
        choices = tuple(
            self._choice(i, t, reply, request) for i, t in enumerate(self._texts(reply, request))
        )
        prompt = sum(len(split_tokens(m.content)) for m in request.messages)
        completion = sum(len(split_tokens(c.text)) for c in choices)
        model = request.model or self.model  # a script answers for whichever model is asked
        return Completion(choices=choices, usage=Usage.of(prompt, completion), model=model)

    @staticmethod
    def _as_reply(item: ScriptItem) -> Reply | Fail:
        if isinstance(item, str):
            return Reply(item)
        if isinstance(item, BaseException):
            return Fail(item)
        if isinstance(item, Reply | Fail):
            return item
        raise ConfigurationError(
            f"a script item must be str, Reply, Fail or an exception: {item!r}"
        )

    def _enter(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    async def complete(self, request: Request) -> Completion:
        self._enter()
        try:
            item = self._as_reply(await self._next(request))
            if isinstance(item, Fail):
                await anyio.sleep(item.delay_s)
                raise item.error
            delay = self.delay_s if item.delay_s is None else item.delay_s
            pace = self.token_delay_s if item.token_delay_s is None else item.token_delay_s
            completion = self._completion(item, request)
            longest = max(len(split_tokens(c.text)) for c in completion.choices)
            await anyio.sleep(delay + pace * longest)
            self.completed += 1
            return completion
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def stream(self, request: Request) -> AsyncIterator[StreamItem]:
        self._enter()
        try:
            item = self._as_reply(await self._next(request))
            if isinstance(item, Fail) and item.after_tokens is None:
                await anyio.sleep(item.delay_s)
                raise item.error
            if isinstance(item, Fail):
                reply = Reply(" ".join(f"t{i}" for i in range(item.after_tokens or 0)))
                fail: Fail | None = item
            else:
                reply, fail = item, None
            delay = self.delay_s if reply.delay_s is None else reply.delay_s
            pace = self.token_delay_s if reply.token_delay_s is None else reply.token_delay_s
            completion = self._completion(reply, request)
            await anyio.sleep(delay)
            pieces = [split_tokens(c.text) for c in completion.choices]
            for step in range(max(len(p) for p in pieces)):
                if pace:
                    await anyio.sleep(pace)
                for index, tokens in enumerate(pieces):
                    if step < len(tokens):
                        yield Delta(tokens[step], index)
            if fail is not None:
                raise fail.error
            self.completed += 1
            yield completion
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
