"""The backend protocol: one request in, one completion (or a stream of deltas) out.

A backend only transports. It never retries, sleeps for rate limits or counts a budget:
the engine does all of that, through the ``limiter`` the backend carries so that every
caller of the same backend shares one set of limits.

What the server behind a backend really does (does it run calls side by side, continue
a prefill, honour ``n``, report streamed usage) is its ``ServerProfile``, got once with
``await backend.profile()``: a backend that knows it (a model in this process) returns
it; one that does not (an HTTP server) measures it the first time it is asked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import ConfigurationError
from ..limits import Limiter
from ..types import Completion, Delta, Request

__all__ = [
    "PARALLEL_CALLS",
    "SERIAL_GAIN",
    "Backend",
    "BaseBackend",
    "Capabilities",
    "ModelView",
    "ServerProfile",
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
    tools: bool = False
    """Honours what goes beyond plain text (``Request.tool_fields()``: tools, tool choice,
    response formats, tool-call histories, extra API fields) instead of refusing it."""


SERIAL_GAIN = 1.5
"""Below this parallel gain SoT's points gain too little from being sent at once
to pay for the skeleton: the server (nearly) runs one call at a time."""

PARALLEL_CALLS = 4
"""How many calls at once a parallel gain is stated for: about the points a SoT
skeleton has (the bundled model writes 3 to 5)."""

ProfileSource = Literal["declared", "probed", "observed", "assumed"]


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """What the server behind a backend really does. ``None`` means "not known".

    ``parallel_gain`` is the throughput of ``probe_calls`` calls sent at once over the
    throughput of one call alone: about 1 where the server runs one call at a time
    (Skeleton-of-Thought's points then queue, and SoT is slower than a direct answer),
    up to ``probe_calls`` where it runs them side by side as hosted APIs do. A backend
    that knows its own speed-up (a model batched in this process) states it directly.
    """

    parallel_gain: float | None = None
    prefill: bool | None = None
    """Continues a prefilled assistant message (checked: the reply carried on from it)."""
    n: bool | None = None
    """Returns ``n`` samples from one request."""
    streamed_usage: bool | None = None
    """Reports token usage at the end of a stream."""
    source: ProfileSource = "assumed"
    """declared (given by the user or known to the backend), probed (measured by a few
    cheap calls), observed (learned from real calls), assumed (nothing known yet)."""
    probe_calls: int | None = None
    """How many calls the parallel gain was measured with."""
    notes: tuple[str, ...] = ()
    """What the probe or real calls found worth saying (e.g. "--prefill was ignored")."""
    measured_at: float | None = None
    """Wall-clock time (``time.time()``) of the measurement, for caches."""
    sot_min_gain: float | None = None
    """The parallel gain SoT needs on this backend to beat a direct answer, where it
    is known to differ from ``SERIAL_GAIN`` (a model batched in this process)."""

    @property
    def serialises(self) -> bool:
        """The server was seen to run one call at a time."""
        return self.parallel_gain is not None and self.parallel_gain < SERIAL_GAIN

    @property
    def sot_pays(self) -> bool:
        """Skeleton-of-Thought's parallel points can beat a direct answer here."""
        needed = self.sot_min_gain if self.sot_min_gain is not None else SERIAL_GAIN
        return self.parallel_gain is None or self.parallel_gain >= needed

    def replace(self, **changes: Any) -> ServerProfile:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerProfile:
        """The profile from its ``to_dict`` form (or a user's JSON); unknown keys refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigurationError(
                f"a server profile has no field {', '.join(map(repr, unknown))}; its fields "
                f"are {', '.join(sorted(names))}"
            )
        values = dict(data)
        if "notes" in values:
            values["notes"] = tuple(values["notes"] or ())
        gain = values.get("parallel_gain")
        if gain is not None and (not isinstance(gain, int | float) or gain <= 0):
            raise ConfigurationError(f"parallel_gain must be a positive number, got {gain!r}")
        values.setdefault("source", "declared")
        return cls(**values)

    def describe(self) -> str:
        """One line for people: what is known and how it was learned."""

        def yes_no(value: bool | None) -> str:
            return "unknown" if value is None else "yes" if value else "no"

        if self.parallel_gain is None:
            parallel = "concurrency unknown (assumed concurrent)"
        elif self.serialises:
            parallel = f"runs one call at a time (parallel gain {self.parallel_gain:.2f}x)"
        else:
            calls = f" with {self.probe_calls} calls" if self.probe_calls else ""
            parallel = f"runs calls side by side (parallel gain {self.parallel_gain:.2f}x{calls})"
        return (
            f"{parallel}; prefill: {yes_no(self.prefill)}; n: {yes_no(self.n)}; "
            f"streamed usage: {yes_no(self.streamed_usage)} ({self.source})"
        )


@runtime_checkable
class Backend(Protocol):
    name: str
    model: str
    capabilities: Capabilities
    limiter: Limiter

    def estimate_tokens(self, request: Request) -> int: ...

    async def complete(self, request: Request) -> Completion: ...

    def stream(self, request: Request) -> AsyncIterator[StreamItem]: ...

    async def profile(self) -> ServerProfile: ...

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
    known_profile: ServerProfile | None = None
    """Set by a backend (or its user) that knows its server; ``profile()`` returns it."""

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

    async def profile(self) -> ServerProfile:
        """What this backend's server does; by default what its capabilities say.

        A backend that knows itself overrides this (or sets ``known_profile``) and
        returns its profile without any call; ``OpenAIBackend`` measures an unknown
        server once, the first time it is asked.
        """
        if self.known_profile is not None:
            return self.known_profile
        caps = self.capabilities
        return ServerProfile(prefill=caps.prefill, n=caps.n)

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
        self.limiter = backend.limiter

    @property
    def capabilities(self) -> Capabilities:
        # Read through: a backend adapts its capabilities once it has measured its server.
        return self.backend.capabilities

    def _ask(self, request: Request) -> Request:
        return request if request.model else dataclasses.replace(request, model=self.model)

    def estimate_tokens(self, request: Request) -> int:
        return self.backend.estimate_tokens(self._ask(request))

    async def complete(self, request: Request) -> Completion:
        return await self.backend.complete(self._ask(request))

    def stream(self, request: Request) -> AsyncIterator[StreamItem]:
        return self.backend.stream(self._ask(request))

    async def profile(self) -> ServerProfile:
        # The same server: what it does with one model it does with another.
        return await self.backend.profile()

    async def aclose(self) -> None:
        await self.backend.aclose()

    def __repr__(self) -> str:
        return f"ModelView({self.backend!r}, model={self.model!r})"
