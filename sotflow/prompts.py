"""Prompt templates: plain text files, shipped in the wheel, overridable per use.

Each template is a file ``<name>.txt`` with ``$placeholders`` (``string.Template``
syntax; write ``$$`` for a literal dollar). A template is looked up, in order, in the
``overrides`` given to a strategy, in a ``directory`` given to it, in the directory
named by ``SOTFLOW_PROMPTS_DIR``, and finally among the templates shipped with sotflow.
"""

from __future__ import annotations

import os
import string
from collections.abc import Collection, Mapping
from importlib import resources
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["Prompts", "shipped_prompts_dir"]


def shipped_prompts_dir() -> Path:
    """Where the built-in templates are: inside the wheel, or the source checkout."""
    packaged = Path(str(resources.files("sotflow"))) / "_prompts"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "prompts"


class Prompts:
    """A set of named templates with overrides."""

    def __init__(
        self,
        overrides: Mapping[str, str] | None = None,
        directory: str | os.PathLike[str] | None = None,
        *,
        uses: Collection[str] | None = None,
        owner: str = "this strategy",
    ) -> None:
        self.overrides = dict(overrides or {})
        unknown = sorted(set(self.overrides) - set(uses)) if uses is not None else []
        if unknown:
            # A misspelt name would otherwise be ignored without a word, and the user
            # would believe the shipped prompt had been replaced.
            raise ConfigurationError(
                f"{owner} has no prompt named {', '.join(map(repr, unknown))}; the prompts it "
                f"uses are {', '.join(sorted(uses or ()))} (a template's file name without .txt)"
            )
        env_dir = os.environ.get("SOTFLOW_PROMPTS_DIR")
        self.dirs = [Path(d) for d in (directory, env_dir) if d] + [shipped_prompts_dir()]
        for d in self.dirs[:-1]:
            if not d.is_dir():
                raise ConfigurationError(f"prompt directory {str(d)!r} does not exist")
        self._cache: dict[str, string.Template] = {}

    @classmethod
    def of(
        cls,
        prompts: Prompts | Mapping[str, str] | None,
        directory: str | os.PathLike[str] | None = None,
        *,
        uses: Collection[str],
        owner: str,
    ) -> Prompts:
        """A strategy's prompts: a ``Prompts`` as given (it may be shared, so its
        overrides are not checked here), or one made from overrides for ``uses``."""
        if isinstance(prompts, Prompts):
            return prompts
        return cls(prompts, directory, uses=uses, owner=owner)

    def text(self, name: str) -> str:
        if name in self.overrides:
            return self.overrides[name]
        for directory in self.dirs:
            path = directory / f"{name}.txt"
            if path.is_file():
                return path.read_text(encoding="utf-8").rstrip("\n")
        searched = ", ".join(str(d) for d in self.dirs)
        raise ConfigurationError(f"no prompt template named {name!r} (looked in {searched})")

    def has(self, name: str) -> bool:
        try:
            self.text(name)
        except ConfigurationError:
            return False
        return True

    def render(self, name: str, **values: object) -> str:
        template = self._cache.get(name)
        if template is None:
            template = self._cache[name] = string.Template(self.text(name))
        try:
            return template.substitute({k: str(v) for k, v in values.items()})
        except KeyError as exc:
            raise ConfigurationError(
                f"prompt template {name!r} uses ${exc.args[0]}, which is not provided here; "
                f"available: {', '.join('$' + k for k in sorted(values))}"
            ) from None
        except ValueError as exc:
            raise ConfigurationError(f"prompt template {name!r} is malformed: {exc}") from None
