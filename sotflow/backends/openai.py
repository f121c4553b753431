"""Any OpenAI-compatible chat-completions API, plain and streamed.

The JSON shapes (a ``Request`` as a body, a body or a stream of chunks as a
``Completion``, tool calls included) are ``sotflow.openai_wire``'s, shared with the
server side. What is provider-specific lives here: how error statuses and their
headers become ``sotflow.errors``, and how the bytes travel, over a ``Transport``
(aiohttp by default, httpx on request) or through a ready ``openai.AsyncOpenAI``
client, whose own retries are turned off: the engine is the one retry layer.

Servers differ in what they really do with a request (see ``ServerProfile``). The
backend measures its server once, when a strategy first asks (``await
backend.profile()``; ``sotflow.backends.probe``), and learns from real replies too: a
stream without usage, fewer choices than ``n``, streams cut off whenever another request
arrives. It adapts: prefill only where the server continues it, ``n`` fanned out into
single calls where it is ignored, one call at a time where the server serialises.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel

from ..errors import (
    APIConnectionError,
    APITimeoutError,
    BackendError,
    ConfigurationError,
    MalformedResponseError,
    ProviderError,
    ServerError,
    StreamInterruptedError,
    error_from_status,
)
from ..limits import Limiter
from ..openai_wire import StreamAssembler, completion_from_wire, request_body
from ..types import Choice, Completion, Delta, Request
from .base import BaseBackend, Capabilities, ServerProfile, StreamItem
from .http import AiohttpTransport, HttpxTransport, Transport
from .probe import ProfileCache, known_profile, probe_server
from .sse import SSEDecoder

__all__ = ["OpenAIBackend", "parse_retry_after", "profile_setting"]

PROFILE_ENV = "SOTFLOW_SERVER_PROFILE"

OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
_USER_AGENT = "sotflow/0.1"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, then ``retry-after``
    (seconds, or an HTTP date). ``None`` when it said nothing usable."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _should_retry(headers: Mapping[str, str]) -> bool | None:
    value = (headers.get("x-should-retry") or "").strip().lower()
    return True if value == "true" else False if value == "false" else None


def _checked_base_url(url: str, source: str) -> str:
    # Without a scheme the HTTP layer only fails at the first call, after every retry,
    # with a message that does not say the URL itself is the problem.
    url = url.strip()
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ConfigurationError(
            f"{source} {url!r} is not an http(s) URL; give the full address of the API, "
            "e.g. http://localhost:8000/v1 or https://api.openai.com/v1"
        )
    return url.rstrip("/")


ProfileSetting = ServerProfile | Literal["probe", "assume"]


def profile_setting(value: str | Mapping[str, Any] | ServerProfile | None) -> ProfileSetting:
    """``probe``, ``assume``, a ``ServerProfile``, or its JSON / dict form, checked."""
    if value is None or isinstance(value, ServerProfile):
        return value or "probe"
    if isinstance(value, Mapping):
        return ServerProfile.from_dict(dict(value))
    text = value.strip()
    if text in ("probe", "assume"):
        return text  # type: ignore[return-value]
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"the server profile {text!r} is not valid JSON: {exc}"
            ) from None
        if isinstance(data, dict):
            return ServerProfile.from_dict(data)
    raise ConfigurationError(
        f"a server profile is 'probe' (measure the server once), 'assume' (measure nothing: "
        f"a hosted API that runs calls side by side) or JSON such as "
        f'{{"parallel_gain": 1.0, "prefill": false}}; got {value!r}'
    )


class _ProbeLock:
    """One probe at a time per backend, per event loop (anyio locks belong to one)."""

    def __init__(self) -> None:
        self._token: object = None
        self._lock: anyio.Lock | None = None

    def get(self) -> anyio.Lock:
        token = anyio.lowlevel.current_token()
        if self._lock is None or self._token != token:
            self._token, self._lock = token, anyio.Lock()
        return self._lock


class OpenAIBackend(BaseBackend):
    """An OpenAI-compatible chat-completions endpoint.

    ``base_url`` and ``api_key`` default to ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``;
    ``model`` to ``SOTFLOW_MODEL`` or ``gpt-4o-mini``. ``limiter`` shares the limits of
    another backend (or a fair one, as ``sotflow serve`` uses) instead of making new ones.

    ``prefill``: ``None`` (default) uses prefill where the server's profile shows it
    continues a final assistant message (``continue_final_message``: vLLM, ``sotflow
    serve``) and asks for the start of the reply in words elsewhere; ``True`` says the
    server can (still checked when the server is measured); ``False`` never prefills.

    ``profile``: ``"probe"`` (default, or ``$SOTFLOW_SERVER_PROFILE``) measures the server
    the first time a strategy asks for it (about 7 short calls, once per backend;
    api.openai.com is known and not measured); ``"assume"`` measures nothing and treats
    the server as a hosted API that runs calls side by side; a ``ServerProfile`` (or
    its dict / JSON form) declares it. ``profile_cache=True`` (or a file path) keeps
    measurements on disk for a day, keyed by ``base_url`` and ``model``.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        max_concurrency: int | None = 64,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        client: Any = None,
        http_client: Any = None,
        transport: Literal["aiohttp", "httpx"] | Transport | None = None,
        prefill: bool | None = None,
        logprobs: bool = True,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        limiter: Limiter | None = None,
        profile: ProfileSetting | str | Mapping[str, Any] | None = None,
        profile_cache: bool | str | os.PathLike[str] = False,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency, rpm=rpm, tpm=tpm, limiter=limiter)
        self.model = model or os.environ.get("SOTFLOW_MODEL") or DEFAULT_MODEL
        self.capabilities = Capabilities(
            prefill=bool(prefill), logprobs=logprobs, n=True, tools=True
        )
        self.extra_body = dict(extra_body or {})
        self._prefill_setting = prefill
        self._profile_setting = profile_setting(
            profile if profile is not None else os.environ.get(PROFILE_ENV)
        )
        self._profile_cache = (
            None
            if profile_cache is False
            else ProfileCache(None if profile_cache is True else Path(profile_cache))
        )
        self._probe_lock = _ProbeLock()
        self._probe_error: BackendError | None = None
        self._seen: dict[str, Any] = {}
        self._seen_notes: list[str] = []
        self._interrupted = 0
        self._client = None
        if client is not None:
            if http_client is not None or transport is not None:
                raise ConfigurationError(
                    "pass either client= (a ready openai.AsyncOpenAI) or http_client=/transport=, "
                    "not both"
                )
            # Our engine is the one retry layer; the SDK's own retries would multiply it.
            self._client = client.with_options(max_retries=0)
            self.base_url = str(client.base_url).rstrip("/")
            self._base_url_source = "the client's base_url"
            self._secret = getattr(client, "api_key", None) or None
            self._transport: Transport | None = None
            self._init_profile()
            return
        self.base_url = _checked_base_url(
            base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL,
            "base_url" if base_url else "OPENAI_BASE_URL",
        )
        self._base_url_source = (
            "base_url (--base-url on the command line)"
            if base_url
            else "OPENAI_BASE_URL"
            if os.environ.get("OPENAI_BASE_URL")
            else "the default (set OPENAI_BASE_URL or base_url for another server)"
        )
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not api_key and self.base_url == OPENAI_BASE_URL:
            raise ConfigurationError(
                "no API key: set OPENAI_API_KEY (or pass api_key=...), or point base_url / "
                "OPENAI_BASE_URL at an OpenAI-compatible server that needs none"
            )
        self._secret = api_key or None
        self._headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._headers.update(headers or {})
        self._url = f"{self.base_url}/chat/completions"
        if http_client is not None:
            self._transport = HttpxTransport(http_client)
        elif transport is None or transport == "aiohttp":
            self._transport = AiohttpTransport(max_concurrency)
        elif transport == "httpx":
            self._transport = HttpxTransport(max_connections=max_concurrency)
        elif isinstance(transport, str):
            raise ConfigurationError(f"transport must be 'aiohttp' or 'httpx', got {transport!r}")
        else:
            self._transport = transport
        self._init_profile()

    # -- the server's profile ------------------------------------------------------------

    def _init_profile(self) -> None:
        setting = self._profile_setting
        if isinstance(setting, ServerProfile):
            self._use_profile(setting)
        elif setting == "assume":
            self._use_profile(ServerProfile(prefill=self._prefill_setting, source="assumed"))
        else:
            published = known_profile(self.base_url)
            if published is not None:
                self._use_profile(published)

    def _use_profile(self, profile: ServerProfile) -> None:
        """Adopt ``profile``, reconciled with the user's ``prefill`` setting."""
        notes = list(profile.notes)
        prefill = profile.prefill
        if self._prefill_setting is False:
            prefill = False
        elif self._prefill_setting is True and prefill is False and profile.source == "probed":
            notes.append(
                "prefill=True (--prefill) was given, but the server did not continue a "
                "prefilled reply; the reply's start is asked for in words instead"
            )
        elif self._prefill_setting is True and prefill is None:
            prefill = True
        profile = profile.replace(prefill=prefill, notes=tuple(notes))
        self.known_profile = profile
        self.capabilities = dataclasses.replace(self.capabilities, prefill=bool(prefill))
        if profile.serialises:
            # The server would only queue the other calls, inside their per-attempt
            # timeouts (or cut off its running stream for them): they queue here instead.
            self.limiter.narrow(1)

    async def profile(self) -> ServerProfile:
        """The server's profile: declared, cached, or measured now (once per backend).

        Raises the error of a probe call that failed (a wrong key, a dead endpoint); the
        probe is not tried again by this backend, which then knows only what real
        replies show.
        """
        if self.known_profile is None:
            async with self._probe_lock.get():
                if self._probe_error is not None:
                    raise self._probe_error
                if self.known_profile is None:
                    try:
                        measured = await self._measure()
                    except BackendError as exc:
                        self._probe_error = exc
                        raise
                    self._use_profile(measured)
        assert self.known_profile is not None
        return self._with_seen(self.known_profile)

    @property
    def current_profile(self) -> ServerProfile:
        """What is known now, without measuring anything."""
        base = self.known_profile or ServerProfile(prefill=self.capabilities.prefill)
        return self._with_seen(base)

    def _with_seen(self, profile: ServerProfile) -> ServerProfile:
        if not self._seen and not self._seen_notes:
            return profile
        # What was measured or declared stands; real replies fill in what was not known.
        known = {k: v for k, v in self._seen.items() if getattr(profile, k) is None}
        return profile.replace(**known, notes=(*profile.notes, *self._seen_notes))

    async def _measure(self) -> ServerProfile:
        cache = self._profile_cache
        key = ProfileCache.key(self.base_url, self.model)
        if cache is not None:
            cached = cache.get(key)
            if cached is not None:
                return cached
        profile = await probe_server(self, check_prefill=self._prefill_setting is not False)
        if cache is not None:
            cache.put(key, profile)
        return profile

    def _observe(self, field: str, value: Any, note: str | None = None) -> None:
        """A fact learned from a real reply (kept beside the measured profile)."""
        if self._seen.get(field) == value:
            return
        self._seen[field] = value
        if note:
            self._seen_notes.append(note)

    def _stream_cut_off(self) -> None:
        # A stream that ended cleanly but unfinished while other calls were in flight:
        # the mark of a server that serves one request at a time and ends the running
        # stream when the next arrives (llama-cpp-python's default). Twice is a pattern.
        if self.limiter.in_flight < 2:
            return
        measured = self.known_profile
        if measured is not None and measured.parallel_gain is not None and not measured.serialises:
            return
        self._interrupted += 1
        if self._interrupted == 2:
            self._observe(
                "parallel_gain",
                1.0,
                "the server cut off running streams when other requests arrived: it serves "
                "one call at a time, so sotflow now sends it one at a time",
            )
            self.limiter.narrow(1)

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()

    # -- request mapping -------------------------------------------------------------

    def body(self, request: Request, *, stream: bool) -> dict[str, Any]:
        """The JSON body for ``request`` (public so users can see what is sent)."""
        return request_body(
            request,
            model=self.model,
            stream=stream,
            prefill=self.capabilities.prefill,
            extra_body=self.extra_body,
        )

    # -- calls -----------------------------------------------------------------------

    async def _raw_complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as it is; the decoded reply (errors mapped, nothing parsed)."""
        if self._client is not None:
            return await self._sdk_complete(body)
        assert self._transport is not None
        try:
            response = await self._transport.post(
                self._url, self._headers, json.dumps(body).encode()
            )
        except APIConnectionError as exc:
            raise self._unreachable(exc) from exc
        if response.status >= 400:
            raise self._status_error(response.status, response.headers, response.content)
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise MalformedResponseError(
                f"{self._where()} answered with invalid JSON ({len(response.content)} bytes)"
            ) from exc
        return data  # type: ignore[no-any-return]

    def _raw_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._sdk_stream(body) if self._client is not None else self._http_stream(body)

    def _n_ignored(self, request: Request) -> bool:
        return request.params.n > 1 and self.current_profile.n is False

    async def complete(self, request: Request) -> Completion:
        if self._n_ignored(request):
            return await self._fan_out(request, request.params.n)
        data = await self._raw_complete(self.body(request, stream=False))
        completion = self._parse_completion(data, request)
        wanted = request.params.n
        if wanted > 1 and len(completion.choices) < wanted:
            self._observe("n", False, f"the server ignored n={wanted}; sotflow sends n calls")
            extra = await self._fan_out(request, wanted - len(completion.choices))
            completion = _merge(completion, extra)
        return completion

    async def _fan_out(self, request: Request, count: int) -> Completion:
        """``count`` single-sample calls for a server that ignores ``n``, as one completion."""
        single = _single(request)
        results: list[Completion | None] = [None] * count

        async def one(index: int) -> None:
            data = await self._raw_complete(self.body(single, stream=False))
            results[index] = self._parse_completion(data, single)

        async with anyio.create_task_group() as tg:
            for index in range(count):
                tg.start_soon(one, index)
        done = [r for r in results if r is not None]
        merged = done[0]
        for other in done[1:]:
            merged = _merge(merged, other)
        return merged

    async def stream(self, request: Request) -> AsyncIterator[StreamItem]:
        wanted = request.params.n
        ignored = self._n_ignored(request)
        sent = _single(request) if ignored else request
        body = self.body(sent, stream=True)
        assembler = StreamAssembler(
            sent,
            model=self.model,
            where=self._where(),
            prefill_in_words=not self.capabilities.prefill,
        )
        chunks = self._raw_stream(body)
        async with aclosing(chunks):
            async for chunk in chunks:
                for delta in assembler.add(chunk):
                    yield delta
        try:
            completion = assembler.completion()
        except StreamInterruptedError:
            self._stream_cut_off()
            raise
        self._observe("streamed_usage", assembler.usage is not None)
        for delta in assembler.released:
            yield delta  # text held back while it could still have been the prefill
        if wanted > 1 and len(completion.choices) < wanted:
            if not ignored:
                self._observe("n", False, f"the server ignored n={wanted}; sotflow sends n calls")
            extra = await self._fan_out(request, wanted - len(completion.choices))
            first = len(completion.choices)
            for offset, choice in enumerate(extra.choices):
                if choice.text:
                    yield Delta(choice.text, first + offset)
            completion = _merge(completion, extra)
        yield completion

    async def _http_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        assert self._transport is not None
        try:
            async with self._transport.stream(
                self._url, self._headers, json.dumps(body).encode()
            ) as response:
                if response.status >= 400:
                    content = b"".join([c async for c in response.chunks])
                    raise self._status_error(response.status, response.headers, content)
                decoder = SSEDecoder()
                async for raw in response.chunks:
                    for data in decoder.feed(raw):
                        if data == b"[DONE]":
                            return
                        yield self._decode_event(data)
                for data in decoder.flush():
                    if data == b"[DONE]":
                        return
                    yield self._decode_event(data)
        except StreamInterruptedError:
            raise  # the server was reached; the hint below would mislead
        except APIConnectionError as exc:
            raise self._unreachable(exc) from exc
        raise StreamInterruptedError(f"the stream from {self._where()} ended without [DONE]")

    def _decode_event(self, data: bytes) -> dict[str, Any]:
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise MalformedResponseError(
                f"{self._where()} sent a stream event that is not JSON: {self._redact(data)[:200]}"
            ) from exc
        if not isinstance(event, dict):
            raise MalformedResponseError(
                f"{self._where()} sent a stream event that is not an object"
            )
        if event.get("error"):
            err = event["error"]
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            raise ServerError(
                f"{self._where()} reported an error mid-stream: {self._redact(message)}",
                status_code=500,
                code=err.get("code") if isinstance(err, dict) else None,
            )
        return event

    # -- the official SDK, when the user handed us a client -----------------------------

    def _sdk_args(self, body: dict[str, Any]) -> dict[str, Any]:
        known = {
            "model", "messages", "max_tokens", "temperature", "top_p", "n", "stop", "seed",
            "logprobs", "top_logprobs", "stream", "stream_options", "tools", "tool_choice",
            "response_format",
        }  # fmt: skip
        args = {k: v for k, v in body.items() if k in known}
        extra = {k: v for k, v in body.items() if k not in known}
        if extra:
            args["extra_body"] = extra
        return args

    async def _sdk_complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.chat.completions.create(**self._sdk_args(body))
        except Exception as exc:
            raise self._sdk_error(exc) from exc
        return response.model_dump()

    async def _sdk_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            stream = await self._client.chat.completions.create(**self._sdk_args(body))
            async for chunk in stream:
                yield chunk.model_dump()
        except Exception as exc:
            mapped = self._sdk_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def _sdk_error(self, exc: Exception) -> Exception:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return APITimeoutError(f"the request to {self._where()} timed out")
        if isinstance(exc, openai.APIConnectionError):
            return self._unreachable(
                APIConnectionError(f"could not reach {self._where()}: {self._redact(str(exc))}")
            )
        if isinstance(exc, openai.APIStatusError):
            response = exc.response
            return self._status_error(exc.status_code, response.headers, response.content)
        if isinstance(exc, openai.APIResponseValidationError):
            return MalformedResponseError(f"{self._where()} sent a malformed response")
        if isinstance(exc, openai.APIError):
            # An {"error": ...} event in the middle of a stream; the same as ours.
            body = exc.body if isinstance(exc.body, dict) else {}
            code = body.get("code")
            return ServerError(
                f"{self._where()} reported an error mid-stream: {self._redact(exc.message)}",
                status_code=500,
                code=str(code) if code is not None else None,
            )
        if isinstance(exc, ValueError):
            # The SDK decodes bodies and stream events as JSON and lets the decoder's
            # error through.
            return MalformedResponseError(f"{self._where()} sent a response that is not JSON")
        return exc

    # -- parsing ---------------------------------------------------------------------

    def _where(self) -> str:
        return self.base_url.split("//", 1)[-1]

    def _unreachable(self, exc: APIConnectionError) -> APIConnectionError:
        """The transport's connection error, with what to check."""
        if isinstance(exc, StreamInterruptedError):
            return exc
        return APIConnectionError(
            f"{self._redact(str(exc))}. Is a server running at {self.base_url}? The address "
            f"comes from {self._base_url_source}; check it, and that the server is up."
        )

    def _redact(self, text: str | bytes) -> str:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    def _status_error(
        self, status: int, headers: Mapping[str, str], content: bytes
    ) -> ProviderError:
        message, code = "", None
        try:
            data = json.loads(content)
            error = data.get("error", data) if isinstance(data, dict) else data
            if isinstance(error, dict):
                message = str(error.get("message") or "")
                code = error.get("code") or error.get("type")
                code = str(code) if code is not None else None
            else:
                message = str(error)
        except ValueError:
            # Redact before cutting: a cut through the key would leave a prefix of it.
            message = self._redact(content)[:300].strip()
        hint = {
            401: " Check OPENAI_API_KEY (or api_key=...).",
            403: " The key lacks permission for this model or endpoint.",
            404: f" Check the model name ({self.model!r}) and base_url ({self.base_url}).",
        }.get(status, "")
        if status == 429 and code == "insufficient_quota":
            hint = " The account is out of quota: add credit or use another key."
        text = f"HTTP {status} from {self._where()}: {self._redact(message) or 'no message'}.{hint}"
        return error_from_status(
            status,
            text,
            code=code,
            retry_after=parse_retry_after(headers),
            should_retry=_should_retry(headers),
        )

    def _parse_completion(self, data: Any, request: Request) -> Completion:
        if isinstance(data, dict) and data.get("error"):
            raise self._status_error(500, {}, json.dumps(data).encode())
        return completion_from_wire(
            data,
            request,
            model=self.model,
            where=self._where(),
            prefill_in_words=not self.capabilities.prefill,
        )


def _single(request: Request) -> Request:
    """``request`` asking for one sample."""
    return dataclasses.replace(request, params=request.params.replace(n=1))


def _merge(first: Completion, extra: Completion) -> Completion:
    """``extra``'s choices after ``first``'s, renumbered; usage added."""
    start = len(first.choices)
    moved = tuple(
        Choice(start + i, c.text, c.finish_reason, c.logprobs, c.tool_calls)
        for i, c in enumerate(extra.choices)
    )
    return Completion(first.choices + moved, first.usage + extra.usage, first.model)
