"""The backend protocol: one request in, one completion (or a stream of deltas) out.

A backend only transports. It never retries, sleeps for rate limits or counts a budget:
the engine does all of that, through the ``limiter`` the backend carries so that every
caller of the same backend shares one set of limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import ConfigurationError
from ..limits import Limiter
from ..types import Completion, Delta, Request

__all__ = [
    "Backend",
    "BaseBackend",
    "Capabilities",
    "ModelView",
    "StreamItem",
    "check_backend",
    "check_text_request",
    "estimate_tokens",
]

StreamItem = Delta | Completion
"""A stream yields ``Delta`` pieces and ends with exactly one ``Completion``."""

DEFAULT_COMPLETION_ESTIMATE = 512


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do; strategies adapt their prompts to it."""

    prefill: bool = False
    """Can continue a prefilled assistant message (SoT forces ``1.`` this way)."""
    logprobs: bool = False
    """Returns per-token log-probabilities when asked."""
    n: bool = True
    """Returns several samples from one request."""


@runtime_checkable
class Backend(Protocol):
    name: str
    model: str
    capabilities: Capabilities
    limiter: Limiter

    def estimate_tokens(self, request: Request) -> int: ...

    async def complete(self, request: Request) -> Completion: ...

    def stream(self, request: Request) -> AsyncIterator[StreamItem]: ...

    async def aclose(self) -> None: ...


def check_backend(value: object, what: str, *, optional: bool = True) -> None:
    """Refuse anything but a backend where one is expected, naming the setting.

    Checked when a strategy is made: a wrong value would otherwise surface only when
    the run reaches the call, after other calls were paid for.
    """
    if (value is None and optional) or isinstance(value, Backend):
        return
    hint = ""
    if isinstance(value, str):
        hint = "; a model name goes to the backend, e.g. OpenAIBackend(model=...)"
    raise ConfigurationError(
        f"{what} must be a backend (OpenAIBackend(...), LocalBackend(...), "
        f"ScriptedBackend(...)){' or None' if optional else ''}, got {value!r}{hint}"
    )


def check_text_request(request: Request, backend: str, *, model: str | None = None) -> None:
    """Refuse what a backend that writes plain text cannot honour, naming the field.

    Tools, a tool choice, a response format and tool-call histories would otherwise be
    dropped, and the reply would answer a different request than the one sent. With
    ``model`` given, a request for any other model is refused too.
    """
    fields = request.tool_fields()
    if fields:
        raise ConfigurationError(
            f"{backend} cannot honour {', '.join(fields)}: it writes plain text only. Send "
            "tool calling and structured output to an OpenAI-compatible API that supports "
            "them (OpenAIBackend)."
        )
    if model is not None and request.model not in (None, model):
        raise ConfigurationError(
            f"{backend} serves {model!r} only; this request asked for {request.model!r}"
        )


def estimate_tokens(request: Request, *, chars_per_token: float = 4.0) -> int:
    """A provider-style pre-call charge: prompt size plus ``n * max_tokens``."""
    chars = sum(len(m.content) for m in request.messages) + len(request.prefill or "")
    prompt = int(chars / chars_per_token) + 4 * len(request.messages)
    completion = request.params.max_tokens or DEFAULT_COMPLETION_ESTIMATE
    return prompt + request.params.n * completion


class BaseBackend:
    """Shared plumbing: the limiter, token estimates, async context management."""

    name: str = "backend"
    model: str = ""
    capabilities: Capabilities = Capabilities()

    def __init__(
        self,
        *,
        max_concurrency: int | None = 64,
        rpm: int | None = None,
        tpm: int | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.limiter = limiter or Limiter(max_concurrency, rpm, tpm)

    def estimate_tokens(self, request: Request) -> int:
        return estimate_tokens(request)

    async def complete(self, request: Request) -> Completion:
        raise NotImplementedError

    def stream(self, request: Request) -> AsyncIterator[StreamItem]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> BaseBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


class ModelView:
    """A backend asking for another model on every call: same transport, same limits.

    For per-call model choice (a chat model's ``invoke(..., model=...)``, a proxy's
    ``sot/<model>``) without a second connection pool or a second set of limits.
    A request that names its own model keeps it.
    """

    def __init__(self, backend: Backend, model: str) -> None:
        self.backend = backend
        self.model = model
        self.name = backend.name
        self.capabilities = backend.capabilities
        self.limiter = backend.limiter

    def _ask(self, request: Request) -> Request:
        return request if request.model else dataclasses.replace(request, model=self.model)

    def estimate_tokens(self, request: Request) -> int:
        return self.backend.estimate_tokens(self._ask(request))

    async def complete(self, request: Request) -> Completion:
        return await self.backend.complete(self._ask(request))

    def stream(self, request: Request) -> AsyncIterator[StreamItem]:
        return self.backend.stream(self._ask(request))

    async def aclose(self) -> None:
        await self.backend.aclose()

    def __repr__(self) -> str:
        return f"ModelView({self.backend!r}, model={self.model!r})"
