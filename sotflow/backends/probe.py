"""Measuring what an OpenAI-compatible server really does, with a few cheap calls.

``probe_server`` sends, once per backend:

1. a streamed request whose assistant reply is prefilled in the middle of a count
   (``..., 9, 1``) with ``continue_final_message``: a server that continues it writes
   ``0, 11, ...``; one that ignores it starts a reply of its own. The same stream
   says whether usage comes at the end of a stream;
2. a one-token request with ``n=2``: two choices back, or one;
3. one short request alone, then ``calls`` of the same at once: the ratio of their
   throughputs is the parallel gain (about 1 where the server runs one call at a
   time, about ``calls`` where it runs them side by side).

About 7 calls of at most 16 tokens each. A part the server refuses as a bad request
(400, 404, 422: an unknown field, ``n`` not allowed) is recorded as "not supported";
any other failure (a wrong key, a dead endpoint, a 5xx) ends the probe with that error,
and nothing is cached. Results can be kept in a small JSON cache file, keyed by the
server's address and model, so that each command line does not measure again.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ..errors import BackendError, BadRequestError
from ..retry import RetryPolicy
from .base import PARALLEL_CALLS, ServerProfile

T = TypeVar("T")

if TYPE_CHECKING:
    from .openai import OpenAIBackend

__all__ = ["PROFILE_TTL_S", "ProfileCache", "known_profile", "probe_server"]

PROFILE_TTL_S = 24 * 3600.0
"""How long a cached measurement is trusted."""

PROBE_CALLS = PARALLEL_CALLS
PROBE_TOKENS = 16
MEASURABLE_S = 0.05
"""A call faster than this is mostly overhead: its parallel gain says nothing (and SoT
or not makes no difference to the wait on such a server)."""

_COUNT = "Count from 1 to 100, separated by commas. Write only the numbers."
# Cut inside "10": only a reply that really continues this text starts with "0".
_COUNT_PREFILL = "1, 2, 3, 4, 5, 6, 7, 8, 9, 1"
_CONTINUES = re.compile(r"^0\b")

# Providers whose behaviour is published: no need to spend calls on measuring them.
_KNOWN = {
    "api.openai.com": ServerProfile(
        prefill=False,
        n=True,
        streamed_usage=True,
        source="declared",
        notes=("api.openai.com runs calls side by side",),
    ),
}


def known_profile(base_url: str) -> ServerProfile | None:
    """The published profile of a provider's own endpoint, if sotflow knows it."""
    host = base_url.split("//", 1)[-1].split("/", 1)[0].lower()
    return _KNOWN.get(host)


