"""What can be asked for: model names, and the strategy a name picks.

A bare ``<model>`` is a direct call, passed through as it is; ``<strategy>/<model>``
answers with that strategy (``sot/gpt-4o-mini``, ``auto/gpt-4o-mini``, and every other
name of ``sotflow.strategies.registry``). ``direct/<model>`` is the bare model too.
A name that is both (an upstream model called ``sot/x``) is the upstream's model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..strategies.registry import STRATEGY_NAMES

__all__ = ["STRATEGIES", "Catalog", "ModelNotFound", "Target", "fetch_models"]

STRATEGIES = STRATEGY_NAMES
"""The strategy prefixes, in the registry's order."""


class ModelNotFound(LookupError):
    """A model name the server does not serve; the message lists what it does."""


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    """The name as asked for: the ``model`` of the response."""
    model: str
    """The model that answers."""
    strategy: str | None
    """None for a direct call passed through as it is."""


class Catalog:
    """The served models (``None``: whatever the upstream serves; it is asked as named)."""

    def __init__(self, models: Sequence[str] | None) -> None:
        self.models = tuple(dict.fromkeys(models)) if models is not None else None
        self._known = frozenset(self.models or ())

    def _served(self, model: str) -> bool:
        return self.models is None or model in self._known

    def resolve(self, name: str) -> Target:
        if name in self._known:
            return Target(name, name, None)
        prefix, _, model = name.partition("/")
        if model and prefix in STRATEGIES and self._served(model):
            return Target(name, model, None if prefix == "direct" else prefix)
        if self.models is None and not (model and prefix in STRATEGIES):
            return Target(name, name, None)
        raise ModelNotFound(self._not_found(name))

    def _not_found(self, name: str) -> str:
        models = self.models or ()
        shown = ", ".join(models[:20]) + (
            f" and {len(models) - 20} more" if len(models) > 20 else ""
        )
        return (
            f"the model {name!r} is not served here; served models: {shown or '(none)'}. Ask for "
            f"a model as it is, or as <strategy>/<model> with a strategy among "
            f"{', '.join(STRATEGIES)} (e.g. sot/{models[0] if models else 'MODEL'})"
        )

    def names(self) -> list[str]:
        """Every name that can be asked for, each model first bare, then per strategy."""
        out = []
        for model in self.models or ():
            out.append(model)
            out.extend(f"{strategy}/{model}" for strategy in STRATEGIES)
        return out

    def entry(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "sotflow"}


def models_from_listing(data: Any) -> list[str] | None:
    """The model ids of a ``GET /models`` answer; ``None`` if it is not one."""
    items = data.get("data") if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        return None
    ids = [item.get("id") for item in items if isinstance(item, Mapping)]
    return [i for i in ids if isinstance(i, str) and i]


async def fetch_models(base_url: str, api_key: str | None, timeout_s: float = 15.0) -> list[str]:
    """Ask an OpenAI-compatible API which models it serves (``GET {base_url}/models``).

    Raises ``OSError`` (connection), ``ValueError`` (not a model listing); an error
    never carries the key.
    """
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{base_url.rstrip('/')}/models", headers=headers) as response,
        ):
            if response.status >= 400:
                raise ValueError(f"GET /models answered HTTP {response.status}")
            data = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OSError(f"GET /models failed: {type(exc).__name__}") from None
    models = models_from_listing(data)
    if models is None:
        raise ValueError("GET /models did not answer with a model listing")
    return models
