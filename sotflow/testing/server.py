"""A loopback OpenAI-compatible server with paced tokens and injected faults.

Run it as ``python -m sotflow.testing --port 0 --ttft 0.25 --tps 50``; it prints
``listening on http://127.0.0.1:PORT/v1`` once ready. Control endpoints (JSON):

- ``POST /_control/faults`` ``{"faults": [Fault, ...]}``: queue faults for coming requests
- ``POST /_control/config`` ``{"ttft": s, "tps": n, "fault_rate": p, ...}``: change pacing
- ``GET /_control/stats``: requests, in flight (now and peak), disconnects, statuses
- ``POST /_control/reset``: drop queued faults and zero the counters

Replies are produced by a *responder*, a function of the request body that returns
the reply text; the default writes deterministic filler of ``max_tokens`` words (or
``[[tokens=N]]`` when the prompt says so; ``[[echo]]`` echoes the last message). A
token is one word; a streamed chunk carries one token. Whatever the responder, a
prompt that begins ``Count from 1 to N`` is answered by counting, continuing a
prefilled count where the server honours prefill, as a real model would (clients use
this to check that a prefill is really continued).

Settings also make it behave like servers we did not write: ``serial`` serves one
request at a time (others wait), ``interrupt_streams`` then ends a running stream with
``[DONE]`` and no finish reason when another request arrives (llama-cpp-python's
default), and ``prefill``, ``n`` and ``stream_usage`` set to false ignore
``continue_final_message``, ``n`` and ``stream_options.include_usage``.

Requests with ``tools`` or a ``response_format`` are answered in shape whatever the
responder (``sotflow.testing.structured``): a tool call with arguments that fit the
tool's schema, JSON that fits the asked schema, and after a tool result a text reply
that uses it. Tool-call arguments stream in pieces, as OpenAI streams them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

from .structured import ToolCallReply, iter_pieces, structured_reply

__all__ = ["Fault", "ServerConfig", "create_app", "default_responder", "main"]

Responder = Callable[[dict[str, Any], int], str]
"""``responder(body, choice_index) -> reply text``."""

_WORDS = [
    "the",
    "model",
    "writes",
    "clear",
    "points",
    "about",
    "time",
    "energy",
    "focus",
    "habits",
    "cost",
    "risk",
    "plan",
    "team",
    "data",
    "users",
    "speed",
    "quality",
    "trade",
    "offs",
    "context",
    "examples",
    "evidence",
    "summary",
    "next",
    "steps",
]


@dataclass
class Fault:
    """One injected failure for one coming request (``times`` requests in all).

    kinds: ``status`` (an error status with optional retry headers and error code),
    ``drop`` (a stream that breaks after ``after_tokens`` tokens), ``truncate`` (a
    stream that ends cleanly but without finishing), ``malformed`` (invalid JSON
    body, or a bad stream event after ``after_tokens``), ``hang`` (never answers),
    ``delay`` (answers ``delay_s`` late). ``match`` limits it to requests whose last
    message contains that text. ``message`` replaces a ``status`` fault's error message;
    ``{key}`` in it becomes the bearer key the request carried, as careless servers
    echo it (tests use this to check that sotflow never repeats a key).
    """

    kind: str = "status"
    status: int = 500
    code: str | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    should_retry: str | None = None
    after_tokens: int = 0
    delay_s: float = 0.0
    match: str | None = None
    times: int = 1
    message: str | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Fault:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class ServerConfig:
    ttft: float = 0.0
    """Seconds before the first token."""
    tps: float = 0.0
    """Tokens per second per request; 0 means as fast as possible."""
    fault_rate: float = 0.0
    """Probability that a request without a queued fault gets a random one."""
    fault_seed: int = 0
    api_key: str | None = None
    model: str = "loopback"
    serial: bool = False
    """Serve one request at a time; the others wait their turn."""
    interrupt_streams: bool = False
    """With ``serial``: end a running stream (``[DONE]``, no finish reason) when another
    request is waiting."""
    prefill: bool = True
    """Honour ``continue_final_message``; when false, a final assistant message is taken
    as an earlier turn and a fresh reply written."""
    n: bool = True
    """Honour ``n``; when false, always one choice."""
    stream_usage: bool = True
    """Send usage at the end of a stream when ``stream_options.include_usage`` asks."""


@dataclass
class _Stats:
    requests: int = 0
    completed: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    disconnects: int = 0
    faults: int = 0
    streams: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["statuses"] = {str(k): v for k, v in self.statuses.items()}
        return data


def _last_message(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    if not messages:
        return ""
    if body.get("continue_final_message") and len(messages) > 1:
        return str(messages[-2].get("content") or "")
    return str(messages[-1].get("content") or "")


def default_responder(body: dict[str, Any], index: int) -> str:
    """Deterministic filler: ``[[tokens=N]]`` words, else ``max_tokens`` (cap 64)."""
    prompt = _last_message(body)
    if "[[echo]]" in prompt:
        return prompt.replace("[[echo]]", "").strip()
    count = None
    marker = prompt.find("[[tokens=")
    if marker >= 0:
        end = prompt.find("]]", marker)
        try:
            count = int(prompt[marker + 9 : end])
        except ValueError:
            count = None
    if count is None:
        count = min(int(body.get("max_tokens") or 32), 64)
    seed = int.from_bytes(hashlib.blake2b(f"{prompt}|{index}".encode(), digest_size=4).digest())
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(count))


_COUNT = re.compile(r"\s*Count from 1 to (\d+)", re.IGNORECASE)


def count_reply(body: dict[str, Any], prefill: bool) -> str | None:
    """A counting prompt's reply: ``1, 2, ..., N``, or the rest of a prefilled count."""
    messages = body.get("messages") or []
    users = [m for m in messages if m.get("role") == "user"]
    match = _COUNT.match(str(users[-1].get("content") or "")) if users else None
    if match is None:
        return None
    numbers = ", ".join(str(i) for i in range(1, min(int(match.group(1)), 1000) + 1))
    last = messages[-1] if messages else {}
    if prefill and body.get("continue_final_message") and last.get("role") == "assistant":
        start = str(last.get("content") or "")
        if numbers.startswith(start):
            return numbers[len(start) :]
    return numbers


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if text else []


