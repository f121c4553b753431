"""Strategies by name, for the CLI and other callers that configure by string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from .base import Strategy
from .direct import Direct
from .routed import Routed
from .skeleton import SkeletonOfThought

__all__ = ["STRATEGY_NAMES", "make_strategy"]

Factory = Callable[[dict[str, Any]], Strategy]


def _direct(s: dict[str, Any]) -> Strategy:
    return Direct(max_tokens=s.get("max_tokens") or 512, temperature=s.get("temperature"))


def _sot(dependencies: bool) -> Factory:
    def make(s: dict[str, Any]) -> Strategy:
        return SkeletonOfThought(
            dependencies=dependencies,
            temperature=s.get("temperature"),
            fallback_max_tokens=s.get("max_tokens") or 512,
        )

    return make


def _auto(s: dict[str, Any]) -> Strategy:
    strategies = {name: make(s) for name, make in _FACTORIES.items() if name != "auto"}
    return Routed(s.get("router"), strategies=strategies)


_FACTORIES: dict[str, Factory] = {
    "auto": _auto,
    "sot": _sot(False),
    "sot-dag": _sot(True),
    "direct": _direct,
}

STRATEGY_NAMES = tuple(_FACTORIES)


def make_strategy(name: str, **settings: Any) -> Strategy:
    """Build a strategy by name. ``settings``: max_tokens, temperature, router."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigurationError(
            f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGY_NAMES)}"
        )
    return factory(settings)
