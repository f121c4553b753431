"""HTTP transports for the OpenAI-compatible backend: two methods, two implementations.

``AiohttpTransport`` is the default: measured on loopback it sustains an order of
magnitude more calls/s and streamed chunks/s than httpx does at 200 requests in flight
(see benchmarks/client_overhead.py), which is what the engine's fan-out needs.
``HttpxTransport`` wraps any ``httpx.AsyncClient``, so ``respx`` and
``httpx.MockTransport`` work as test seams, and it runs under trio as well.

Both raise only ``APIConnectionError`` (and ``StreamInterruptedError`` once a body has
started) for transport failures; status codes are for the caller to judge.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from ..errors import APIConnectionError, APITimeoutError, StreamInterruptedError

__all__ = ["AiohttpTransport", "HTTPResponse", "HTTPStream", "HttpxTransport", "Transport"]


@dataclass(slots=True)
class HTTPResponse:
    status: int
    headers: Mapping[str, str]
    content: bytes


@dataclass(slots=True)
class HTTPStream:
    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]


class Transport(Protocol):
    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HTTPResponse: ...

    def stream(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> Any:  # an async context manager yielding HTTPStream
        ...

    async def aclose(self) -> None: ...


def _host(url: str) -> str:
    return url.split("//", 1)[-1].split("/", 1)[0]


class AiohttpTransport:
    """aiohttp with a connection pool sized to the in-flight cap.

    The engine's limiter queues calls before they reach the pool, so the pool never
    has waiters and needs no pool timeout; per-attempt timeouts are the engine's.

    A session belongs to one event loop, so there is one per loop that uses the
    transport (a sync wrapper runs its own loop beside the caller's). Each is closed by
    ``aclose()`` on its loop or, failing that, when its loop shuts down: a script that
    ends ``asyncio.run(...)`` without closing leaves no "Unclosed client session".
    """

    def __init__(self, max_connections: int | None = 64) -> None:
        self.max_connections = max_connections
        self._sessions: dict[object, tuple[Any, AsyncGenerator[None, None]]] = {}

    async def _client(self) -> Any:
        token = anyio.lowlevel.current_token()
        entry = self._sessions.get(token)
        if entry is not None and not entry[0].closed:
            return entry[0]
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self.max_connections or 0,
            limit_per_host=0,
            ttl_dns_cache=300,
            enable_cleanup_closed=False,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        guard = self._guard(token, session)
        # Started once, it is one of the loop's async generators, and a loop closes all
        # of those as it shuts down (asyncio.run, anyio.run, a blocking portal's loop).
        await guard.asend(None)
        self._sessions[token] = (session, guard)
        return session

    async def _guard(self, token: object, session: Any) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            entry = self._sessions.get(token)
            if entry is not None and entry[0] is session:
                del self._sessions[token]
            if not session.closed:
                with anyio.CancelScope(shield=True):
                    await session.close()

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HTTPResponse:
        import aiohttp

        try:
            session = await self._client()
            async with session.post(url, data=body, headers=headers) as response:
                content = await response.read()
                return HTTPResponse(response.status, response.headers, content)
        except aiohttp.ClientError as exc:
            raise APIConnectionError(
                f"could not complete the request to {_host(url)}: {exc}"
            ) from exc

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> AsyncIterator[HTTPStream]:
        import aiohttp

        try:
            session = await self._client()
            response = await session.post(url, data=body, headers=headers)
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"could not connect to {_host(url)}: {exc}") from exc

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for data in response.content.iter_any():
                    yield data
            except aiohttp.ClientError as exc:
                raise StreamInterruptedError(
                    f"the stream from {_host(url)} broke off: {exc or type(exc).__name__}"
                ) from exc

        try:
            yield HTTPStream(response.status, response.headers, chunks())
        finally:
            response.release()

    async def aclose(self) -> None:
        """Close this loop's session (it reopens on the next call); the sessions of other
        loops close with their loops."""
        try:
            token = anyio.lowlevel.current_token()
        except RuntimeError:
            return
        entry = self._sessions.pop(token, None)
        if entry is not None:
            session, guard = entry
            await guard.aclose()
            if not session.closed:
                with anyio.CancelScope(shield=True):
                    await session.close()


class HttpxTransport:
    """httpx, for respx/MockTransport-based tests, trio, or a client you configured."""

    def __init__(self, client: Any = None, max_connections: int | None = 64) -> None:
        self._owned = client is None
        self.max_connections = max_connections
        self._client_: Any = client if client is not None else self._new_client()

    def _new_client(self) -> Any:
        import httpx

        return httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
            # Calls wait for a slot in our limiter, not in the pool; timeouts are ours.
            timeout=httpx.Timeout(None, connect=30.0, pool=None),
        )

    @property
    def client(self) -> Any:
        # A client we own reopens after aclose(), like the aiohttp session does: an
        # engine closes its backends on exit, and the backend may serve the next engine.
        if self._owned and self._client_.is_closed:
            self._client_ = self._new_client()
        return self._client_

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HTTPResponse:
        import httpx

        try:
            response = await self.client.post(url, content=body, headers=dict(headers))
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"the request to {_host(url)} timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise APIConnectionError(
                f"could not complete the request to {_host(url)}: {exc}"
            ) from exc
        return HTTPResponse(response.status_code, response.headers, response.content)

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> AsyncIterator[HTTPStream]:
        import httpx

        client = self.client
        request = client.build_request("POST", url, content=body, headers=dict(headers))
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"the request to {_host(url)} timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise APIConnectionError(f"could not connect to {_host(url)}: {exc}") from exc

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for data in response.aiter_bytes():
                    yield data
            except httpx.HTTPError as exc:
                raise StreamInterruptedError(
                    f"the stream from {_host(url)} broke off: {exc or type(exc).__name__}"
                ) from exc

        try:
            yield HTTPStream(response.status_code, response.headers, chunks())
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        if self._owned and not self._client_.is_closed:
            await self._client_.aclose()