def _messages(prefill: str | None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": _COUNT}]
    if prefill is not None:
        messages.append({"role": "assistant", "content": prefill})
    return messages


def _tokens(data: dict[str, Any]) -> int:
    usage = data.get("usage") or {}
    count = usage.get("completion_tokens")
    if isinstance(count, int) and count > 0:
        return count
    # No usage: about 4 characters a token, as elsewhere.
    texts = [str((c.get("message") or {}).get("content") or "") for c in data.get("choices") or []]
    return max(1, sum(len(t) for t in texts) // 4)


async def _prefill_and_usage(
    backend: OpenAIBackend, notes: list[str]
) -> tuple[bool | None, bool | None]:
    body = {
        "model": backend.model,
        "messages": _messages(_COUNT_PREFILL),
        "continue_final_message": True,
        "add_generation_prompt": False,
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    text: list[str] = []
    usage = False
    try:

        async def call() -> list[dict[str, Any]]:
            async with backend.limiter.slot(PROBE_TOKENS):
                return [chunk async for chunk in backend._raw_stream(body)]

        chunks = await _retrying(call)
        for chunk in chunks:
            if chunk.get("usage"):
                usage = True
            for choice in chunk.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    text.append(piece)
    except BadRequestError as exc:
        # Most often a 400 for the unknown continue_final_message field.
        notes.append(f"the server refused a prefilled request: {exc}")
        return False, None
    reply = "".join(text)
    return bool(_CONTINUES.match(reply)), usage


async def _n(backend: OpenAIBackend, notes: list[str]) -> bool | None:
    body = {
        "model": backend.model,
        "messages": _messages(None),
        "max_tokens": 1,
        "n": 2,
        "temperature": 0.8,
    }
    try:

        async def call() -> dict[str, Any]:
            async with backend.limiter.slot(PROBE_TOKENS):
                return await backend._raw_complete(body)

        data = await _retrying(call)
    except BadRequestError as exc:
        notes.append(f"the server refused n=2: {exc}")
        return False
    return len(data.get("choices") or ()) >= 2


# One unlucky reply (a 429, a 5xx, a broken stream) must not decide what the server
# is: probe calls are retried as any call is, briefly.
PROBE_RETRY = RetryPolicy(max_retries=2, initial_wait_s=0.25, max_wait_s=2.0)


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    async for attempt in PROBE_RETRY.retrying(None):
        with attempt:
            result = await call()
    return result


async def _parallel_gain(
    backend: OpenAIBackend, calls: int, tokens: int, notes: list[str]
) -> float | None:
    body = {
        "model": backend.model,
        "messages": _messages(None),
        "max_tokens": tokens,
        "temperature": 0,
    }

    async def one() -> int:
        async def call() -> int:
            # Probes are calls on the user's server like any other: inside its limits.
            async with backend.limiter.slot(tokens):
                return _tokens(await backend._raw_complete(body))

        return await _retrying(call)

    start = time.perf_counter()
    alone = await one()
    alone_s = time.perf_counter() - start
    if alone_s < MEASURABLE_S:
        notes.append(
            f"a {alone} token call took {alone_s * 1000:.0f} ms, too fast to measure "
            "concurrency; assumed concurrent"
        )
        return None
    counts: list[int] = []
    failed: list[BackendError] = []

    async def collect() -> None:
        # Kept, not raised in the task group: the caller gets the BackendError itself,
        # not an ExceptionGroup around it.
        try:
            counts.append(await one())
        except BackendError as exc:
            failed.append(exc)

    if calls < 2:
        notes.append("one call in flight allowed (max_concurrency=1): nothing to measure")
        return None
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(calls):
            tg.start_soon(collect)
    together_s = time.perf_counter() - start
    if failed:
        raise failed[0]
    if alone_s <= 0 or together_s <= 0:
        return None
    gain = (sum(counts) / together_s) / (alone / alone_s)
    return round(gain, 2)


async def probe_server(
    backend: OpenAIBackend,
    *,
    calls: int = PROBE_CALLS,
    tokens: int = PROBE_TOKENS,
    check_prefill: bool = True,
) -> ServerProfile:
    """Measure ``backend``'s server (see the module docstring). Raises the
    ``BackendError`` of a probe call that failed for another reason than a refusal."""
    notes: list[str] = []
    prefill, usage = (None, None)
    if check_prefill:
        prefill, usage = await _prefill_and_usage(backend, notes)
    n = await _n(backend, notes)
    cap = backend.limiter.max_concurrency
    calls = min(calls, cap) if cap else calls
    gain = await _parallel_gain(backend, calls, tokens, notes)
    return ServerProfile(
        parallel_gain=gain,
        prefill=prefill,
        n=n,
        streamed_usage=usage,
        source="probed",
        probe_calls=calls,
        notes=tuple(notes),
        measured_at=time.time(),
    )


class ProfileCache:
    """Measured profiles in one JSON file, keyed by base URL and model."""

    def __init__(self, path: str | os.PathLike[str] | None = None, ttl_s: float = PROFILE_TTL_S):
        self.path = Path(path) if path is not None else default_cache_path()
        self.ttl_s = ttl_s

    @staticmethod
    def key(base_url: str, model: str) -> str:
        return f"{base_url}|{model}"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> ServerProfile | None:
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            profile = ServerProfile.from_dict(entry)
        except (TypeError, ValueError):
            return None  # written by another version: measure again
        if profile.measured_at is None or time.time() - profile.measured_at > self.ttl_s:
            return None
        return profile

    def put(self, key: str, profile: ServerProfile) -> None:
        data = self._read()
        data[key] = profile.to_dict()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Written whole and renamed, so a concurrent reader never sees half a file.
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            tmp.replace(self.path)
        except OSError:
            pass  # a cache that cannot be written only costs a measurement next time


def default_cache_path() -> Path:
    """``$SOTFLOW_CACHE_DIR/server_profiles.json`` or the user cache dir's."""
    override = os.environ.get("SOTFLOW_CACHE_DIR")
    if override:
        root = Path(override).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("sotflow"))
    return root / "server_profiles.json"
