"""Load a model for the torch runtime, and cache dequantised GGUF weights.

transformers dequantises a GGUF file to float32, which is slow (~25 s for SmolLM2-135M),
so the float weights, the config and the tokenizer are cached as plain safetensors in the
user cache dir, under a digest of the file's *content* (``sources.content_digest``): one
cache however many places the same file is installed in. The cache is written to a
temporary folder and renamed into place, so a crash never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError
from ..sources import ModelSource, cache_root, content_digest, has_module, resolve_model

if TYPE_CHECKING:
    import torch

__all__ = [
    "LoadedModel",
    "load_model",
    "require_torch_extra",
    "resolve_device",
    "resolve_dtype",
]

CACHE_FORMAT = 2
"""Bump when the cache layout changes so old caches are rebuilt, not misread."""

LOCAL_EXTRA_HINT = "pip install 'sotflow[local]'"


@dataclass(slots=True)
class LoadedModel:
    model: Any
    """A transformers ``PreTrainedModel`` in eval mode."""
    tokenizer: Any
    source: ModelSource
    from_cache: bool = False


def require_torch_extra() -> None:
    """Raise a ``ConfigurationError`` with the install command if torch/transformers are missing."""
    missing = [m for m in ("torch", "transformers", "safetensors") if not has_module(m)]
    if missing:
        raise ConfigurationError(
            f"the torch runtime needs {', '.join(missing)}, which is not installed; "
            f"install the extra with: {LOCAL_EXTRA_HINT}"
        )


def _cache_dir_for(source: ModelSource) -> Path:
    file = source.path
    return cache_root() / "models" / f"{file.stem}-{content_digest(file)}-v{CACHE_FORMAT}"


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
    require_torch_extra()
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
