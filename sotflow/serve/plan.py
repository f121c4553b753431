"""From a checked call to what runs: a direct call as it is, or a strategy on a question.

A direct call (a bare model name, ``direct/<model>``, and every request with tools, a
tool choice, a response format or a tool-call history, whatever strategy was named)
is the client's request sent as it is, through the engine for its limits and retries.
A strategy answers the conversation as one question and samples with its own
settings: it takes ``temperature``, ``max_tokens`` (its settings, as the CLI's
``--temperature``/``--max-tokens``), ``stop`` (the answer ends at the first stop
sequence) and ``seed`` where it samples; any other sampling field is refused by name,
never dropped. Strategy options come in the body's ``sotflow`` object; only JSON
values a client may safely choose are taken (no paths, regexes or code).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..strategies.answers import EXTRACTORS
from ..strategies.base import Strategy
from ..strategies.direct import Passthrough
from ..strategies.registry import make_strategy
from ..types import Decision, Message, Request
from .catalog import Target
from .parse import BadRequest, ChatCall

__all__ = ["Plan", "Planner", "question_of"]


def _integer(low: int, high: int) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadRequest(f"sotflow.{name} must be an integer in [{low}, {high}]", "sotflow")
        return value

    return check


def _number(low: float, high: float) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not low <= value <= high:
            raise BadRequest(f"sotflow.{name} must be a number in [{low}, {high}]", "sotflow")
        return value

    return check


def _flag(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise BadRequest(f"sotflow.{name} must be true or false", "sotflow")
    return value


def _choice(*allowed: str) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value not in allowed:
            raise BadRequest(f"sotflow.{name} must be one of {', '.join(allowed)}", "sotflow")
        return value

    return check


_TOKENS = _integer(1, 65536)
_SOT = {
    "max_points": _integer(2, 50),
    "min_points": _integer(1, 50),
    "point_max_tokens": _TOKENS,
    "skeleton_max_tokens": _TOKENS,
}
# Per strategy, the options a client may set, each with its check. Bounds keep one
# request's fan-out (samples, tree breadth and depth) within reason.
OPTIONS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "direct": {},
    "sot": _SOT,
    "sot-dag": _SOT,
    "self-consistency": {
        "n": _integer(1, 32),
        "early_stop": _flag,
        "extract": _choice(*sorted(EXTRACTORS)),
    },
    "best-of-n": {"n": _integer(1, 16), "threshold": _number(0, 10)},
    "refine": {"max_rounds": _integer(0, 8), "critique_max_tokens": _TOKENS},
    "tree-search": {
        "breadth": _integer(1, 8),
        "depth": _integer(1, 8),
        "proposals": _integer(1, 8),
    },
    "auto": {"router": _choice("rules", "embedding")},
}
RUN_OPTIONS = ("budget", "deadline")
"""Options of every request: a token budget for the whole run, and a deadline (s)."""
_SEEDED = ("self-consistency", "best-of-n")


def question_of(messages: tuple[Message, ...]) -> str:
    """The conversation as the one question a strategy answers: system messages
    first, then the user's message, or the turns written out when there are several."""
    system = [m.content for m in messages if m.role == "system" and m.content.strip()]
    turns = [m for m in messages if m.role != "system"]
    if len(turns) == 1 and turns[0].role == "user":
        body = turns[0].content
    else:
        body = "\n".join(
            f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}" for m in turns
        )
    question = "\n\n".join([*system, body])
    if not question.strip():
        raise BadRequest("the conversation has no text to answer", "messages")
    return question


def _label(messages: tuple[Message, ...]) -> str:
    """What a direct call's answer and trace call the conversation."""
    for message in reversed(messages):
        if message.role == "user" and message.content.strip():
            return message.content
    return f"(a conversation of {len(messages)} messages)"


class DecisionTap:
    """A router that remembers its decision, so the response can name the strategy
    that answers before the answer is whole (a stream's headers)."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.decision: Decision | None = None

    async def decide(self, question: str) -> Decision:
        self.decision = await self.router.decide(question)
        return self.decision


@dataclass(frozen=True, slots=True)
class Plan:
    strategy: Strategy
    question: str
    label: str
    """The strategy's name, as the response headers give it."""
    direct: bool
    stops: tuple[str, ...] = ()
    """Stop sequences the answer is cut at (a direct call leaves them to the model)."""
    budget: int | None = None
    deadline: float | None = None
    tap: DecisionTap | None = None

    @property
    def answered_by(self) -> str:
        """The strategy that answers, as far as known now (``auto``: once it decided)."""
        if self.tap is not None and self.tap.decision is not None:
            return self.tap.decision.strategy
        return self.label