@dataclass
class _Reply:
    tokens: list[str]
    finish: str
    calls: list[tuple[ToolCallReply, list[str]]] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Tokens to pace: the text's, and a call's name and argument pieces."""
        return len(self.tokens) + sum(1 + len(pieces) for _, pieces in self.calls)

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.tokens)}
        if self.calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call, _ in self.calls
            ]
        return message


def _reply(responder: Responder, body: dict[str, Any], index: int) -> _Reply:
    shaped = structured_reply(body)
    if isinstance(shaped, list):
        return _Reply([], "tool_calls", [(c, list(iter_pieces(c.arguments))) for c in shaped])
    tokens, finish = _apply_limits(shaped if shaped is not None else responder(body, index), body)
    return _Reply(tokens, finish)


def _apply_limits(text: str, body: dict[str, Any]) -> tuple[list[str], str]:
    tokens = _tokens(text)
    finish = "stop"
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    if limit is not None and len(tokens) > int(limit):
        tokens, finish = tokens[: int(limit)], "length"
    stops = body.get("stop") or []
    if isinstance(stops, str):
        stops = [stops]
    joined = "".join(tokens)
    for stop in stops:
        cut = joined.find(stop)
        if cut >= 0:
            joined, finish = joined[:cut], "stop"
            tokens = _tokens(joined) if joined else []
    return tokens, finish


class _Server:
    def __init__(self, config: ServerConfig, responder: Responder) -> None:
        self.config = config
        self.responder = responder
        self.faults: list[Fault] = []
        self.stats = _Stats()
        self.rng = random.Random(config.fault_seed)
        self.counter = 0
        self.turn = asyncio.Lock()  # held while a request is served, in serial mode
        self.waiting = 0

    # -- faults ------------------------------------------------------------------------

    def take_fault(self, body: dict[str, Any]) -> Fault | None:
        prompt = _last_message(body)
        for position, fault in enumerate(self.faults):
            if fault.match is None or fault.match in prompt:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[position]
                return fault
        if self.config.fault_rate and self.rng.random() < self.config.fault_rate:
            return self.rng.choice(
                [
                    Fault("status", status=429, retry_after="0.05"),
                    Fault("status", status=500),
                    Fault("status", status=503, retry_after_ms="30"),
                    Fault("drop", after_tokens=2),
                    Fault("malformed"),
                ]
            )
        return None

    def error_response(self, fault: Fault, request: web.Request) -> web.Response:
        headers = {}
        if fault.retry_after is not None:
            headers["retry-after"] = fault.retry_after
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = fault.retry_after_ms
        if fault.should_retry is not None:
            headers["x-should-retry"] = fault.should_retry
        message = f"injected {fault.status}"
        if fault.message is not None:
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            message = fault.message.replace("{key}", key)
        error = {"message": message, "type": "injected", "code": fault.code}
        self.stats.statuses[fault.status] += 1
        return web.json_response({"error": error}, status=fault.status, headers=headers)

    # -- handlers ----------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            return await self._chat(request)
        except (asyncio.CancelledError, ConnectionResetError):
            stats.disconnects += 1
            raise
        finally:
            stats.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        key = self.config.api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            self.stats.statuses[401] += 1
            return web.json_response(
                {
                    "error": {
                        "message": "invalid api key",
                        "type": "auth",
                        "code": "invalid_api_key",
                    }
                },
                status=401,
            )
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ValueError("the body needs a 'messages' list")
        except ValueError as exc:
            self.stats.statuses[400] += 1
            return web.json_response(
                {"error": {"message": f"bad request: {exc}", "type": "invalid_request_error"}},
                status=400,
            )
        fault = self.take_fault(body)
        if fault is not None:
            self.stats.faults += 1
            if fault.kind == "status":
                return self.error_response(fault, request)
            if fault.kind == "hang":
                await asyncio.sleep(3600)
            if fault.kind == "delay":
                await asyncio.sleep(fault.delay_s)
                fault = None
        if not self.config.serial:
            return await self._answer(request, body, fault)
        self.waiting += 1
        try:
            await self.turn.acquire()
        finally:
            self.waiting -= 1
        try:
            return await self._answer(request, body, fault)
        finally:
            self.turn.release()

    async def _answer(
        self, request: web.Request, body: dict[str, Any], fault: Fault | None
    ) -> web.StreamResponse:
        if not self.config.prefill:
            body = {k: v for k, v in body.items() if k != "continue_final_message"}
        n = int(body.get("n") or 1) if self.config.n else 1
        counted = count_reply(body, self.config.prefill)
        replies = [
            _Reply(*_apply_limits(counted, body))
            if counted is not None
            else _reply(self.responder, body, i)
            for i in range(n)
        ]
        self.counter += 1
        cid = f"chatcmpl-{self.counter}"
        if body.get("stream"):
            return await self.stream(request, body, replies, cid, fault)
        if fault is not None and fault.kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("injected drop")
        if fault is not None and fault.kind in ("malformed", "truncate"):
            self.stats.statuses[200] += 1
            return web.Response(
                body=b'{"id": "broken", "choices": [', content_type="application/json"
            )
        longest = max(r.length for r in replies)
        await self.pace(longest)
        choices = []
        for index, reply in enumerate(replies):
            choice: dict[str, Any] = {
                "index": index,
                "message": reply.message(),
                "finish_reason": reply.finish,
            }
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [_logprob(t) for t in reply.tokens]}
            choices.append(choice)
        payload = {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.config.model,
            "choices": choices,
            "usage": self.usage(body, replies),
        }
        self.stats.statuses[200] += 1
        self.stats.completed += 1
        return web.Response(body=json.dumps(payload).encode(), content_type="application/json")

    def usage(self, body: dict[str, Any], replies: list[_Reply]) -> dict[str, int]:
        prompt = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        completion = sum(r.length for r in replies)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def pace(self, tokens: int) -> None:
        delay = self.config.ttft + (tokens / self.config.tps if self.config.tps else 0.0)
        if delay:
            await asyncio.sleep(delay)

    async def stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        replies: list[_Reply],
        cid: str,
        fault: Fault | None,
    ) -> web.StreamResponse:
        self.stats.streams += 1
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        self.stats.statuses[200] += 1
        model = json.dumps(body.get("model") or self.config.model)
        head = f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":0,"model":{model},'
        logprobs = bool(body.get("logprobs"))

        def chunk(index: int, token: str | None, finish: str | None, call: Any = None) -> bytes:
            delta = "{}" if token is None else '{"content":' + json.dumps(token) + "}"
            if call is not None:
                delta = json.dumps({"tool_calls": [call]})
            extra = ""
            if logprobs and token is not None:
                extra = ',"logprobs":{"content":[' + json.dumps(_logprob(token)) + "]}"
            reason = "null" if finish is None else json.dumps(finish)
            return (
                f'{head}"choices":[{{"index":{index},"delta":{delta}{extra},'
                f'"finish_reason":{reason}}}]}}\n\n'
            ).encode()

        if self.config.ttft:
            await asyncio.sleep(self.config.ttft)
        pace = 1.0 / self.config.tps if self.config.tps else 0.0
        broken_after = fault.after_tokens if fault is not None else None
        buffer: list[bytes] = []
        pieces = [_stream_pieces(r, chunk, index) for index, r in enumerate(replies)]
        longest = max(len(p) for p in pieces)
        for step in range(longest):
            if broken_after is not None and step >= broken_after:
                break
            if self.config.interrupt_streams and self.waiting and step > 0:
                # As llama-cpp-python does: the waiting request takes over, and this
                # stream ends cleanly, unfinished.
                buffer.append(b"data: [DONE]\n\n")
                await response.write(b"".join(buffer))
                await response.write_eof()
                return response
            for piece in pieces:
                if step < len(piece):
                    buffer.append(piece[step])
            if pace:
                await response.write(b"".join(buffer))
                buffer.clear()
                await asyncio.sleep(pace)
        if fault is not None:
            if buffer:
                await response.write(b"".join(buffer))
            if fault.kind == "malformed":
                await response.write(b"data: {not json\n\n")
            elif fault.kind == "drop":
                # Kill the connection without ending the chunked body: a broken stream.
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("injected drop")
            # "truncate": end the body cleanly, without finish_reason or [DONE].
            await response.write_eof()
            return response
        for index, reply in enumerate(replies):
            buffer.append(chunk(index, None, reply.finish))
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if include_usage and self.config.stream_usage:
            usage = json.dumps(self.usage(body, replies))
            buffer.append(f'{head}"choices":[],"usage":{usage}}}\n\n'.encode())
        buffer.append(b"data: [DONE]\n\n")
        await response.write(b"".join(buffer))
        await response.write_eof()
        self.stats.completed += 1
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.config.model, "object": "model"}]}
        )

    # -- control -----------------------------------------------------------------------

    async def control_faults(self, request: web.Request) -> web.Response:
        data = await request.json()
        try:
            self.faults.extend(Fault.of(f) for f in data.get("faults", []))
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"queued": len(self.faults)})

    async def control_config(self, request: web.Request) -> web.Response:
        data = await request.json()
        for name, value in data.items():
            if not hasattr(self.config, name):
                return web.json_response({"error": f"unknown setting {name!r}"}, status=400)
            setattr(self.config, name, value)
        if "fault_seed" in data:
            self.rng = random.Random(self.config.fault_seed)
        return web.json_response(asdict(self.config))

    async def control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    async def control_reset(self, request: web.Request) -> web.Response:
        in_flight = self.stats.in_flight
        self.stats = _Stats(in_flight=in_flight, peak_in_flight=in_flight)
        self.faults.clear()
        self.rng = random.Random(self.config.fault_seed)
        return web.json_response({"ok": True})


def _stream_pieces(reply: _Reply, chunk: Callable[..., bytes], index: int) -> list[bytes]:
    """The chunks of one choice, one token each; a tool call opens with its id and name."""
    out = [chunk(index, token, None) for token in reply.tokens]
    for position, (call, arguments) in enumerate(reply.calls):
        head = {
            "index": position,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        out.append(chunk(index, None, None, head))
        for piece in arguments:
            out.append(
                chunk(index, None, None, {"index": position, "function": {"arguments": piece}})
            )
    return out


def _logprob(token: str) -> dict[str, Any]:
    value = -0.05 * (1 + len(token) % 7)
    return {"token": token, "logprob": value, "top_logprobs": []}


# Where an embedding program finds the server's state (faults, counters) on the app; a
# typed key, since plain string keys make aiohttp warn.
SERVER_KEY = web.AppKey("server", _Server)


def create_app(
    config: ServerConfig | None = None, responder: Responder | None = None
) -> web.Application:
    server = _Server(config or ServerConfig(), responder or default_responder)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/_control/faults", server.control_faults)
    app.router.add_post("/_control/config", server.control_config)
    app.router.add_get("/_control/stats", server.control_stats)
    app.router.add_post("/_control/reset", server.control_reset)
    app[SERVER_KEY] = server
    return app


def _load_responder(spec: str | None) -> Responder | None:
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--responder must look like module:function, got {spec!r}")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


async def _serve(config: ServerConfig, responder: Responder | None, host: str, port: int) -> None:
    # Cancel handlers when the client goes away, so "in flight" means what it says.
    runner = web.AppRunner(
        create_app(config, responder), handler_cancellation=True, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on http://{host}:{bound}/v1", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sotflow.testing",
        description="Loopback OpenAI-compatible server with paced tokens and injected faults.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds to the first token")
    parser.add_argument(
        "--tps", type=float, default=0.0, help="tokens/s per request (0: no pacing)"
    )
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--responder", default=None, help="module:function producing replies")
    args = parser.parse_args(argv)
    config = ServerConfig(
        ttft=args.ttft,
        tps=args.tps,
        fault_rate=args.fault_rate,
        fault_seed=args.fault_seed,
        api_key=args.api_key,
    )
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_serve(config, _load_responder(args.responder), args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
