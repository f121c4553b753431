"""The llama.cpp runtime: ``decoding.runtime.Runtime`` over llama-cpp-python's batch API.

One llama.cpp context with a *unified* key/value cache serves every sequence: a cache
cell holds one token's keys and values and the set of sequences it belongs to, so a
shared prefix is a ``seq_cp`` (no copy of data, only of membership) and many sequences
run in one ``llama_decode``.

A tree of tokens (``TokenBatch.parents``) is turned into llama.cpp's terms, sequence
sets: a sequence whose tokens in the batch form a chain (a prompt chunk, a plain step,
one candidate) runs on its own sequence id. A real tree gets one temporary sequence per
leaf, each a copy of the sequence's cache; every token belongs to the temporary
sequences of the leaves below it, and attends through the first of them. llama.cpp
lets a token see the cells of its (first) sequence at positions up to its own, which
in a root-to-leaf path are exactly its ancestors: the tree mask. ``settle`` copies the
kept path from its leaf's temporary sequence back to the sequence and drops the
temporaries (rejected branches vanish with them).

Exactness: the decoders promise the runtime's plain greedy output whatever the batch,
and llama.cpp's arithmetic is not the same for every batch shape (its quantised matmuls
turn the tiniest difference into a different rounding of the next layer's
activations). Measured on the bundled model, three settings make it so:

- flash attention: each query sums its own cache cells one by one, skipping the cells
  it may not see, so other sequences' cells and the batch around it change nothing;
- fewer than 64 tokens an evaluation (``MAX_BATCH_TOKENS``): from 64 queries on,
  llama.cpp switches to a tiled attention kernel whose sums differ;
- every sequence's cells in position order, because those sums run in cell order:
  llama.cpp puts new tokens into the first free cells, so a cell freed *below* a live
  sequence's newest cell would later take one of its tokens out of order. So nothing is
  freed while sequences live: rejected draft tokens and finished sequences are parked
  on a junk sequence no token ever attends through, and the cache is cleared when the
  last sequence leaves. When parked cells fill it, the decoder re-prefills its rows in a
  fresh cache (``CacheFullError``).

With these, plain greedy here equals llama-cpp-python's own, a batch of 8 equals each
request alone, and every decoder equals plain, token for token (tests on SmolLM2).

llama.cpp prints to stderr as it loads; that is silenced unless ``SOTFLOW_VERBOSE`` is
set, and its last error lines are kept for the messages raised here.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import os
import platform
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...decoding.batched import CacheFullError
from ...decoding.runtime import RuntimeInfo, TokenBatch
from ...errors import ConfigurationError
from ..sources import content_digest

__all__ = ["DEFAULT_CONTEXT", "LlamaCppRuntime", "llama_cpp_module"]

DEFAULT_CONTEXT = 4096
"""Cache cells of the unified cache (all sequences together), unless the model's own
training context is shorter. SmolLM2-135M: 23 KB a cell, so 4096 cells are ~94 MB."""

LLAMA_MAX_SEQ = 256
"""llama.cpp's own limit on sequence ids."""

MAX_SEQUENCES = 64
"""Sequence ids the decoder may use for its rows, by default."""

MAX_BATCH_TOKENS = 63
"""Tokens an evaluation may hold and stay exact (the module docstring): llama.cpp's CPU
flash attention tiles 64 queries and more (``GGML_FA_TILE_Q``)."""

DRAFT_SEQUENCES = 64
"""Temporary sequences for draft trees (one per leaf, over all rows of a step). Each
sequence id costs llama.cpp a logits row of its output buffer (196 KB for SmolLM2), so
it is not set to the maximum."""

INSTALL_HINT = (
    "pip install llama-cpp-python (it builds llama.cpp from source, a few minutes on "
    "2 cores; prebuilt CPU wheels: pip install llama-cpp-python --extra-index-url "
    "https://abetlen.github.io/llama-cpp-python/whl/cpu)"
)


