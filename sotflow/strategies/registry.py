"""Strategies by name, for the CLI and other callers that configure by string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from .base import Strategy
from .best_of_n import BestOfN
from .direct import Direct
from .refine import Refine
from .routed import Routed
from .self_consistency import SelfConsistency
from .skeleton import SkeletonOfThought
from .tree_search import TreeSearch

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


def _given(s: dict[str, Any]) -> dict[str, Any]:
    # Sampling strategies keep their own temperature (> 0) unless one is given.
    return {k: s[k] for k in ("max_tokens", "temperature") if s.get(k) is not None}


def _auto(s: dict[str, Any]) -> Strategy:
    strategies = {name: make(s) for name, make in _FACTORIES.items() if name != "auto"}
    return Routed(s.get("router"), strategies=strategies)


_FACTORIES: dict[str, Factory] = {
    "auto": _auto,
    "sot": _sot(False),
    "sot-dag": _sot(True),
    "direct": _direct,
    "self-consistency": lambda s: SelfConsistency(**_given(s)),
    "best-of-n": lambda s: BestOfN(4, "judge", **_given(s)),
    "refine": lambda s: Refine(**_given(s)),
    "tree-search": lambda s: TreeSearch(**_given(s)),
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
