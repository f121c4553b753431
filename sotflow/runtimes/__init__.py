"""Model runtimes for the local backend: llama.cpp (GGUF on the CPU, the default) and
torch (GPUs, Hugging Face folders, and the exact reference).

Both implement ``sotflow.decoding.runtime.Runtime``, so the decoders run unchanged on
either; ``open_model`` picks and loads one. Nothing here imports torch unless the torch
runtime is chosen, and a llama.cpp process never loads it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigurationError
from .codec import Codec
from .sources import ModelSource, has_module, resolve_model

__all__ = ["RUNTIMES", "LoadedRuntime", "RuntimeName", "choose_runtime", "open_model"]

RuntimeName = Literal["auto", "llama.cpp", "torch"]
RUNTIMES: tuple[str, ...] = ("auto", "llama.cpp", "torch")

log = logging.getLogger("sotflow")


@dataclass(slots=True)
class LoadedRuntime:
    runtime: Any
    """A ``decoding.runtime.Runtime``."""
    codec: Codec
    name: str
    """A short display name: the alias, or the file/folder name."""
    source: ModelSource | None = None
    load_seconds: float = 0.0
    note: str = ""
    """How it was loaded, for a status line (``"llama.cpp, 2 threads"``)."""
    hf_model: Any = None
    """The transformers model (torch runtime only)."""


def choose_runtime(source: ModelSource, runtime: str, device: str) -> str:
    """``auto``: llama.cpp for a GGUF file on the CPU, torch for everything else."""
    if runtime not in RUNTIMES:
        raise ConfigurationError(f"unknown runtime {runtime!r}; use one of {list(RUNTIMES)}")
    if runtime != "auto":
        if runtime == "llama.cpp" and source.kind != "gguf":
            raise ConfigurationError(
                f"the llama.cpp runtime runs .gguf files; {source.location} is a "
                f"{source.kind}: pass runtime='torch' or a GGUF file"
            )
        if runtime == "llama.cpp" and device not in ("auto", "cpu"):
            raise ConfigurationError(
                f"the llama.cpp runtime here runs on the CPU; device={device!r} needs "
                "runtime='torch'"
            )
        return runtime
    if source.kind == "gguf" and device in ("auto", "cpu"):
        if has_module("llama_cpp"):
            return "llama.cpp"
        if has_module("torch") and has_module("transformers"):
            log.warning(
                "llama-cpp-python is not installed, so %s runs on the torch runtime, "
                "several times slower on a CPU: pip install llama-cpp-python",
                source.name,
            )
            return "torch"
    return "torch"


def open_model(
    model: str,
    *,
    runtime: str = "auto",
    device: str = "auto",
    dtype: Any = None,
    threads: int | None = None,
    context: int | None = None,
    max_sequences: int = 64,
) -> LoadedRuntime:
    """Resolve ``model`` (alias, .gguf, folder, hub id) and load it on a runtime.

    Call it on the model thread (``decoding.threads``): torch's loading and packing,
    like every later step, belong there.
    """
    began = time.perf_counter()
    source = resolve_model(model)
    chosen = choose_runtime(source, runtime, device)
    if chosen == "llama.cpp":
        from .llama_cpp.codec import LlamaCppCodec
        from .llama_cpp.runtime import LlamaCppRuntime

        rt = LlamaCppRuntime(
            source.path, threads=threads, context=context, max_sequences=max_sequences
        )
        return LoadedRuntime(
            rt,
            LlamaCppCodec(rt),
            source.name,
            source,
            time.perf_counter() - began,
            f"llama.cpp, {rt.threads} threads, {rt.cells} cache cells",
        )
    from .torch.loading import load_model

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    loaded = load_model(model, device=device, dtype=dtype)
    result = torch_runtime(
        loaded.model, loaded.tokenizer, name=source.name, max_sequences=max_sequences
    )
    result.source = source
    result.load_seconds = time.perf_counter() - began
    result.note = f"torch on {result.runtime.info.device}" + (
        ", from the dequantised cache" if loaded.from_cache else ""
    )
    return result


def torch_runtime(
    hf_model: Any, tokenizer: Any, *, name: str = "local", max_sequences: int = 64
) -> LoadedRuntime:
    """A loaded ``transformers`` causal LM and its tokenizer on the torch runtime."""
    from .torch.codec import HFCodec, eos_ids
    from .torch.forward import DecoderModel
    from .torch.runtime import TorchRuntime

    try:
        model = DecoderModel(hf_model)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    rt = TorchRuntime(model, max_sequences=max_sequences)
    codec = HFCodec(tokenizer, eos_ids(hf_model, tokenizer))
    return LoadedRuntime(rt, codec, name, None, 0.0, f"torch on {rt.info.device}", hf_model)
