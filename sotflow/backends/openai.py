"""Any OpenAI-compatible chat-completions API, plain and streamed.

All provider-specific mapping lives here: how a ``Request`` becomes a JSON body, how
a body or an SSE stream becomes a ``Completion``, and how error statuses and their
headers become ``sotflow.errors``. The bytes travel over a ``Transport``
(aiohttp by default, httpx on request) or through a ready ``openai.AsyncOpenAI``
client, whose own retries are turned off: the engine is the one retry layer.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, Literal

from ..errors import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    MalformedResponseError,
    ProviderError,
    ServerError,
    StreamInterruptedError,
    error_from_status,
)
from ..types import Choice, Completion, Delta, Request, TokenLogprob, Usage
from .base import BaseBackend, Capabilities, StreamItem
from .http import AiohttpTransport, HttpxTransport, Transport
from .sse import SSEDecoder

__all__ = ["OpenAIBackend", "parse_retry_after"]

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


class OpenAIBackend(BaseBackend):
    """An OpenAI-compatible chat-completions endpoint.

    ``base_url`` and ``api_key`` default to ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``;
    ``model`` to ``SOTFLOW_MODEL`` or ``gpt-4o-mini``. Set ``prefill=True`` only for
    servers that continue a final assistant message when asked with
    ``continue_final_message`` (vLLM, ``sotflow serve``); elsewhere strategies ask for
    the start of the reply in words instead.
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
        prefill: bool = False,
        logprobs: bool = True,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency, rpm=rpm, tpm=tpm)
        self.model = model or os.environ.get("SOTFLOW_MODEL") or DEFAULT_MODEL
        self.capabilities = Capabilities(prefill=prefill, logprobs=logprobs, n=True)
        self.extra_body = dict(extra_body or {})
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

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()

    # -- request mapping -------------------------------------------------------------

    def body(self, request: Request, *, stream: bool) -> dict[str, Any]:
        """The JSON body for ``request`` (public so users can see what is sent)."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if request.prefill:
            if self.capabilities.prefill:
                messages.append({"role": "assistant", "content": request.prefill})
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            else:
                messages[-1] = {
                    "role": messages[-1]["role"],
                    "content": f"{messages[-1]['content']}\n\nBegin your reply with exactly: "
                    f"{request.prefill}",
                }
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
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return body

    # -- calls -----------------------------------------------------------------------

    async def complete(self, request: Request) -> Completion:
        body = self.body(request, stream=False)
        if self._client is not None:
            data = await self._sdk_complete(body)
        else:
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
        return self._parse_completion(data, request)

    async def stream(self, request: Request) -> AsyncIterator[StreamItem]:
        body = self.body(request, stream=True)
        chunks = self._sdk_stream(body) if self._client is not None else self._http_stream(body)
        assembler = _StreamAssembler(request, self)
        async with aclosing(chunks):
            async for chunk in chunks:
                for delta in assembler.add(chunk):
                    yield delta
        completion = assembler.completion()
        for delta in assembler.released:
            yield delta  # text held back while it could still have been the prefill
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
            "logprobs", "top_logprobs", "stream", "stream_options",
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
        if not isinstance(data, dict):
            raise MalformedResponseError(
                f"{self._where()} answered with something other than an object"
            )
        if data.get("error"):
            raise self._status_error(500, {}, json.dumps(data).encode())
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, list) or not raw_choices:
            raise MalformedResponseError(f"{self._where()} answered without choices")
        choices = []
        for position, raw in enumerate(raw_choices):
            try:
                message = raw.get("message") or {}
                text = message.get("content") or ""
                logprobs = _parse_logprobs((raw.get("logprobs") or {}).get("content"))
                index = raw.get("index", position)
            except (AttributeError, TypeError) as exc:
                raise MalformedResponseError(f"{self._where()} sent a malformed choice") from exc
            choices.append(
                Choice(
                    index, self._strip_prefill(text, request), raw.get("finish_reason"), logprobs
                )
            )
        choices.sort(key=lambda c: c.index)
        usage = _parse_usage(data.get("usage"))
        if usage is None:
            usage = _estimate_usage(request, [c.text for c in choices])
        return Completion(tuple(choices), usage, str(data.get("model") or self.model))

    def _strip_prefill(self, text: str, request: Request) -> str:
        """Without real prefill we asked the model to start with it; keep only what follows."""
        prefill = request.prefill
        if prefill and not self.capabilities.prefill:
            stripped = text.lstrip()
            if stripped.startswith(prefill):
                return stripped[len(prefill) :]
        return text


class _StreamAssembler:
    """Turns chat-completion chunks into deltas and, at the end, one ``Completion``."""

    def __init__(self, request: Request, backend: OpenAIBackend) -> None:
        self.request = request
        self.backend = backend
        self.texts: dict[int, list[str]] = {}
        self.reasons: dict[int, str] = {}
        self.logprobs: dict[int, list[TokenLogprob]] = {}
        self.usage: Usage | None = None
        self.model = ""
        # Without real prefill the model writes the prefill itself: text is held back
        # until it is clear whether the reply starts with it, then the prefill is cut.
        self.strip = bool(request.prefill) and not backend.capabilities.prefill
        self.held: dict[int, str] = {}
        self.decided: set[int] = set()
        self.released: list[Delta] = []

    def add(self, chunk: dict[str, Any]) -> list[Delta]:
        if not self.model and chunk.get("model"):
            self.model = str(chunk["model"])
        usage = chunk.get("usage")
        if usage:
            self.usage = _parse_usage(usage)
        out: list[Delta] = []
        choices = chunk.get("choices")
        if not choices:
            return out
        try:
            for raw in choices:
                index = raw.get("index", 0)
                delta = raw.get("delta") or {}
                text = delta.get("content")
                if text and self.strip and index not in self.decided:
                    text = self._cut_prefill(index, text)
                if text:
                    self.texts.setdefault(index, []).append(text)
                    out.append(Delta(text, index))
                lp = raw.get("logprobs")
                if lp and lp.get("content"):
                    self.logprobs.setdefault(index, []).extend(_parse_logprobs(lp["content"]) or ())
                if raw.get("finish_reason"):
                    self.reasons[index] = raw["finish_reason"]
        except (AttributeError, TypeError) as exc:
            raise MalformedResponseError(
                f"{self.backend._where()} sent a malformed stream chunk"
            ) from exc
        return out

    def _cut_prefill(self, index: int, text: str) -> str:
        prefill = self.request.prefill or ""
        seen = self.held.pop(index, "") + text
        candidate = seen.lstrip()
        if len(candidate) < len(prefill) and prefill.startswith(candidate):
            self.held[index] = seen
            return ""
        self.decided.add(index)
        return candidate[len(prefill) :] if candidate.startswith(prefill) else seen

    def completion(self) -> Completion:
        if not self.reasons:
            raise StreamInterruptedError(
                f"the stream from {self.backend._where()} stopped before any choice finished"
            )
        for index, held in self.held.items():
            # The whole reply was a prefix of the prefill, so it is the reply.
            self.texts.setdefault(index, []).append(held)
            self.released.append(Delta(held, index))
        self.held.clear()
        indices = sorted(set(self.texts) | set(self.reasons))
        choices = tuple(
            Choice(
                index,
                "".join(self.texts.get(index, ())),
                self.reasons.get(index),
                tuple(self.logprobs[index]) if index in self.logprobs else None,
            )
            for index in indices
        )
        usage = self.usage or _estimate_usage(self.request, [c.text for c in choices])
        return Completion(choices, usage, self.model or self.backend.model)


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        prompt = int(raw.get("prompt_tokens") or 0)
        completion = int(raw.get("completion_tokens") or 0)
        total = int(raw.get("total_tokens") or prompt + completion)
    except (TypeError, ValueError):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


def _estimate_usage(request: Request, texts: list[str]) -> Usage:
    """Roughly 4 characters a token, as a stand-in when the server reports no usage."""
    prompt = sum(len(m.content) for m in request.messages) // 4 + 4 * len(request.messages)
    completion = sum(max(1, len(t) // 4) for t in texts if t)
    return Usage.of(prompt, completion, estimated=True)


def _parse_logprobs(raw: Any) -> tuple[TokenLogprob, ...] | None:
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