def llama_cpp_module() -> Any:
    """``llama_cpp``, or a ``ConfigurationError`` that says how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigurationError(
            f"the llama.cpp runtime needs llama-cpp-python, which is not installed "
            f"({exc}); install it with: {INSTALL_HINT}; or pass runtime='torch'"
        ) from exc
    # llama-cpp-python opens /dev/null twice at import (for its high-level Llama class,
    # unused here) and never closes it: Python warns about both files at exit.
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(getattr(llama_cpp, "_utils", None), name, None)
        if handle is not None and not getattr(handle, "_sotflow_closes", False):
            handle._sotflow_closes = True
            atexit.register(handle.close)
    return llama_cpp


class _Log:
    """Keeps llama.cpp quiet and remembers its last lines for error messages."""

    def __init__(self, lib: Any) -> None:
        self.lines: list[str] = []
        self.verbose = bool(os.environ.get("SOTFLOW_VERBOSE"))

        @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
        def callback(level: int, text: bytes | None, user: object) -> None:
            line = (text or b"").decode("utf-8", "replace")
            self.lines = [*self.lines[-20:], line]
            if self.verbose:
                os.write(2, text or b"")

        self.callback = callback  # kept alive: llama.cpp holds the pointer
        lib.llama_log_set(callback, None)

    def last_error(self) -> str:
        text = "".join(self.lines).strip().splitlines()
        errors = [t for t in text if "error" in t.lower() or "failed" in t.lower()]
        return (errors or text or ["(llama.cpp said nothing)"])[-1].strip()


_setup_lock = threading.Lock()
_shared: dict[str, Any] = {}


def _library() -> tuple[Any, _Log]:
    with _setup_lock:
        if "lib" not in _shared:
            lib = llama_cpp_module()
            _shared["log"] = _Log(lib)
            lib.llama_backend_init()
            _shared["lib"] = lib
        return _shared["lib"], _shared["log"]


@dataclass(slots=True)
class _Seq:
    """A sequence's part of the last batch."""

    seq: int
    start: int
    """The sequence's cached length when the batch ran: its root's position."""
    indices: list[int]
    temps: list[int] = field(default_factory=list)
    """One temporary sequence per leaf (empty for a chain)."""
    sets: dict[int, list[int]] = field(default_factory=dict)
    """Batch index -> the temporary sequences of the leaves below (or at) it."""


class _Output:
    def __init__(
        self, logits: np.ndarray, hidden: np.ndarray | None, rows: np.ndarray | None
    ) -> None:
        self._logits = logits  # [n_out, V], a view of llama.cpp's buffer
        self._hidden = hidden  # [n_out, C]
        self._rows = rows  # wanted output -> buffer row (None: the same)

    def _pick(self, rows: Sequence[int]) -> np.ndarray:
        index = np.asarray(rows, dtype=np.int64)
        return index if self._rows is None else self._rows[index]

    def argmax(self) -> list[int]:
        if self._rows is None:
            return self._logits.argmax(-1).tolist()  # type: ignore[no-any-return]
        return self._logits[self._rows].argmax(-1).tolist()  # type: ignore[no-any-return]

    def logits(self, rows: Sequence[int]) -> np.ndarray:
        return self._logits[self._pick(rows)].astype(np.float32)

    def hidden(self, rows: Sequence[int]) -> np.ndarray:
        assert self._hidden is not None, "evaluate(..., hidden=True) gives hidden states"
        return self._hidden[self._pick(rows)].astype(np.float32)


class _Batch:
    """A ``llama_batch`` whose arrays are numpy buffers, filled without per-element
    ctypes calls."""

    def __init__(self, lib: Any, capacity: int, seqs_per_token: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.n_seq_id = np.zeros(capacity, np.int32)
        self.seq_ids = np.zeros((capacity, seqs_per_token), np.int32)
        self.logits = np.zeros(capacity, np.int8)
        row = ctypes.POINTER(ctypes.c_int32)
        self._rows = (row * capacity)(
            *[
                ctypes.cast(self.seq_ids[i].ctypes.data, row)
                for i in range(capacity)  # one pointer per token, into its row
            ]
        )
        self.struct = lib.llama_batch()
        self.struct.token = self.token.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.embd = None
        self.struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.seq_id = ctypes.cast(self._rows, type(self.struct.seq_id))
        self.struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))


