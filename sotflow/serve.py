"""An OpenAI-compatible HTTP server over any sotflow backend.

    POST /v1/chat/completions   plain JSON, or server-sent events with "stream": true
    GET  /v1/models             the backend's one model

Beyond OpenAI's fields it takes ``top_k``, ``min_p`` and ``repetition_penalty``, and
the vLLM convention for prefill: ``"continue_final_message": true`` (with
``"add_generation_prompt": false``) continues the last message, which must be the
assistant's, instead of starting a new one. Errors come back as
``{"error": {"message", "type", "code"}}``: 400 for a bad request, 500 for a failure.

Run one with ``python -m sotflow.serve --model smollm2 --port 8000``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aiohttp import web

from .backends.base import Backend
from .errors import BackendError, ConfigurationError, ProviderError
from .types import Choice, Completion, Delta, Message, Request, SamplingParams, TokenLogprob

__all__ = ["create_app", "main", "serve", "serving"]

_BACKEND = web.AppKey("backend", Backend)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": code}}
    return web.json_response(body, status=status)


# ---------------------------------------------------------------------- request parsing
def _content(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        parts = []
        for part in value:
            if (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                parts.append(part["text"])
            else:
                raise _BadRequest(
                    f"messages[{index}].content: only text parts are supported", "messages"
                )
        return "".join(parts)
    raise _BadRequest(
        f"messages[{index}].content must be a string or a list of text parts", "messages"
    )


def _messages(body: dict[str, Any]) -> list[Message]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _BadRequest("'messages' must be a non-empty list", "messages")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _BadRequest(
                f"messages[{i}] must be an object with 'role' and 'content'", "messages"
            )
        role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise _BadRequest(
                f"messages[{i}].role must be one of {sorted(_ROLES)}, got {item.get('role')!r}",
                "messages",
            )
        out.append(Message(role, _content(item.get("content"), i)))  # type: ignore[arg-type]
    return out


def _number(
    body: dict[str, Any], name: str, kind: type, low: float | None = None, high: float | None = None
) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise _BadRequest(f"'{name}' must be {'an integer' if kind is int else 'a number'}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _BadRequest(f"'{name}' must be {bounds}, got {value}", name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise _BadRequest("'stop' must be a string or a list of strings", "stop")


def parse_request(body: Any) -> tuple[Request, bool, bool]:
    """Turn a chat-completions body into a ``Request``; also ``stream`` and ``include_usage``."""
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    messages = _messages(body)
    max_tokens = _number(body, "max_completion_tokens", int, 1)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 1)
    top_k = _number(body, "top_k", int, -1)
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise _BadRequest("'logprobs' must be a boolean", "logprobs")
    top_logprobs = _number(body, "top_logprobs", int, 0, 20)
    if top_logprobs and not logprobs:
        raise _BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", float, 0, 2),
        top_p=_number(body, "top_p", float, 0, 1),
        top_k=top_k if top_k and top_k > 0 else None,
        min_p=_number(body, "min_p", float, 0, 1),
        repetition_penalty=_number(body, "repetition_penalty", float, 1e-6),
        stop=_stop(body),
        n=_number(body, "n", int, 1, 128) or 1,
        seed=_number(body, "seed", int),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
    prefill = None
    if body.get("continue_final_message"):
        if body.get("add_generation_prompt") is True:
            raise _BadRequest(
                "'continue_final_message' and 'add_generation_prompt' cannot both be true",
                "continue_final_message",
            )
        if messages[-1].role != "assistant":
            raise _BadRequest(
                "'continue_final_message' needs the last message to be the assistant's",
                "continue_final_message",
            )
        prefill = messages.pop().content
        if not messages:
            raise _BadRequest("there must be a message before the continued assistant message")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _BadRequest("'stream_options' must be an object", "stream_options")
    return Request(tuple(messages), params, prefill), stream, bool(options.get("include_usage"))


# ---------------------------------------------------------------------- responses
def _logprobs(items: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
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


def _usage(completion: Completion) -> dict[str, int]:
    u = completion.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def _choice(choice: Choice) -> dict[str, Any]:
    return {
        "index": choice.index,
        "message": {"role": "assistant", "content": choice.text},
        "finish_reason": choice.finish_reason or "stop",
        "logprobs": _logprobs(choice.logprobs),
    }


def _status_for(exc: BaseException) -> tuple[int, str, str | None]:
    if isinstance(exc, ProviderError):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return exc.status_code, kind, exc.code
    if isinstance(exc, ConfigurationError | ValueError):
        return 400, "invalid_request_error", None
    return 500, "server_error", type(exc).__name__


async def _models(request: web.Request) -> web.Response:
    backend = request.app[_BACKEND]
    model = {
        "id": backend.model or backend.name,
        "object": "model",
        "created": 0,
        "owned_by": "sotflow",
    }
    return web.json_response({"object": "list", "data": [model]})


async def _chat(request: web.Request) -> web.StreamResponse:
    backend = request.app[_BACKEND]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the request body is not valid JSON", "invalid_request_error")
    try:
        req, stream, include_usage = parse_request(body)
    except _BadRequest as exc:
        return _error(400, str(exc), "invalid_request_error", exc.param)
    except ValueError as exc:
        return _error(400, str(exc), "invalid_request_error")
    model = backend.model or backend.name
    created = int(time.time())
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    if not stream:
        try:
            completion = await backend.complete(req)
        except (BackendError, ConfigurationError, ValueError) as exc:
            status, kind, code = _status_for(exc)
            return _error(status, str(exc), kind, code)
        except Exception as exc:
            return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": completion.model or model,
                "choices": [_choice(c) for c in completion.choices],
                "usage": _usage(completion),
            }
        )
    return await _stream(request, backend, req, include_usage, ident, created, model)


async def _stream(
    request: web.Request,
    backend: Backend,
    req: Request,
    include_usage: bool,
    ident: str,
    created: int,
    model: str,
) -> web.StreamResponse:
    items: AsyncIterator[Any] = backend.stream(req).__aiter__()
    # Pull the first item before answering, so that a bad request still gets a 400.
    try:
        first = await items.__anext__()
    except StopAsyncIteration:
        return _error(500, "the backend's stream ended without a completion", "server_error")
    except Exception as exc:
        status, kind, code = _status_for(exc)
        return _error(status, str(exc), kind, code)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    for index in range(req.params.n):
        role = {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": None,
        }
        await response.write(chunk([role]))
    item: Any = first
    try:
        while True:
            if isinstance(item, Delta):
                delta = {
                    "index": item.index,
                    "delta": {"content": item.text},
                    "finish_reason": None,
                }
                await response.write(chunk([delta]))
            elif isinstance(item, Completion):
                for c in item.choices:
                    end = {
                        "index": c.index,
                        "delta": {},
                        "finish_reason": c.finish_reason or "stop",
                        "logprobs": _logprobs(c.logprobs),
                    }
                    await response.write(chunk([end]))
                if include_usage:
                    await response.write(chunk([], usage=_usage(item)))
                break
            try:
                item = await items.__anext__()
            except StopAsyncIteration:
                break
    except Exception as exc:
        # The status line is gone already; report the failure in-band, as vLLM does.
        status, kind, code = _status_for(exc)
        error = {"error": {"message": str(exc), "type": kind, "code": code}}
        await response.write(f"data: {json.dumps(error)}\n\n".encode())
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def create_app(backend: Backend) -> web.Application:
    """An aiohttp application serving ``backend`` under ``/v1``."""
    app = web.Application()
    app[_BACKEND] = backend
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    return app


@asynccontextmanager
async def serving(backend: Backend, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``backend`` while the block runs; yields the base URL (``http://host:port/v1``).

    ``port=0`` picks a free port.
    """
    runner = web.AppRunner(create_app(backend))
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}/v1"
    finally:
        await runner.cleanup()


async def serve(backend: Backend, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``backend`` until cancelled."""
    async with serving(backend, host, port):
        await anyio.sleep_forever()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options, shared by ``python -m sotflow.serve`` and ``sotflow serve``."""
    # Imported here: the cli package imports this module to build its own parser.
    from .cli.options import add_local_options, positive_int

    parser.add_argument("--model", default="smollm2", help="alias, HF folder, .gguf file or hub id")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=16,
        help="requests decoded together in one batch at most (default 16)",
    )
    add_local_options(parser)
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show other libraries' progress bars and log lines while loading",
    )


def run(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted; 2 on a configuration error."""
    import sys

    from .cli.options import load_local
    from .cli.quiet import hush_third_party, show_third_party

    if args.verbose:
        show_third_party()
    else:
        hush_third_party()
    try:
        backend = load_local(args, args.model, max_batch_size=args.max_batch_size)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {backend.model} on http://{args.host}:{args.port}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve, backend, args.host, args.port)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sotflow.serve",
        description="Serve a local model over an OpenAI-compatible HTTP API.",
    )
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
