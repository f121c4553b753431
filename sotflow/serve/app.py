"""The aiohttp application: checks, routing to a plan, and the response (whole or streamed).

One engine per served model, all over the one backend and its one limiter, so the
in-flight, requests-per-minute and tokens-per-minute caps hold across every request
the server answers. The limiter is fair when the server made it (``sotflow serve``):
each request's calls belong to its client (the key it presents, else its address)
and the clients' calls are served in turn.

A streamed response opens once there is something to say (the first text, or the end
of the run): until then a failure still gets its own HTTP status. A client that goes
away cancels its run (the handler is cancelled, or its next write fails), and with it
every call the run has in flight.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiohttp import web

from ..backends.base import Backend, ModelView
from ..engine import Engine
from ..limits import client_scope
from ..retry import RetryPolicy
from ..types import Answer
from .catalog import Catalog, ModelNotFound, Target
from .errors import Failure, Redactor, failure_of, http_failure
from .parse import BadRequest, ChatCall, loads, parse_chat
from .plan import Plan, Planner
from .relay import AnswerRelay, Chunks, DirectRelay, Diverged, response_body

__all__ = ["ServeSettings", "create_app"]

log = logging.getLogger("sotflow.serve")

STRATEGY_HEADER = "x-sotflow-strategy"
RUN_ID_HEADER = "x-sotflow-run-id"


@dataclass(frozen=True)
class ServeSettings:
    """How the server answers; ``sotflow serve``'s flags."""

    api_keys: tuple[str, ...] = ()
    """Keys a client must present (``Authorization: Bearer KEY``); none: no check."""
    models: tuple[str, ...] | None = None
    """The models served. ``None``: the backend's own model, or, for a backend that
    passes requests on (an upstream API), any name the upstream takes."""
    max_body_bytes: int = 8 * 1024 * 1024
    timeout: float | None = 120.0
    """Seconds per attempt of one model call."""
    request_timeout: float | None = 600.0
    """Seconds for a whole request, every call of its strategy and retry included."""
    max_retries: int = 4
    router: str = "rules"
    """The router of ``auto/<model>``: ``rules`` or ``embedding``."""
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """More text never to repeat (the upstream's key)."""

    def __post_init__(self) -> None:
        from ..errors import ConfigurationError

        if self.max_body_bytes < 1024:
            raise ConfigurationError(
                f"max_body_bytes must be at least 1024, got {self.max_body_bytes}"
            )
        for name in ("timeout", "request_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigurationError(f"{name} must be positive seconds or None, got {value!r}")
        if self.router not in ("rules", "embedding"):
            raise ConfigurationError(f"router must be 'rules' or 'embedding', got {self.router!r}")
        if any(not key for key in self.api_keys):
            raise ConfigurationError("an API key cannot be empty")

    def __repr__(self) -> str:
        # Keys never show, not even in a repr.
        return (
            f"ServeSettings(api_keys={len(self.api_keys)} key(s), models={self.models!r}, "
            f"max_body_bytes={self.max_body_bytes}, timeout={self.timeout}, "
            f"request_timeout={self.request_timeout}, router={self.router!r})"
        )


class _Done:
    __slots__ = ("answer",)

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _bearer(request: web.Request) -> str:
    value = request.headers.get("Authorization", "")
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def client_of(request: web.Request) -> str:
    """Whose request this is, for fairness: the key it presents, else its address."""
    key = _bearer(request)
    if key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"addr:{request.remote or '?'}"


class _Server:
    def __init__(self, backend: Backend, settings: ServeSettings) -> None:
        self.backend = backend
        self.settings = settings
        tools = backend.capabilities.tools
        models = settings.models
        if models is None and not tools:
            models = (backend.model,)
        self.catalog = Catalog(models)
        self.planner = Planner(tools=tools, router=settings.router)
        self.redact = Redactor(
            [*settings.api_keys, *settings.secrets, getattr(backend, "_secret", None)]
        )
        self.keys = tuple(key.encode() for key in settings.api_keys)
        self.retry = RetryPolicy(max_retries=settings.max_retries)
        self._engines: dict[str, Engine] = {}

    def engine(self, model: str) -> Engine:
        engine = self._engines.get(model)
        if engine is None:
            view = self.backend if model == self.backend.model else ModelView(self.backend, model)
            engine = Engine(view, retry=self.retry, timeout=self.settings.timeout)
            if len(self._engines) < 1024:
                self._engines[model] = engine
        return engine

    def authorised(self, request: web.Request) -> bool:
        if not self.keys:
            return True
        given = _bearer(request).encode()
        # Every key compared, each in constant time: neither how much of a key matched
        # nor which key it was shows in the time taken.
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given, key)
        return ok

    def deadline(self, plan: Plan) -> float | None:
        limits = [t for t in (self.settings.request_timeout, plan.deadline) if t is not None]
        return min(limits) if limits else None

    # -- handlers --------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        call = parse_chat(loads(await request.read()))
        target = self.catalog.resolve(call.model)
        plan = self.planner.plan(call, target)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        with client_scope(client_of(request)):
            if call.stream:
                return await self._stream(request, call, target, plan, ident)
            return await self._whole(call, target, plan, ident)

    def _headers(self, strategy: str, ident: str) -> dict[str, str]:
        return {STRATEGY_HEADER: strategy, RUN_ID_HEADER: ident}

    def _info(self, answer: Answer, ident: str) -> dict[str, Any]:
        trace = answer.trace
        return {
            "strategy": answer.strategy,
            "run_id": ident,
            "latency_s": round(answer.latency_s, 4),
            "calls": len(trace.calls) if trace else 0,
            "warnings": [self.redact(w) for w in (trace.warnings if trace else ())],
        }

    async def _whole(self, call: ChatCall, target: Target, plan: Plan, ident: str) -> web.Response:
        engine = self.engine(target.model)
        try:
            answer = await engine.run(
                plan.strategy,
                plan.question,
                deadline=self.deadline(plan),
                budget=plan.budget,
                run_id=ident,
            )
        except Exception as exc:
            return self._failed(exc, plan.label, ident)
        completion = answer.details.get("completion") if plan.direct else None
        body = response_body(
            ident,
            int(time.time()),
            target.name,
            answer,
            completion,
            plan.stops,
            self._info(answer, ident),
        )
        return web.json_response(body, headers=self._headers(answer.strategy, ident))

    def _failed(self, exc: BaseException, strategy: str, ident: str) -> web.Response:
        failure = failure_of(exc, self.redact)
        if failure.status >= 500:
            # An internal error is a bug of ours: its traceback belongs in the log.
            log.warning(
                "run %s failed: %s %s",
                ident,
                failure.status,
                failure.message,
                exc_info=exc if failure.status == 500 else None,
            )
        return failure.response(self._headers(strategy, ident))

    async def _stream(
        self, request: web.Request, call: ChatCall, target: Target, plan: Plan, ident: str
    ) -> web.StreamResponse:
        engine = self.engine(target.model)
        chunks = Chunks(ident, int(time.time()), target.name)
        relay: DirectRelay | AnswerRelay = (
            DirectRelay(chunks) if plan.direct else AnswerRelay(chunks, plan.stops)
        )
        send, receive = anyio.create_memory_object_stream[Any](math.inf)

        def sink(event: Any) -> None:
            if relay.wants(event):
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    send.send_nowait(event)

        async def work() -> None:
            with send:
                try:
                    answer = await engine.run(
                        plan.strategy,
                        plan.question,
                        deadline=self.deadline(plan),
                        budget=plan.budget,
                        on_event=sink,
                        run_id=ident,
                    )
                except Exception as exc:
                    item: Any = _Failed(exc)
                else:
                    item = _Done(answer)
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    send.send_nowait(item)

        response: web.StreamResponse | None = None
        choices = call.request.params.n if plan.direct else 1
        try:
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(work)
                async for item in receive:
                    if isinstance(item, _Failed) and response is None:
                        return self._failed(item.error, plan.answered_by, ident)
                    if response is None:
                        response = web.StreamResponse(
                            headers={
                                "Content-Type": "text/event-stream",
                                "Cache-Control": "no-cache",
                                **self._headers(plan.answered_by, ident),
                            }
                        )
                        await response.prepare(request)
                        await response.write(chunks.roles(choices))
                    if isinstance(item, _Failed):
                        await self._write_failure(response, item.error, ident)
                        break
                    if isinstance(item, _Done):
                        await response.write(
                            self._ending(item.answer, call, plan, relay, chunks, ident)
                        )
                        break
                    data = relay.feed(item)
                    if data:
                        await response.write(data)
        except ConnectionResetError:
            # The client went away mid-stream; leaving the task group cancelled its run.
            return response or web.Response(status=499)
        assert response is not None
        with suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _ending(
        self,
        answer: Answer,
        call: ChatCall,
        plan: Plan,
        relay: DirectRelay | AnswerRelay,
        chunks: Chunks,
        ident: str,
    ) -> bytes:
        try:
            if isinstance(relay, DirectRelay):
                data = relay.finish(answer.details["completion"])
            else:
                data = relay.finish(answer)
        except Diverged as exc:
            log.warning("run %s: %s", ident, exc)
            return Chunks.error(str(exc), "upstream_error", "stream_diverged") + Chunks.DONE
        if call.include_usage:
            data += chunks.choices([], usage=_usage(answer), sotflow=self._info(answer, ident))
        return data + Chunks.DONE

    async def _write_failure(
        self, response: web.StreamResponse, error: BaseException, ident: str
    ) -> None:
        # The status line is gone; say it in-band, as OpenAI and vLLM do.
        failure = failure_of(error, self.redact)
        log.warning("run %s failed mid-stream: %s %s", ident, failure.status, failure.message)
        await response.write(
            Chunks.error(failure.message, failure.kind, failure.code) + Chunks.DONE
        )

    async def models(self, request: web.Request) -> web.Response:
        data = [self.catalog.entry(name) for name in self.catalog.names()]
        return web.json_response({"object": "list", "data": data})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        self.catalog.resolve(name)
        return web.json_response(self.catalog.entry(name))


