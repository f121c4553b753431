"""Continuous batching with shared-prefix prefill and exact multi-token greedy decoding.

``BatchDecoder`` owns a ``KVCache`` with one compact row per live sequence. Each call
to ``step`` is one step boundary:

1. cancelled sequences leave, queued ones join (up to ``max_batch_size``);
2. joining prompts are prefilled, computing each shared prefix once: a prompt that
   starts like a live row's cached tokens copies that row's entries, and prompts that
   arrive together share their longest common prefix through the first of them;
3. one forward runs every live row's block: its current token, plus, for plain-greedy
   rows, a tree of proposed continuations (prompt lookup, Jacobi, lookahead's n-gram
   pool) and lookahead's window; sampled rows run their current token only;
4. each row accepts what plain greedy would have produced (``verify.accept``), moves
   the accepted entries into place, and stops at EOS, its length limit or the context.

The cache holds every token of a row except the current one, which is the first token
of the next block; so a prompt's last token is not prefilled but decoded, and the
first step already speculates.

It is plain synchronous torch: the backend calls ``step`` from one worker thread at a
time; ``submit`` and ``cancel`` may be called from any thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .forward import DecoderModel, block_mask
from .heads import DraftHeads
from .jacobi import JacobiGuess
from .lookahead import LookaheadWindow, NgramPool, window_layout
from .prompt_lookup import NgramIndex
from .sampling import SamplingConfig, TokenLogprobs, choose, make_generator, token_logprobs
from .verify import TokenTree, accept, build_tree

__all__ = [
    "DECODE_MODES",
    "BatchDecoder",
    "DecodeMode",
    "DecoderStats",
    "SequenceRequest",
    "SequenceUpdate",
    "SpeculationConfig",
]

DecodeMode = Literal[
    "plain", "prompt_lookup", "jacobi", "lookahead", "hybrid", "medusa", "cerberus"
]
DECODE_MODES: tuple[DecodeMode, ...] = (
    "plain",
    "prompt_lookup",
    "jacobi",
    "lookahead",
    "hybrid",
    "medusa",
    "cerberus",
)
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class SpeculationConfig:
    """How plain-greedy rows propose tokens. Sampled rows always take one token a step.

    ``hybrid`` is lookahead plus prompt-lookup candidates in the same tree; ``medusa``
    and ``cerberus`` are trained draft heads (``heads.py``) plus prompt-lookup candidates.

    The decoder's default is ``prompt_lookup``: it proposes tokens only after a repeated
    2-gram, so a step costs nothing extra when there is nothing to copy, and it clearly
    wins where replies copy their prompt (SoT point expansions,
    ``benchmarks/local_concurrency.py``). Where trained heads exist, ``medusa`` and
    ``cerberus`` are faster (SmolLM2 on 2 CPU cores, ``benchmarks/results/
    local_decoding.json``: 1.35-1.37x ``generate`` vs 0.86x; ``LocalBackend`` picks
    ``cerberus`` for models with bundled heads). Lookahead accepts more tokens per step
    than prompt lookup (1.37 vs 1.02) but its window makes every block ~17 tokens,
    which costs far more than a one-token step on such a CPU; where extra tokens are
    nearly free (GPUs) ``lookahead``, ``hybrid`` and a larger ``head_nodes`` pay off.
    """

    mode: DecodeMode = "prompt_lookup"
    window: int = 4
    """Lookahead window width W."""
    ngram: int = 4
    """Lookahead n-gram size N (the window has N-1 levels)."""
    pool_candidates: int = 4
    """Lookahead: at most G pooled n-grams verified per step."""
    lookup_tokens: int = 6
    """Prompt lookup: tokens copied after a matched n-gram."""
    lookup_ngram: int = 3
    lookup_min_ngram: int = 2
    """Single-token matches are mostly wrong, and on a CPU every proposed token costs."""
    lookup_candidates: int = 1
    jacobi_tokens: int = 6
    head_nodes: int = 4
    """Draft heads: tree nodes proposed per row and step. Measured on 2 CPU cores with
    SmolLM2 (``benchmarks/results/local_decoding.json``): 4 nodes accept 1.62 tokens a
    step and 10 nodes 1.73, but there a block of 11 tokens costs ~1.3x a block of 5;
    where extra tokens are nearly free (GPUs) raise it."""
    max_block: int = 32
    """Most tokens one row may run in one step (current token included)."""
    step_budget: int = 16
    """Extra tokens a step may spend over all rows (each row gets ``1 + budget // rows``):
    rows are padded to the longest block, and once a forward is compute-bound every
    extra token costs real time, so a full batch speculates only a little."""

    def __post_init__(self) -> None:
        if self.mode not in DECODE_MODES:
            raise ValueError(f"unknown decoding mode {self.mode!r}; use one of {DECODE_MODES}")
        if self.window < 1 or self.ngram < 2:
            raise ValueError("lookahead needs window >= 1 and ngram >= 2")
        if self.max_block < 1 or self.step_budget < 1:
            raise ValueError("max_block and step_budget must be positive")

    @property
    def uses_window(self) -> bool:
        return self.mode in ("lookahead", "hybrid")

    @property
    def uses_pool(self) -> bool:
        return self.mode in ("lookahead", "hybrid")

    @property
    def uses_lookup(self) -> bool:
        return self.mode in ("prompt_lookup", "hybrid", "medusa", "cerberus")

    @property
    def uses_heads(self) -> bool:
        return self.mode in ("medusa", "cerberus")


@dataclass(frozen=True, slots=True)
class SequenceRequest:
    prompt: Sequence[int]
    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_tokens: frozenset[int] = frozenset()
    logprobs: int | None = None
    """None: no log-probabilities; 0: the chosen token's; k: also the top k."""


@dataclass(frozen=True, slots=True)
class SequenceUpdate:
    seq_id: int
    tokens: list[int]
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: FinishReason | None = None


@dataclass(slots=True)
class DecoderStats:
    """Counters since the decoder was made; ``as_dict`` for reports."""

    decode_steps: int = 0
    row_steps: int = 0
    generated_tokens: int = 0
    step_tokens: int = 0
    """Tokens run through decode forwards (padding included)."""
    prefill_forwards: int = 0
    prefill_tokens: int = 0
    shared_prefix_tokens: int = 0
    """Prompt tokens whose cache entries were copied instead of computed."""
    max_batch: int = 0
    decode_seconds: float = 0.0
    prefill_seconds: float = 0.0
    accepted: Counter[int] = field(default_factory=Counter)
    """How many tokens a row gained per step -> how often."""

    @property
    def tokens_per_row_step(self) -> float:
        return self.generated_tokens / self.row_steps if self.row_steps else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "decode_steps": self.decode_steps,
            "row_steps": self.row_steps,
            "generated_tokens": self.generated_tokens,
            "tokens_per_row_step": round(self.tokens_per_row_step, 3),
            "step_tokens": self.step_tokens,
            "prefill_forwards": self.prefill_forwards,
            "prefill_tokens": self.prefill_tokens,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "max_batch": self.max_batch,
            "decode_seconds": round(self.decode_seconds, 4),
            "prefill_seconds": round(self.prefill_seconds, 4),
            "decode_tokens_per_s": round(self.generated_tokens / self.decode_seconds, 2)
            if self.decode_seconds
            else 0.0,
            "accepted": dict(sorted(self.accepted.items())),
        }


