"""Rows of a GGUF file's embedding and output tables, dequantised on demand.

Draft heads score their guesses with the model's vocabulary projection and read the
embedding of the token the model decided; llama.cpp does not hand out its weights, so
they are read from the file itself. The file is memory-mapped and only the rows asked
for are touched and dequantised (``gguf.quants``): never a float32 copy of a table.

The tensor directory is read here rather than with ``gguf.GGUFReader``, which turns
every metadata value (a vocabulary of 49,152 strings and its merges) into numpy
objects: 160 MB of memory for the two tables wanted here.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["GGUFTables", "read_tensor_directory"]

# GGUF metadata value types, and the byte size of the fixed-size ones.
_STRING, _ARRAY = 8, 9
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_ALIGNMENT_KEY = "general.alignment"


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dims: tuple[int, ...]
    """ggml order: ``dims[0]`` is a row's length."""
    type: int
    offset: int
    """From the start of the file."""


def _u32(f: BinaryIO) -> int:
    return int(struct.unpack("<I", f.read(4))[0])


def _u64(f: BinaryIO) -> int:
    return int(struct.unpack("<Q", f.read(8))[0])


def _string(f: BinaryIO) -> str:
    return f.read(_u64(f)).decode("utf-8", "replace")


def _skip(f: BinaryIO, kind: int) -> Any:
    """Read past one metadata value (returning it only when it is a small scalar)."""
    if kind == _STRING:
        f.seek(_u64(f), 1)
        return None
    if kind == _ARRAY:
        inner, count = _u32(f), _u64(f)
        if inner in _FIXED:
            f.seek(_FIXED[inner] * count, 1)
        else:
            for _ in range(count):
                _skip(f, inner)
        return None
    raw = f.read(_FIXED[kind])
    return int.from_bytes(raw, "little") if kind in (0, 2, 4, 10) else None


def read_tensor_directory(path: Path) -> dict[str, TensorEntry]:
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = _u32(f)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old")
        n_tensors, n_kv = _u64(f), _u64(f)
        alignment = 32
        for _ in range(n_kv):
            key = _string(f)
            value = _skip(f, _u32(f))
            if key == _ALIGNMENT_KEY and value:
                alignment = int(value)
        infos = []
        for _ in range(n_tensors):
            name = _string(f)
            dims = tuple(_u64(f) for _ in range(_u32(f)))
            infos.append((name, dims, _u32(f), _u64(f)))
        start = -(-f.tell() // alignment) * alignment
    return {n: TensorEntry(n, d, t, start + o) for n, d, t, o in infos}


class GGUFTables:
    def __init__(self, path: Path) -> None:
        tensors = read_tensor_directory(path)
        with path.open("rb") as file:  # the mapping outlives the file object
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self._embed = tensors["token_embd.weight"]
        # Tied models (SmolLM2) project with the embedding table itself.
        self._output = tensors.get("output.weight", self._embed)
        self._cache: dict[int, np.ndarray] = {}

    def _rows(self, entry: TensorEntry, ids: Sequence[int]) -> np.ndarray:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize

        kind = GGMLQuantizationType(entry.type)
        block, size = GGML_QUANT_SIZES[kind]
        row_bytes = entry.dims[0] // block * size
        rows = entry.dims[1] if len(entry.dims) > 1 else 1
        table = np.frombuffer(self._map, np.uint8, rows * row_bytes, entry.offset).reshape(
            rows, row_bytes
        )
        raw = table[np.asarray(list(ids), dtype=np.int64)]  # copies only these rows
        if kind == GGMLQuantizationType.F32:
            return raw.view(np.float32).copy()
        if kind == GGMLQuantizationType.F16:
            return raw.view(np.float16).astype(np.float32)
        return np.asarray(dequantize(raw, kind), dtype=np.float32).reshape(len(raw), -1)

    def output_rows(self, ids: Sequence[int]) -> np.ndarray:
        return self._rows(self._output, ids)

    def embedding_rows(self, ids: Sequence[int]) -> np.ndarray:
        # The heads ask for one row per greedy row and step: remember them.
        missing = [i for i in dict.fromkeys(ids) if i not in self._cache]
        if missing:
            for i, row in zip(missing, self._rows(self._embed, missing), strict=True):
                self._cache[i] = row
        if not ids:
            return np.zeros((0, self._embed.dims[0]), np.float32)
        return np.stack([self._cache[i] for i in ids])
