"""Strategies by name, for the CLI, the server and other callers that configure by string.

``settings`` are the few every strategy reads the same way (``max_tokens``,
``temperature``, ``router``); ``options`` are keyword arguments of the strategy's own
constructor (``max_points`` for SoT, ``n`` for self-consistency, ...), passed through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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

Factory = Callable[[dict[str, Any], dict[str, Any]], Strategy]


def _direct(s: dict[str, Any], o: dict[str, Any]) -> Strategy:
    return Direct(max_tokens=s.get("max_tokens") or 512, temperature=s.get("temperature"), **o)


def _sot(dependencies: bool) -> Factory:
    def make(s: dict[str, Any], o: dict[str, Any]) -> Strategy:
        return SkeletonOfThought(
            dependencies=dependencies,
            temperature=s.get("temperature"),
            fallback_max_tokens=s.get("max_tokens") or 512,
            **o,
        )

    return make


def _given(s: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    # Sampling strategies keep their own temperature (> 0) unless one is given.
    return {**{k: s[k] for k in ("max_tokens", "temperature") if s.get(k) is not None}, **o}


def _best_of_n(s: dict[str, Any], o: dict[str, Any]) -> Strategy:
    options = dict(o)
    return BestOfN(options.pop("n", 4), options.pop("scorer", "judge"), **_given(s, options))


def _auto(s: dict[str, Any], o: dict[str, Any]) -> Strategy:
    if o:
        raise ConfigurationError(
            f"'auto' takes no options of its own (got {', '.join(map(repr, sorted(o)))}); "
            "it takes a router"
        )
    strategies = {name: make(s, {}) for name, make in _FACTORIES.items() if name != "auto"}
    return Routed(s.get("router"), strategies=strategies)


_FACTORIES: dict[str, Factory] = {
    "auto": _auto,
    "sot": _sot(False),
    "sot-dag": _sot(True),
    "direct": _direct,
    "self-consistency": lambda s, o: SelfConsistency(**_given(s, o)),
    "best-of-n": _best_of_n,
    "refine": lambda s, o: Refine(**_given(s, o)),
    "tree-search": lambda s, o: TreeSearch(**_given(s, o)),
}

STRATEGY_NAMES = tuple(_FACTORIES)


def make_strategy(
    name: str, *, options: Mapping[str, Any] | None = None, **settings: Any
) -> Strategy:
    """Build a strategy by name. ``settings``: max_tokens, temperature, router;
    ``options``: the strategy's own constructor arguments."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigurationError(
            f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGY_NAMES)}"
        )
    try:
        return factory(settings, dict(options or {}))
    except TypeError as exc:
        # A misspelt option: the constructor's own words name it.
        raise ConfigurationError(f"strategy {name!r}: {exc}") from None