def _usage(answer: Answer) -> dict[str, int]:
    from ..openai_wire import usage_to_wire

    return usage_to_wire(answer.usage)


_SERVER = web.AppKey("sotflow_server", _Server)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _middlewares(server: _Server) -> Sequence[Any]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if not server.authorised(request):
                return Failure(
                    401,
                    "Incorrect API key provided. Send the key this server was started with "
                    "as 'Authorization: Bearer KEY'.",
                    "invalid_request_error",
                    "invalid_api_key",
                ).response()
            return await handler(request)
        except (BadRequest, ModelNotFound) as exc:
            return failure_of(exc, server.redact).response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return http_failure(exc, server.settings.max_body_bytes).response()
        except (ConnectionResetError, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:
            failure = failure_of(exc, server.redact)
            log.warning("%s %s failed: %s", request.method, request.path, failure.message)
            return failure.response()

    return [errors]


def create_app(backend: Backend, settings: ServeSettings | None = None) -> web.Application:
    """An aiohttp application serving ``backend`` under ``/v1`` (see ``sotflow.serve``).

    Run it with ``handler_cancellation=True`` (``serving`` and ``serve`` do), so that a
    client that disconnects cancels its work at once.
    """
    settings = settings or ServeSettings()
    server = _Server(backend, settings)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=_middlewares(server))
    app[_SERVER] = server
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/v1/models/{model:.+}", server.model)
    return app