class _Row:
    """One live sequence. ``tokens[-1]`` is the current token: not in the cache yet."""

    def __init__(
        self,
        seq_id: int,
        request: SequenceRequest,
        max_new: int,
        config: SpeculationConfig,
        device: torch.device,
    ) -> None:
        self.seq_id = seq_id
        self.request = request
        self.tokens: list[int] = list(request.prompt)
        self.prompt_len = len(self.tokens)
        self.max_new = max_new
        self.generated = 0
        self.slot = -1
        sampling = request.sampling
        self.generator = None if sampling.greedy else make_generator(sampling.seed, device)
        self.speculative = sampling.plain_greedy and config.mode != "plain"
        self.lookup: NgramIndex | None = None
        self.pool: NgramPool | None = None
        self.window: LookaheadWindow | None = None
        self.jacobi: JacobiGuess | None = None
        self.head_candidates: list[list[int]] = []
        """What the draft heads guessed after the current token (set after each step)."""
        self.last_node = 0
        """The block index of the last accepted token: where the heads read the hidden state."""
        if not self.speculative:
            return
        if config.uses_lookup:
            self.lookup = NgramIndex(config.lookup_ngram, config.lookup_min_ngram)
            self.lookup.extend(self.tokens)
        if config.uses_pool:
            self.pool = NgramPool(config.ngram)
            self.pool.add_all(self.tokens)
        if config.uses_window:
            self.window = LookaheadWindow(config.window, config.ngram, self.tokens, seed=seq_id)
        if config.mode == "jacobi":
            self.jacobi = JacobiGuess(
                config.jacobi_tokens, [self.tokens[-1]] * config.jacobi_tokens
            )

    def extend(self, new: Sequence[int], ngram: int) -> None:
        self.tokens.extend(new)
        self.generated += len(new)
        if self.lookup is not None:
            self.lookup.extend(new)
        if self.pool is not None:
            start = max(0, len(self.tokens) - len(new) - ngram + 1)
            for i in range(start, len(self.tokens) - ngram + 1):
                self.pool.add(self.tokens[i : i + ngram])