class LlamaCppRuntime:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        context: int | None = None,
        max_sequences: int = MAX_SEQUENCES,
        draft_sequences: int = DRAFT_SEQUENCES,
        batch_size: int = MAX_BATCH_TOKENS + 1,
        flash_attention: bool = True,
    ) -> None:
        lib, log = _library()
        self._lib = lib
        self._log = log
        self.path = Path(path)
        params = lib.llama_model_default_params()
        model = lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not model:
            raise ConfigurationError(
                f"llama.cpp cannot load {self.path}: {log.last_error()}; pass a GGUF "
                "language model of an architecture llama.cpp supports, or runtime='torch'"
            )
        self._model = model
        try:
            self._check_model()
            self.threads = threads or max(1, min(os.cpu_count() or 1, 8))
            n_ctx_train = int(lib.llama_model_n_ctx_train(model))
            cells = context or min(DEFAULT_CONTEXT, n_ctx_train)
            if max_sequences < 1 or draft_sequences < 0:
                raise ConfigurationError("max_sequences must be positive, draft_sequences >= 0")
            if max_sequences + draft_sequences > LLAMA_MAX_SEQ:
                raise ConfigurationError(
                    f"max_sequences + draft_sequences must be at most {LLAMA_MAX_SEQ}, got "
                    f"{max_sequences} + {draft_sequences}"
                )
            self.max_sequences = max_sequences
            cp = lib.llama_context_default_params()
            cp.n_ctx = cells
            cp.n_batch = batch_size
            cp.n_ubatch = batch_size
            cp.n_seq_max = max_sequences + draft_sequences + 1  # the last one is the junk
            # llama.cpp sizes its logits buffer for a row per sequence id at least.
            cp.n_outputs_max = max(batch_size, cp.n_seq_max)
            cp.kv_unified = True  # sequence sets, free prefix sharing (module docstring)
            cp.n_threads = self.threads
            cp.n_threads_batch = self.threads
            cp.embeddings = False
            cp.flash_attn_type = (
                lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if flash_attention
                else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
            ctx = lib.llama_init_from_model(model, cp)
            if not ctx:
                raise ConfigurationError(
                    f"llama.cpp cannot make a context of {cells} cells for {self.path}: "
                    f"{log.last_error()}; try a smaller context="
                )
        except BaseException:
            lib.llama_model_free(model)
            raise
        self._ctx = ctx
        self._memory = lib.llama_get_memory(ctx)
        self.vocab = lib.llama_model_get_vocab(model)
        self.batch_size = batch_size
        self.cells = cells
        self._embeddings = False
        self._batch = _Batch(lib, batch_size, draft_sequences + 1)
        self._lengths: dict[int, int] = {}
        self._last: list[_Seq] = []
        self._free_temps = list(range(max_sequences + draft_sequences - 1, max_sequences - 1, -1))
        self._junk = max_sequences + draft_sequences
        self.parked = 0
        """Tokens parked on the junk sequence since the cache was last cleared."""
        self._weights: Any = None
        self.info = RuntimeInfo(
            name="llama.cpp",
            vocab_size=int(lib.llama_vocab_n_tokens(self.vocab)),
            hidden_size=int(lib.llama_model_n_embd(model)),
            layers=int(lib.llama_model_n_layer(model)),
            context_length=min(cells, n_ctx_train),
            max_sequences=self.max_sequences,
            max_branches=draft_sequences,
            max_batch_tokens=MAX_BATCH_TOKENS,
            device="cpu",
            fingerprint=self._fingerprint(),
        )

    def _check_model(self) -> None:
        lib, model = self._lib, self._model
        arch = self.metadata("general.architecture") or "?"
        if not lib.llama_model_has_decoder(model) or lib.llama_model_has_encoder(model):
            raise ConfigurationError(
                f"{self.path.name} is a {arch!r} model without a text decoder (an encoder "
                "or embedding model?); pass a causal language model"
            )
        if lib.llama_model_is_recurrent(model) or lib.llama_model_is_hybrid(model):
            raise ConfigurationError(
                f"{self.path.name} is a recurrent {arch!r} model; the llama.cpp runtime "
                "needs an attention-only model (its decoders fork and trim sequences)"
            )
        pooling = self.metadata(f"{arch}.pooling_type")
        if pooling and pooling.strip() not in ("0", "-1"):
            raise ConfigurationError(
                f"{self.path.name} is an embedding model ({arch!r}, pooled output), not a "
                "causal language model"
            )

    def metadata(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1 << 16)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        if n < 0:
            return None
        return buffer.value.decode("utf-8", "replace")

    def _fingerprint(self) -> str:
        setting = f"{self.threads}|{platform.machine()}|{os.cpu_count()}|{self.cells}"
        system = self._lib.llama_print_system_info() or b""
        digest = hashlib.sha256((content_digest(self.path) + setting).encode() + system).hexdigest()
        return "llama.cpp-" + digest[:16]

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown, nothing to tell
            self.close()

    # ----------------------------------------------------------------- sequences
    def _temp(self) -> int:
        if not self._free_temps:
            raise CacheFullError("no sequence ids left for the draft trees of one step")
        return self._free_temps.pop()

    def _rm(self, seq: int, p0: int, p1: int) -> None:
        self._lib.llama_memory_seq_rm(self._memory, seq, p0, p1)

    def _park(self, seq: int, p0: int) -> None:
        """Move ``seq``'s cells from position ``p0`` on to the junk sequence: out of
        every live sequence's sight, but still taken (module docstring)."""
        lib = self._lib
        lib.llama_memory_seq_cp(self._memory, seq, self._junk, p0, -1)
        self._rm(seq, p0, -1)

    def fork(self, src: int, dst: int, length: int) -> None:
        if dst in self._lengths:
            self.drop(dst)
        if length > 0:
            self._lib.llama_memory_seq_cp(self._memory, src, dst, 0, length)
        self._lengths[dst] = length

    def drop(self, seq: int) -> None:
        length = self._lengths.pop(seq, None)
        if not self._lengths:
            # Nothing lives: every cell may be freed, and the next tokens start at cell 0.
            self._lib.llama_memory_clear(self._memory, False)
            self.parked = 0
        elif length:
            self._park(seq, 0)
            self.parked += length

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, batch: TokenBatch, *, hidden: bool = False) -> _Output:
        lib = self._lib
        n = len(batch)
        if n > self._batch.capacity:
            raise ValueError(f"a batch of {n} tokens is more than {self._batch.capacity}")
        layout: list[_Seq] = []
        try:
            self._layout(batch, layout)
        except BaseException:
            self._undo(layout)
            raise
        b = self._batch
        b.token[:n] = batch.tokens
        b.pos[:n] = batch.positions
        for part in layout:
            if not part.temps:
                b.n_seq_id[part.indices] = 1
                b.seq_ids[part.indices, 0] = part.seq
                continue
            for i in part.indices:
                # The root also joins its own sequence, so it attends through the cache.
                ids = part.sets[i] if batch.parents[i] >= 0 else [part.seq, *part.sets[i]]
                b.n_seq_id[i] = len(ids)
                b.seq_ids[i, : len(ids)] = ids
        if hidden:
            b.logits[:n] = 1  # with embeddings on, llama.cpp outputs every token anyway
        else:
            b.logits[:n] = batch.outputs
        if hidden != self._embeddings:
            lib.llama_set_embeddings(self._ctx, hidden)
            self._embeddings = hidden
        b.struct.n_tokens = n
        self._last = layout
        rc = lib.llama_decode(self._ctx, b.struct)
        if rc != 0:
            self._undo(layout)
            if rc == 1:
                raise CacheFullError(
                    f"the llama.cpp cache ({self.cells} cells) has no room for {n} more tokens"
                )
            raise RuntimeError(f"llama_decode failed ({rc}): {self._log.last_error()}")
        wanted = [i for i in range(n) if batch.outputs[i]]
        V, C = self.info.vocab_size, self.info.hidden_size
        n_out = n if hidden else len(wanted)
        if not wanted:
            return _Output(np.zeros((0, V), np.float32), None, None)
        logits = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(n_out, V))
        states = None
        if hidden:
            states = np.ctypeslib.as_array(lib.llama_get_embeddings(self._ctx), shape=(n_out, C))
        rows = np.asarray(wanted, dtype=np.int64) if hidden else None
        return _Output(logits, states, rows)

    def _layout(self, batch: TokenBatch, layout: list[_Seq]) -> None:
        """Each sequence's part of ``batch`` (into ``layout``, so a failure can undo it)."""
        by_seq: dict[int, list[int]] = {}
        for i, seq in enumerate(batch.seqs):
            by_seq.setdefault(seq, []).append(i)
        for seq, indices in by_seq.items():
            start = self._lengths.setdefault(seq, 0)
            part = _Seq(seq, start, indices)
            layout.append(part)
            children: dict[int, int] = {}
            for i in indices:
                parent = batch.parents[i]
                if parent >= 0:
                    children[parent] = children.get(parent, 0) + 1
            leaves = [i for i in indices if i not in children]
            if len(leaves) > 1:
                for leaf in leaves:
                    temp = self._temp()
                    self._lib.llama_memory_seq_cp(self._memory, seq, temp, -1, -1)
                    part.temps.append(temp)
                    node = leaf
                    while node >= 0:
                        part.sets.setdefault(node, []).append(temp)
                        node = batch.parents[node]

    def _undo(self, layout: list[_Seq]) -> None:
        # A failed batch placed nothing for good: its cells (if any) are the newest.
        for part in layout:
            self._rm(part.seq, part.start, -1)
            for temp in part.temps:
                self._rm(temp, -1, -1)
                self._free_temps.append(temp)
        self._last = []

    def settle(self, keep: Mapping[int, Sequence[int]]) -> None:
        lib = self._lib
        for part in self._last:
            kept = list(keep.get(part.seq, ()))
            n = len(kept)
            if part.temps and n > 1:
                leaf_temp = part.sets[kept[-1]][0]
                lib.llama_memory_seq_cp(
                    self._memory, leaf_temp, part.seq, part.start + 1, part.start + n
                )
            for temp in part.temps:
                self._park(temp, part.start + 1)  # the branches not taken
                self._rm(temp, -1, -1)
                self._free_temps.append(temp)
            self._park(part.seq, part.start + n)  # a chain's rejected tail (or all)
            self.parked += len(part.indices) - n
            self._lengths[part.seq] = part.start + n
        self._last = []

    # ----------------------------------------------------------------- weights
    def _tables(self) -> Any:
        if self._weights is None:
            from .weights import GGUFTables

            self._weights = GGUFTables(self.path)
        return self._weights

    def output_rows(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._tables().output_rows(token_ids)  # type: ignore[no-any-return]

    def embedding_rows(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._tables().embedding_rows(token_ids)  # type: ignore[no-any-return]