class Planner:
    """Builds plans; strategies are made once per setting and reused (they keep no state
    of a run), routers once per kind."""

    def __init__(self, *, tools: bool, router: str = "rules") -> None:
        self.tools = tools
        self.default_router = router
        self._routers: dict[str, Any] = {}
        self._strategies: dict[tuple[Any, ...], Strategy] = {}

    def router(self, kind: str) -> Any:
        router = self._routers.get(kind)
        if router is None:
            if kind == "embedding":
                from ..routing.embedding import EmbeddingRouter

                router = EmbeddingRouter()
            else:
                from ..routing.rules import RuleRouter

                router = RuleRouter()
            self._routers[kind] = router
        return router

    def plan(self, call: ChatCall, target: Target) -> Plan:
        request = call.request
        options = dict(call.options)
        run = {name: options.pop(name) for name in RUN_OPTIONS if name in options}
        budget = _integer(1, 2**31 - 1)("budget", run["budget"]) if "budget" in run else None
        deadline = _number(0.001, 86400)("deadline", run["deadline"]) if "deadline" in run else None
        fields = request.tool_fields()
        if not self.tools:
            # What a plain-text model cannot honour; "user" only informs, and is dropped.
            extra = dict(request.extra_body or {})
            extra.pop("user", None)
            request = _replace(request, extra_body=extra or None)
            fields = request.tool_fields()
            if fields:
                raise BadRequest(
                    f"{fields[0]} is not supported by the local model {target.model!r}: it "
                    f"writes plain text only (this request has {', '.join(fields)}). Drop "
                    "it, or serve an API that supports it with --upstream URL.",
                    fields[0].split("[")[0].split(" ")[0],
                )
        if target.strategy is None or fields:
            if options:
                raise BadRequest(
                    f"a direct call takes no strategy options (got {', '.join(sorted(options))}); "
                    f"ask for <strategy>/{target.model} to use them",
                    "sotflow",
                )
            return Plan(
                Passthrough(request), _label(request.messages), "direct", True, (), budget, deadline
            )
        return self._strategy_plan(call, request, target, options, budget, deadline)

    def _strategy_plan(
        self,
        call: ChatCall,
        request: Request,
        target: Target,
        options: dict[str, Any],
        budget: int | None,
        deadline: float | None,
    ) -> Plan:
        name = target.strategy
        assert name is not None
        allowed = OPTIONS[name]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            takes = ", ".join([*allowed, *RUN_OPTIONS])
            raise BadRequest(
                f"strategy {name!r} has no option {', '.join(map(repr, unknown))}; "
                f"it takes {takes}",
                "sotflow",
            )
        checked = {key: allowed[key](key, value) for key, value in options.items()}
        params = request.params
        refused = sorted(call.given - {"temperature"} - ({"seed"} if name in _SEEDED else set()))
        if refused:
            raise BadRequest(
                f"'{refused[0]}' applies to a direct call only: strategy {name!r} samples with "
                "its own settings (it takes temperature, max_tokens, stop"
                f"{' and seed' if name in _SEEDED else ''}). Ask for the bare model "
                f"{target.model!r}, or leave it out.",
                refused[0],
            )
        if request.prefill is not None:
            raise BadRequest(
                "'continue_final_message' applies to a direct call only; a strategy writes "
                "its own answer",
                "continue_final_message",
            )
        extra = dict(request.extra_body or {})
        extra.pop("user", None)
        if extra:
            first = sorted(extra)[0]
            raise BadRequest(
                f"'{first}' applies to a direct call only: strategy {name!r} cannot pass it "
                f"to its calls. Ask for the bare model {target.model!r}, or leave it out.",
                first,
            )
        router_kind = checked.pop("router", self.default_router) if name == "auto" else None
        if params.seed is not None:
            checked["seed"] = params.seed
        strategy = self._make(name, params.temperature, params.max_tokens, checked, router_kind)
        tap = None
        if name == "auto":
            tap = DecisionTap(strategy.router)  # type: ignore[attr-defined]
            strategy = copy.copy(strategy)
            strategy.router = tap  # type: ignore[attr-defined]
        return Plan(
            strategy,
            question_of(request.messages),
            name,
            False,
            params.stop,
            budget,
            deadline,
            tap,
        )

    def _make(
        self,
        name: str,
        temperature: float | None,
        max_tokens: int | None,
        options: Mapping[str, Any],
        router_kind: str | None,
    ) -> Strategy:
        key = (name, temperature, max_tokens, tuple(sorted(options.items())), router_kind)
        strategy = self._strategies.get(key)
        if strategy is None:
            settings: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
            if router_kind is not None:
                settings["router"] = self.router(router_kind)
            try:
                strategy = make_strategy(name, options=options, **settings)
            except ConfigurationError as exc:
                raise BadRequest(str(exc), "sotflow") from None
            if len(self._strategies) >= 256:
                self._strategies.clear()  # many settings seen: start over, no unbounded growth
            self._strategies[key] = strategy
        return strategy


def _replace(request: Request, **changes: Any) -> Request:
    import dataclasses

    return dataclasses.replace(request, **changes)