@dataclass(slots=True)
class _Block:
    tokens: list[int]
    offsets: list[int]
    inner: torch.Tensor  # [t, t] bool
    tree: TokenTree
    window_size: int = 0


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class BatchDecoder:
    def __init__(
        self,
        model: DecoderModel,
        *,
        max_batch_size: int = 16,
        speculation: SpeculationConfig | None = None,
        prefill_chunk: int = 1024,
        heads: DraftHeads | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.config = speculation or SpeculationConfig()
        if self.config.uses_heads:
            if heads is None:
                raise ValueError(
                    f"decoding mode {self.config.mode!r} needs trained draft heads; "
                    "train them with `sotflow train-heads`"
                )
            if heads.kind != self.config.mode:
                raise ValueError(
                    f"decoding mode {self.config.mode!r} got {heads.kind} heads; "
                    f"use decoding={heads.kind!r} or heads of kind {self.config.mode!r}"
                )
        self.heads = heads if self.config.uses_heads else None
        self.prefill_chunk = prefill_chunk
        self.device = model.device
        self.cache = model.new_cache(rows=1, capacity=256)
        # Scratch room past the context: a block may be written after a row's last position.
        self.cache.max_capacity = model.max_positions + self.config.max_block + 1
        self.stats = DecoderStats()
        self.on_leave: Callable[[Sequence[int], int], None] | None = None
        """Called with ``(tokens, prompt_len)`` of every sequence that leaves the batch
        (finished or cancelled): what draft-head training records as its corpus."""
        self._rows: list[_Row] = []
        self._pending: list[tuple[int, SequenceRequest, int]] = []
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._next_id = 0
        offsets, sees = window_layout(self.config.window, self.config.ngram - 1)
        self._window_offsets = offsets
        self._window_inner = self._window_mask(sees)

    # ----------------------------------------------------------------- public API
    def submit(self, request: SequenceRequest) -> int:
        """Queue a sequence; it joins the batch at the next step. Returns its id."""
        if not request.prompt:
            raise ValueError("a prompt needs at least one token")
        if len(request.prompt) >= self.model.max_positions:
            raise ValueError(
                f"the prompt has {len(request.prompt)} tokens; the model's context is "
                f"{self.model.max_positions}"
            )
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
        max_new = min(request.max_new_tokens, self.model.max_positions - len(request.prompt))
        with self._lock:
            seq_id = self._next_id
            self._next_id += 1
            self._pending.append((seq_id, request, max_new))
        return seq_id

    def cancel(self, seq_id: int) -> None:
        """Drop a sequence at the next step boundary (no-op if it is already gone)."""
        with self._lock:
            self._cancelled.add(seq_id)

    @property
    def has_work(self) -> bool:
        with self._lock:
            return bool(self._rows or self._pending)

    @property
    def live(self) -> int:
        return len(self._rows)

    def reset(self) -> list[int]:
        """Forget every sequence (after a failed step); returns the ids dropped."""
        with self._lock:
            dropped = [r.seq_id for r in self._rows] + [p[0] for p in self._pending]
            self._rows.clear()
            self._pending.clear()
            self._cancelled.clear()
        self.cache.lengths.clear()
        return dropped

    def step(self) -> list[SequenceUpdate]:
        """One step boundary: leave, join, prefill, decode. Returns what each row gained."""
        with torch.inference_mode():
            self._drop_cancelled()
            self._admit()
            if not self._rows:
                return []
            return self._decode()

    # ----------------------------------------------------------------- admission
    def _drop_cancelled(self) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            self._pending = [p for p in self._pending if p[0] not in cancelled]
        doomed = [r for r in self._rows if r.seq_id in cancelled]
        self._remove(doomed)

    def _remove(self, rows: list[_Row]) -> None:
        for row in sorted(rows, key=lambda r: r.slot, reverse=True):
            if self.on_leave is not None:
                self.on_leave(row.tokens, row.prompt_len)
            moved = self.cache.remove_row(row.slot)
            last = self._rows.pop()
            if moved is not None:
                assert last.slot == moved
                last.slot = row.slot
                self._rows[row.slot] = last

    def _admit(self) -> None:
        with self._lock:
            room = self.max_batch_size - len(self._rows)
            joining, self._pending = self._pending[:room], self._pending[room:]
        if not joining:
            return
        start = time.perf_counter()
        old = list(self._rows)
        new: list[_Row] = []
        for seq_id, request, max_new in joining:
            row = _Row(seq_id, request, max_new, self.config, self.device)
            row.slot = self.cache.add_row()
            self._rows.append(row)
            new.append(row)
        longest = max(len(r.tokens) for r in new)
        self.cache.reserve(len(self._rows), longest + self.config.max_block)
        # Phase 1 rows copy from live rows (if anything matches) and prefill the rest;
        # phase 2 rows copy from a phase 1 row once it is computed.
        first: list[tuple[_Row, int]] = []
        second: list[tuple[_Row, _Row, int]] = []
        anchors: list[_Row] = []
        for row in new:
            limit = len(row.tokens) - 1
            best_old, best_old_len = None, 0
            for other in old:
                n = _common_prefix(
                    row.tokens, other.tokens, min(limit, self.cache.lengths[other.slot])
                )
                if n > best_old_len:
                    best_old, best_old_len = other, n
            best_new, best_new_len = None, 0
            for other in anchors:
                n = _common_prefix(row.tokens, other.tokens, min(limit, len(other.tokens) - 1))
                if n > best_new_len:
                    best_new, best_new_len = other, n
            if best_new is not None and best_new_len > best_old_len:
                second.append((row, best_new, best_new_len))
            else:
                if best_old is not None:
                    self.cache.copy_prefix(best_old.slot, row.slot, best_old_len)
                    self.stats.shared_prefix_tokens += best_old_len
                first.append((row, best_old_len))
                anchors.append(row)
        self._prefill(first)
        for row, source, n in second:
            self.cache.copy_prefix(source.slot, row.slot, n)
            self.stats.shared_prefix_tokens += n
        self._prefill([(row, n) for row, _, n in second])
        self.stats.prefill_seconds += time.perf_counter() - start
        self.stats.max_batch = max(self.stats.max_batch, len(self._rows))

    def _prefill(self, rows: list[tuple[_Row, int]]) -> None:
        """Compute cache entries ``done .. len(tokens)-2`` of each row, batching contiguous rows."""
        todo = [(row, done) for row, done in rows if done < len(row.tokens) - 1]
        todo.sort(key=lambda item: item[0].slot)
        group: list[tuple[_Row, int]] = []
        for item in todo:
            if group and not self._fits_group(group, item):
                self._prefill_group(group)
                group = []
            group.append(item)
        if group:
            self._prefill_group(group)

    def _fits_group(self, group: list[tuple[_Row, int]], item: tuple[_Row, int]) -> bool:
        if item[0].slot != group[-1][0].slot + 1:
            return False
        lengths = [len(r.tokens) - 1 - d for r, d in [*group, item]]
        padded = max(lengths) * len(lengths)
        # Padding wastes compute; a little of it is cheaper than another pass over the weights.
        return padded <= 1.3 * sum(lengths) and padded <= self.prefill_chunk

    def _prefill_group(self, group: list[tuple[_Row, int]]) -> None:
        begin = [done for _, done in group]
        end = [len(row.tokens) - 1 for row, _ in group]
        while any(b < e for b, e in zip(begin, end, strict=True)):
            chunk = max(min(e - b, self.prefill_chunk) for b, e in zip(begin, end, strict=True))
            B = len(group)
            tokens = torch.zeros((B, chunk), dtype=torch.long)
            positions = torch.zeros((B, chunk), dtype=torch.long)
            inner = torch.eye(chunk, dtype=torch.bool).repeat(B, 1, 1)  # [B, T, T]
            causal = torch.ones((chunk, chunk), dtype=torch.bool).tril()
            counts = []
            for b, (row, _) in enumerate(group):
                n = max(0, min(end[b] - begin[b], chunk))
                counts.append(n)
                tokens[b, :n] = torch.tensor(row.tokens[begin[b] : begin[b] + n])
                positions[b] = begin[b] + torch.arange(chunk)
                inner[b, :n, :n] = causal[:n, :n]
            mask = block_mask(begin, inner)
            self.model.forward(
                tokens.to(self.device),
                positions.to(self.device),
                self.cache,
                row_start=group[0][0].slot,
                write_start=begin,
                mask=mask.to(self.device),
                compute_logits=False,
            )
            self.stats.prefill_forwards += 1
            self.stats.prefill_tokens += sum(counts)
            for b, (row, _) in enumerate(group):
                begin[b] += counts[b]
                self.cache.lengths[row.slot] = begin[b]

    # ----------------------------------------------------------------- decoding
    def _window_mask(self, sees: list[list[tuple[int, int]]]) -> torch.Tensor:
        width = self.config.window
        size = len(sees)
        mask = torch.zeros((size, size), dtype=torch.bool)
        for i, visible in enumerate(sees):
            for level, column in visible:
                mask[i, level * width + column] = True
        return mask  # [w, w]

    def _block(self, row: _Row, room: int) -> _Block:
        root = row.tokens[-1]
        config = self.config
        candidates: list[list[int]] = []
        if row.lookup is not None:
            candidates += row.lookup.candidates(config.lookup_tokens, config.lookup_candidates)
        candidates += row.head_candidates
        if row.pool is not None:
            candidates += row.pool.get(root, config.pool_candidates)
        if row.jacobi is not None:
            candidates.append(row.jacobi.candidate())
        window = row.window
        use_window = window is not None and room >= window.size + config.ngram
        tree_room = room - (window.size if use_window else 0)
        tree = build_tree(root, candidates, max(1, tree_room))
        n = len(tree)
        tokens = list(tree.tokens)
        offsets = list(tree.depths)
        if not use_window or window is None:
            return _Block(tokens, offsets, torch.tensor(tree.ancestors_mask()), tree)
        w = window.size
        inner = torch.zeros((n + w, n + w), dtype=torch.bool)
        inner[:n, :n] = torch.tensor(tree.ancestors_mask())
        inner[n:, 0] = True  # window tokens see the current token ...
        inner[n:, n:] = self._window_inner  # ... and their own diagonals, never the tree
        tokens += window.tokens()
        offsets += self._window_offsets
        return _Block(tokens, offsets, inner, tree, w)

    def _needed(self, block: _Block) -> list[int]:
        n = len(block.tree)
        if not block.window_size:
            return list(range(n))
        width = self.config.window
        return list(range(n)) + list(range(n + block.window_size - width, n + block.window_size))

    def _room(self, row: _Row, speculating: int) -> int:
        if not row.speculative:
            return 1
        share = 1 + self.config.step_budget // max(1, speculating)
        # Never write past the scratch room, nor propose past the context's end.
        left = self.model.max_positions - (len(row.tokens) - 1)
        return max(1, min(self.config.max_block, share, left))

    def _decode(self) -> list[SequenceUpdate]:
        start = time.perf_counter()
        rows = self._rows
        speculating = sum(r.speculative for r in rows)
        blocks = [self._block(r, self._room(r, speculating)) for r in rows]
        B = len(rows)
        T = max(len(b.tokens) for b in blocks)
        write_start = [len(r.tokens) - 1 for r in rows]
        self.cache.reserve(B, max(write_start) + T)
        tokens = torch.zeros((B, T), dtype=torch.long)
        positions = torch.zeros((B, T), dtype=torch.long)
        inner = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)  # [B, T, T]; padding sees itself
        for b, block in enumerate(blocks):
            t = len(block.tokens)
            tokens[b, :t] = torch.tensor(block.tokens)
            positions[b, :t] = write_start[b] + torch.tensor(block.offsets)
            positions[b, t:] = write_start[b]
            inner[b, :t, :t] = block.inner
        mask = block_mask(write_start, inner)
        # Only tree nodes and the window's newest level need logits: the older levels are
        # context for it, and the vocabulary projection is a fifth of the weights.
        needed = [self._needed(block) for block in blocks]
        K = max(len(n) for n in needed)
        logits_at = torch.zeros((B, K), dtype=torch.long)
        for b, idx in enumerate(needed):
            logits_at[b, : len(idx)] = torch.tensor(idx)
        hidden = self.model.hidden(
            tokens.to(self.device),
            positions.to(self.device),
            self.cache,
            row_start=0,
            write_start=write_start,
            mask=mask.to(self.device),
            hidden_at=logits_at.to(self.device) if K < T else None,
        )
        assert hidden is not None
        logits = self.model.logits(hidden)  # [B, K, V]
        argmax = logits.argmax(-1).tolist()  # [B, K]
        predicted = []
        for b, idx in enumerate(needed):
            row = [-1] * T
            for k, i in enumerate(idx):
                row[i] = argmax[b][k]
            predicted.append(row)
        updates: list[SequenceUpdate] = []
        finished: list[_Row] = []
        for b, (row, block) in enumerate(zip(rows, blocks, strict=True)):
            update = self._advance(row, block, logits[b], predicted[b], write_start[b])
            updates.append(update)
            if update.finish_reason is not None:
                finished.append(row)
        if self.heads is not None:
            self._draft(rows, hidden, logits, finished)
        self._remove(finished)
        stats = self.stats
        stats.decode_steps += 1
        stats.row_steps += B
        stats.step_tokens += B * T
        stats.decode_seconds += time.perf_counter() - start
        return updates

    def _draft(
        self,
        rows: list[_Row],
        hidden: torch.Tensor,  # [B, K, C]
        logits: torch.Tensor,  # [B, K, V]
        finished: list[_Row],
    ) -> None:
        """Let the draft heads guess what follows each greedy row's new current token."""
        assert self.heads is not None
        done = {id(r) for r in finished}
        live = [(b, r) for b, r in enumerate(rows) if r.speculative and id(r) not in done]
        if not live:
            return
        at = torch.tensor([[b, r.last_node] for b, r in live], device=hidden.device)
        h = hidden[at[:, 0], at[:, 1]]  # [N, C]
        gated = self.heads.entropy_gated(logits[at[:, 0], at[:, 1]])
        proposals = self.heads.propose(h, [r.tokens[-1] for _, r in live], self.config.head_nodes)
        for (_, row), paths, skip in zip(live, proposals, gated, strict=True):
            row.head_candidates = [] if skip else paths

    def _advance(
        self,
        row: _Row,
        block: _Block,
        logits: torch.Tensor,  # [T, V]
        predicted: list[int],  # [T]
        start: int,
    ) -> SequenceUpdate:
        request = row.request
        if row.speculative:
            n = len(block.tree)
            path, bonus = accept(block.tree, predicted[:n])
            row.last_node = path[-1]
            new = [block.tree.tokens[i] for i in path[1:]] + [bonus]
            if block.window_size and row.window is not None and row.pool is not None:
                row.window.update(predicted[n : n + block.window_size], row.pool)
            if row.jacobi is not None:
                branch = block.tree.branches[-1] if block.tree.branches else []
                row.jacobi.update([predicted[i] for i in branch], len(new))
                if len(row.jacobi.guess) < row.jacobi.length:
                    fill = row.jacobi.guess[-1:] or [bonus]
                    row.jacobi.guess += fill * (row.jacobi.length - len(row.jacobi.guess))
        else:
            path = [0]
            context = None
            if request.sampling.has_penalty:
                context = torch.tensor(row.tokens, device=logits.device)
            new = [choose(logits[0], request.sampling, row.generator, context)]
        kept: list[int] = []
        finish: FinishReason | None = None
        for token in new:
            if token in request.stop_tokens:
                finish = "stop"
                break
            kept.append(token)
            if row.generated + len(kept) >= row.max_new:
                finish = "length"
                break
        logprobs = None
        if request.logprobs is not None and kept:
            rows_at = torch.tensor(path[: len(kept)], device=logits.device)
            logprobs = token_logprobs(logits.index_select(0, rows_at), kept, request.logprobs)
        self.stats.accepted[len(kept) + (finish == "stop")] += 1
        self.stats.generated_tokens += len(kept)
        if finish is None:
            self.cache.commit(row.slot, start, path)
            row.extend(new, self.config.ngram)
        else:
            row.tokens.extend(kept)  # the row leaves now; only ``on_leave`` sees these
            row.generated += len(kept)
        return SequenceUpdate(row.seq_id, kept, logprobs, finish)
