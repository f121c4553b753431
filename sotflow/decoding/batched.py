"""Continuous batching with shared-prefix prefill and exact multi-token greedy decoding.

``BatchDecoder`` keeps one runtime sequence per live request (``runtime.py``: the seam
that lets it run unchanged on llama.cpp and on torch). Each call to ``step`` is one
step boundary:

1. cancelled sequences leave, queued ones join (up to ``max_batch_size``);
2. joining prompts are prefilled, computing each shared prefix once: a prompt that
   starts like a live row's cached tokens forks that row's entries, and prompts that
   arrive together share their longest common prefix through the first of them;
3. one evaluation runs every live row's block: its current token, plus, for
   plain-greedy rows, a tree of proposed continuations (prompt lookup, Jacobi,
   lookahead's n-gram pool, draft heads) and lookahead's window; sampled rows run
   their current token only;
4. each row accepts what plain greedy would have produced (``verify.accept``), keeps
   the accepted entries (``runtime.settle``), and stops at EOS, its length limit or
   the context.

Speculation is planned per step (``costs.plan``): every proposed node carries an
estimate of the chance it is accepted, learned from how often such nodes were, and only
the nodes whose expected gain beats what the machine charges for a longer block are
evaluated. So no decoder makes a step slower than plain on a machine where blocks cost
a lot (a 2-core CPU), and a GPU, where blocks are nearly free, gets whole trees.

The cache holds every token of a row except the current one, which is the first token
of the next block; so a prompt's last token is not prefilled but decoded, and the
first step already speculates.

It is plain synchronous code: the backend calls ``step`` from one worker thread at a
time; ``submit`` and ``cancel`` may be called from any thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .costs import BlockCosts, plan, typical_plan
from .heads import DraftHeads
from .jacobi import JacobiGuess
from .lookahead import LookaheadWindow, NgramPool, window_layout
from .prompt_lookup import NgramIndex
from .runtime import Runtime, TokenBatch
from .sampling import SamplingConfig, TokenLogprobs, choose, make_generator, token_logprobs
from .verify import TokenTree, accept, build_tree

__all__ = [
    "DECODE_MODES",
    "BatchDecoder",
    "CacheFullError",
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


class CacheFullError(RuntimeError):
    """The runtime's key/value cache has no room for a batch (llama.cpp's fixed
    context): the decoder preempts a row and tries again."""


@dataclass(frozen=True, slots=True)
class SpeculationConfig:
    """How plain-greedy rows propose tokens. Sampled rows always take one token a step.

    ``hybrid`` is lookahead plus prompt-lookup candidates in the same tree; ``medusa``
    and ``cerberus`` are trained draft heads (``heads.py``) plus prompt-lookup candidates.
    Which proposals are evaluated is decided each step by the measured block costs
    (module docstring); the settings here only bound what may be proposed.
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
    """Single-token matches are mostly wrong."""
    lookup_candidates: int = 1
    jacobi_tokens: int = 6
    head_nodes: int = 8
    """Draft heads: tree nodes proposed per row and step (the plan evaluates fewer
    where blocks are expensive)."""
    max_block: int = 32
    """Most tokens one row may run in one step (current token included)."""
    window_overhead: float = 0.1
    """The lookahead window runs only where it adds at most this share to a step's
    cost: its tokens yield nothing directly, they only seed the n-gram pool."""

    def __post_init__(self) -> None:
        if self.mode not in DECODE_MODES:
            raise ValueError(f"unknown decoding mode {self.mode!r}; use one of {DECODE_MODES}")
        if self.window < 1 or self.ngram < 2:
            raise ValueError("lookahead needs window >= 1 and ngram >= 2")
        if self.max_block < 1:
            raise ValueError("max_block must be positive")

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
    error: str | None = None
    """Set when this sequence failed on its own; it has left the batch, the others
    go on."""


@dataclass(slots=True)
class DecoderStats:
    """Counters since the decoder was made; ``as_dict`` for reports."""

    decode_steps: int = 0
    row_steps: int = 0
    generated_tokens: int = 0
    step_tokens: int = 0
    """Tokens run through decode evaluations."""
    proposed_tokens: int = 0
    """Speculative tree nodes evaluated (the current tokens not counted)."""
    prefill_forwards: int = 0
    prefill_tokens: int = 0
    shared_prefix_tokens: int = 0
    """Prompt tokens whose cache entries were forked instead of computed."""
    preempted: int = 0
    """Rows sent back to the queue because the cache was full."""
    compactions: int = 0
    """Times the cache was found full and every row prefilled again into a fresh one."""
    max_batch: int = 0
    decode_seconds: float = 0.0
    prefill_seconds: float = 0.0
    heads_seconds: float = 0.0
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
            "proposed_tokens": self.proposed_tokens,
            "prefill_forwards": self.prefill_forwards,
            "prefill_tokens": self.prefill_tokens,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "preempted": self.preempted,
            "compactions": self.compactions,
            "max_batch": self.max_batch,
            "decode_seconds": round(self.decode_seconds, 4),
            "prefill_seconds": round(self.prefill_seconds, 4),
            "heads_seconds": round(self.heads_seconds, 4),
            "decode_tokens_per_s": round(self.generated_tokens / self.decode_seconds, 2)
            if self.decode_seconds
            else 0.0,
            "accepted": dict(sorted(self.accepted.items())),
        }


class _Acceptance:
    """How often a proposer's node at each depth is accepted once its parent is.

    A Beta prior keeps early estimates sane; old evidence decays, so the estimate
    follows a reply's phases (a copied passage, then free text).
    """

    def __init__(self, prior: float, weight: float = 4.0, decay: float = 0.98) -> None:
        self.prior, self.weight, self.decay = prior, weight, decay
        self.hits: dict[int, float] = {}
        self.trials: dict[int, float] = {}

    def q(self, depth: int) -> float:
        hits, trials = self.hits.get(depth, 0.0), self.trials.get(depth, 0.0)
        return (hits + self.prior * self.weight) / (trials + self.weight)

    def record(self, depth: int, hit: bool) -> None:
        self.hits[depth] = self.hits.get(depth, 0.0) * self.decay + hit
        self.trials[depth] = self.trials.get(depth, 0.0) * self.decay + 1.0


# Prior chances that a proposed node is accepted once its parent is. Prompt lookup and
# pooled n-grams were seen before in this very context; Jacobi's guesses rarely hold on
# models not trained for it; heads bring their own probabilities (scaled by ``_HEADS``).
_PRIORS = {"lookup": 0.5, "pool": 0.4, "jacobi": 0.2, "heads": 1.0}


class _Row:
    """One live sequence. ``tokens[-1]`` is the current token: not in the cache yet."""

    def __init__(
        self, request_id: int, request: SequenceRequest, max_new: int, config: SpeculationConfig
    ) -> None:
        self.id = request_id
        self.request = request
        self.tokens: list[int] = list(request.prompt)
        self.prompt_len = len(self.tokens)
        self.max_new = max_new
        self.generated = 0
        self.seq = -1
        """The runtime sequence while admitted; -1 while queued."""
        sampling = request.sampling
        self.generator = None if sampling.greedy else make_generator(sampling.seed)
        self.speculative = sampling.plain_greedy and config.mode != "plain"
        self.lookup: NgramIndex | None = None
        self.pool: NgramPool | None = None
        self.window: LookaheadWindow | None = None
        self.jacobi: JacobiGuess | None = None
        self.head_paths: list[list[int]] = []
        self.head_scores: list[float] = []
        """What the draft heads guessed after the current token, and how likely."""
        self.last_node = 0
        if not self.speculative:
            return
        if config.uses_lookup:
            self.lookup = NgramIndex(config.lookup_ngram, config.lookup_min_ngram)
            self.lookup.extend(self.tokens)
        if config.uses_pool:
            self.pool = NgramPool(config.ngram)
            self.pool.add_all(self.tokens)
        if config.uses_window:
            self.window = LookaheadWindow(config.window, config.ngram, self.tokens, seed=request_id)
        if config.mode == "jacobi":
            self.jacobi = JacobiGuess(
                config.jacobi_tokens, [self.tokens[-1]] * config.jacobi_tokens
            )

    @property
    def cached(self) -> int:
        return len(self.tokens) - 1

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
class _Candidate:
    path: list[int]
    chances: list[float]
    """The chance each node is accepted once its parent is."""
    source: str


@dataclass(slots=True)
class _Block:
    """One row's tokens in a step: the tree first (node ``i`` = block index ``i``), then
    the lookahead window. ``start`` is the row's first index in the batch."""

    tree: TokenTree
    sources: list[set[str]]
    """Which proposers put each node in the tree."""
    jacobi_branch: list[int] | None = None
    window_size: int = 0
    start: int = 0
    out_start: int = 0
    """The row's first output index (tree nodes all give output)."""


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class BatchDecoder:
    def __init__(
        self,
        runtime: Runtime,
        *,
        max_batch_size: int = 16,
        speculation: SpeculationConfig | None = None,
        prefill_chunk: int = 512,
        heads: DraftHeads | None = None,
        costs: BlockCosts | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_batch_size > runtime.info.max_sequences:
            raise ValueError(
                f"max_batch_size {max_batch_size} is more than the runtime's "
                f"{runtime.info.max_sequences} sequences"
            )
        if max_batch_size > runtime.info.max_batch_tokens:
            raise ValueError(
                f"max_batch_size {max_batch_size} is more than the "
                f"{runtime.info.max_batch_tokens} tokens one {runtime.info.name} step holds"
            )
        self.runtime = runtime
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
        self.costs = costs or BlockCosts.flat()
        self.prefill_chunk = min(prefill_chunk, runtime.info.max_batch_tokens)
        self.stats = DecoderStats()
        self.on_leave: Callable[[Sequence[int], int], None] | None = None
        """Called with ``(tokens, prompt_len)`` of every sequence that leaves the batch
        (finished or cancelled): what draft-head training records as its corpus."""
        self._rows: list[_Row] = []
        self._pending: list[_Row] = []
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._next_id = 0
        self._free_seqs = list(range(max_batch_size - 1, -1, -1))
        self._acceptance = {name: _Acceptance(p) for name, p in _PRIORS.items()}
        self._heads_gain = 0
        """Tokens accepted this step from nodes the heads proposed."""
        self._heads_worth = 1.0
        """Running estimate of what the heads save over what they cost (> 0: keep them)."""
        self._heads_pause = 0
        offsets, sees = window_layout(self.config.window, self.config.ngram - 1)
        self._window_offsets = offsets
        self._window_parents = self._window_tree(sees)

    # ----------------------------------------------------------------- public API
    def submit(self, request: SequenceRequest) -> int:
        """Queue a sequence; it joins the batch at the next step. Returns its id."""
        context = self.runtime.info.context_length
        if not request.prompt:
            raise ValueError("a prompt needs at least one token")
        if len(request.prompt) >= context:
            raise ValueError(
                f"the prompt has {len(request.prompt)} tokens; the model's context is {context}"
            )
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
        max_new = min(request.max_new_tokens, context - len(request.prompt))
        with self._lock:
            row = _Row(self._next_id, request, max_new, self.config)
            self._next_id += 1
            self._pending.append(row)
        return row.id

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
            dropped = [r.id for r in self._rows] + [r.id for r in self._pending]
            rows = list(self._rows)
            self._rows.clear()
            self._pending.clear()
            self._cancelled.clear()
        for row in rows:
            self._release(row)
        return dropped

    def step(self) -> list[SequenceUpdate]:
        """One step boundary: leave, join, prefill, decode. Returns what each row gained."""
        self._drop_cancelled()
        limit = self.max_batch_size
        retried = False
        while True:
            try:
                self._admit(limit)
                return self._decode() if self._rows else []
            except CacheFullError:
                # Mostly parked cells (llama.cpp frees nothing while rows live): every
                # row goes back to the queue and is prefilled again into a fresh cache;
                # if that is full too, with one row fewer each time.
                live = len(self._rows)
                for row in reversed(list(self._rows)):
                    self._preempt(row)
                self.stats.compactions += 1
                if retried and (live <= 1 or limit <= 1):
                    raise
                limit = max(1, live - 1 if retried else live)
                retried = True

    # ----------------------------------------------------------------- admission
    def _release(self, row: _Row) -> None:
        if row.seq >= 0:
            try:
                self.runtime.drop(row.seq)
            finally:
                self._free_seqs.append(row.seq)
                row.seq = -1

    def _drop_cancelled(self) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            self._pending = [r for r in self._pending if r.id not in cancelled]
        doomed = [r for r in self._rows if r.id in cancelled]
        self._remove(doomed)

    def _remove(self, rows: list[_Row]) -> None:
        for row in rows:
            if self.on_leave is not None:
                self.on_leave(row.tokens, row.prompt_len)
            self._rows.remove(row)
            self._release(row)

    def _preempt(self, row: _Row) -> None:
        """Send a row back to the front of the queue: its tokens so far become the
        prompt it is prefilled with again when there is room."""
        self._rows.remove(row)
        self._release(row)
        self.stats.preempted += 1
        with self._lock:
            self._pending.insert(0, row)

    def _admit(self, limit: int | None = None) -> None:
        with self._lock:
            room = min(self.max_batch_size, limit or self.max_batch_size) - len(self._rows)
            joining, self._pending = self._pending[:room], self._pending[room:]
        if not joining:
            return
        start = time.perf_counter()
        old = list(self._rows)
        for row in joining:
            row.seq = self._free_seqs.pop()
            self._rows.append(row)
        # Phase 1 rows fork from live rows (if anything matches) and prefill the rest;
        # phase 2 rows fork from a phase 1 row once it is computed.
        first: list[tuple[_Row, int]] = []
        second: list[tuple[_Row, _Row, int]] = []
        anchors: list[_Row] = []
        for row in joining:
            limit = row.cached
            best_old, best_old_len = None, 0
            for other in old:
                n = _common_prefix(row.tokens, other.tokens, min(limit, other.cached))
                if n > best_old_len:
                    best_old, best_old_len = other, n
            best_new, best_new_len = None, 0
            for other in anchors:
                n = _common_prefix(row.tokens, other.tokens, min(limit, other.cached))
                if n > best_new_len:
                    best_new, best_new_len = other, n
            if best_new is not None and best_new_len > best_old_len:
                second.append((row, best_new, best_new_len))
            else:
                if best_old is not None:
                    self.runtime.fork(best_old.seq, row.seq, best_old_len)
                    self.stats.shared_prefix_tokens += best_old_len
                first.append((row, best_old_len))
                anchors.append(row)
        self._prefill(first)
        for row, source, n in second:
            self.runtime.fork(source.seq, row.seq, n)
            self.stats.shared_prefix_tokens += n
        self._prefill([(row, n) for row, _, n in second])
        self.stats.prefill_seconds += time.perf_counter() - start
        self.stats.max_batch = max(self.stats.max_batch, len(self._rows))

    def _prefill(self, rows: list[tuple[_Row, int]]) -> None:
        """Compute cache entries ``done .. cached-1`` of each row, ``prefill_chunk``
        tokens per evaluation (several rows may share one)."""
        todo = [[row, done] for row, done in rows if done < row.cached]
        while todo:
            tokens: list[int] = []
            positions: list[int] = []
            seqs: list[int] = []
            parents: list[int] = []
            spans: dict[int, tuple[int, int]] = {}
            for item in todo:
                row, done = item
                n = min(row.cached - done, self.prefill_chunk - len(tokens))
                if n <= 0:
                    break
                base = len(tokens)
                tokens += row.tokens[done : done + n]
                positions += range(done, done + n)
                seqs += [row.seq] * n
                parents += [-1, *range(base, base + n - 1)]
                spans[row.seq] = (base, n)
                item[1] = done + n
            self.runtime.evaluate(
                TokenBatch(tokens, positions, seqs, parents, [False] * len(tokens))
            )
            self.runtime.settle({seq: list(range(b, b + n)) for seq, (b, n) in spans.items()})
            self.stats.prefill_forwards += 1
            self.stats.prefill_tokens += len(tokens)
            todo = [item for item in todo if item[1] < item[0].cached]

    # ----------------------------------------------------------------- proposals
    def _window_tree(self, sees: list[list[tuple[int, int]]]) -> list[int]:
        """Each window token's parent within the window (-1: the row's current token).

        Token ``(l, j)`` sees the root, level 0's columns ``0..j`` and column ``j`` of
        levels ``1..l``: exactly the ancestors of a tree in which ``(0, j)`` follows
        ``(0, j-1)`` and ``(l, j)`` follows ``(l-1, j)``.
        """
        width = self.config.window
        parents = []
        for i, visible in enumerate(sees):
            level, column = divmod(i, width)
            expected = [(0, c) for c in range(column + 1)] + [
                (m, column) for m in range(1, level + 1)
            ]
            assert visible == expected, "the window layout is no longer a tree"
            if level == 0:
                parents.append(-1 if column == 0 else column - 1)
            else:
                parents.append((level - 1) * width + column)
        return parents

    def _candidates(self, row: _Row) -> list[_Candidate]:
        config = self.config
        acc = self._acceptance
        out: list[_Candidate] = []

        def add(paths: list[list[int]], source: str) -> None:
            stats = acc[source]
            for path in paths:
                if path:
                    out.append(_Candidate(path, [stats.q(d + 1) for d in range(len(path))], source))

        if row.lookup is not None:
            add(row.lookup.candidates(config.lookup_tokens, config.lookup_candidates), "lookup")
        if row.head_paths:
            stats = acc["heads"]
            for path, score in zip(row.head_paths, row.head_scores, strict=True):
                # The heads give the path's probability; spread it evenly over its nodes
                # and scale by how often head nodes at each depth turned out right.
                per_node = score ** (1 / len(path))
                chances = [min(0.99, per_node * stats.q(d + 1)) for d in range(len(path))]
                out.append(_Candidate(path, chances, "heads"))
        if row.pool is not None:
            add(row.pool.get(row.tokens[-1], config.pool_candidates), "pool")
        if row.jacobi is not None:
            add([row.jacobi.candidate()], "jacobi")
        return out

    def _room(self, row: _Row) -> int:
        # Never propose past the context's end.
        left = self.runtime.info.context_length - row.cached
        return max(1, min(self.config.max_block, left))

    def _plan_blocks(self) -> list[_Block]:
        """Choose every row's tree for this step (module docstring: only what pays)."""
        rows = self._rows
        per_row: list[list[_Candidate]] = [
            self._candidates(r) if r.speculative else [] for r in rows
        ]
        # Every node of every row's merged trie, with the chance it is accepted.
        nodes: list[tuple[float, int, int, tuple[int, ...]]] = []  # (p, depth, row, path)
        for b, cands in enumerate(per_row):
            best: dict[tuple[int, ...], float] = {}
            room = self._room(rows[b]) - 1
            for cand in cands:
                p = 1.0
                for d, q in enumerate(cand.chances[:room]):
                    key = tuple(cand.path[: d + 1])
                    p *= q
                    best[key] = max(best.get(key, 0.0), p)
            for key, p in best.items():
                nodes.append((p, len(key), b, key))
        # Best first; a parent is never less likely than its child, and on ties the
        # shallower node comes first, so every prefix of the order is a set of trees.
        nodes.sort(key=lambda n: (-n[0], n[1]))
        window = 0
        windowed = [r.window is not None and self._room(r) > r.window.size + 1 for r in rows]
        if any(windowed):
            size = sum(r.window.size for r, w in zip(rows, windowed, strict=True) if w and r.window)
            cheap = self.costs(len(rows) + size) <= self.costs(len(rows)) * (
                1 + self.config.window_overhead
            )
            if cheap:
                window = size
            else:
                windowed = [False] * len(rows)
        room = self.runtime.info.max_batch_tokens - len(rows)
        if window > room // 2:  # the window yields nothing directly: drafts come first
            window, windowed = 0, [False] * len(rows)
        nodes = self._within_branches(nodes, windowed)[: max(0, room - window)]
        take = plan(len(rows), [(p, d) for p, d, _, _ in nodes], self.costs, fixed=window)
        chosen: list[set[tuple[int, ...]]] = [set() for _ in rows]
        for _, _, b, key in nodes[:take]:
            chosen[b].add(key)
        blocks = []
        for b, row in enumerate(rows):
            paths: list[list[int]] = []
            tags: list[str] = []
            # The likeliest candidate first: its nodes then come first in the block, so
            # the usual accepted path is a contiguous run of cache cells (llama.cpp's
            # attention sums cells in cell order; see the README on exactness).
            ranked = sorted(per_row[b], key=lambda c: -c.chances[0])
            for cand in ranked:
                keep = 0
                while keep < len(cand.path) and tuple(cand.path[: keep + 1]) in chosen[b]:
                    keep += 1
                if keep:
                    paths.append(cand.path[:keep])
                    tags.append(cand.source)
            tree = build_tree(row.tokens[-1], paths, 1 + len(chosen[b]))
            sources: list[set[str]] = [set() for _ in range(len(tree))]
            jacobi = None
            for branch, tag in zip(tree.branches, tags, strict=True):
                for node in branch:
                    sources[node].add(tag)
                if tag == "jacobi":
                    jacobi = branch
            size = row.window.size if windowed[b] and row.window is not None else 0
            blocks.append(_Block(tree, sources, jacobi, size))
        return blocks

    def _within_branches(
        self, nodes: list[tuple[float, int, int, tuple[int, ...]]], windowed: list[bool]
    ) -> list[tuple[float, int, int, tuple[int, ...]]]:
        """The nodes, in order, that keep every tree's leaves within what the runtime can
        branch in one evaluation (llama.cpp: a temporary sequence per leaf)."""
        budget = self.runtime.info.max_branches
        width = self.config.window
        rows = len(self._rows)
        leaves = [width if w else 0 for w in windowed]  # a window's columns are leaves
        kids: list[dict[tuple[int, ...], int]] = [{} for _ in range(rows)]
        taken: list[set[tuple[int, ...]]] = [set() for _ in range(rows)]

        def branching(n: int) -> int:
            return n if n >= 2 else 0

        used = sum(branching(n) for n in leaves)
        out = []
        for node in nodes:
            _, _, b, key = node
            parent = key[:-1]
            if parent and parent not in taken[b]:
                continue  # its parent did not fit: neither does it
            siblings = kids[b].get(parent, 0)
            grown = leaves[b] + (0 if parent and siblings == 0 else 1)
            if not parent and siblings == 0 and leaves[b] == 0:
                grown = 1
            extra = branching(grown) - branching(leaves[b])
            if used + extra > budget:
                continue
            used += extra
            leaves[b] = grown
            kids[b][parent] = siblings + 1
            taken[b].add(key)
            out.append(node)
        return out

    # ----------------------------------------------------------------- decoding
    def _decode(self) -> list[SequenceUpdate]:
        start = time.perf_counter()
        rows = list(self._rows)  # rows that finish leave self._rows during the step
        blocks = self._plan_blocks()
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        parents: list[int] = []
        outputs: list[bool] = []
        out_count = 0
        for row, block in zip(rows, blocks, strict=True):
            block.start = len(tokens)
            block.out_start = out_count
            tree = block.tree
            base = row.cached
            tokens += tree.tokens
            positions += [base + d for d in tree.depths]
            parents += [-1 if p < 0 else block.start + p for p in tree.parents]
            outputs += [True] * len(tree)
            out_count += len(tree)
            if block.window_size and row.window is not None:
                w = block.window_size
                width = self.config.window
                first = len(tokens)
                tokens += row.window.tokens()
                positions += [base + o for o in self._window_offsets]
                parents += [block.start if p < 0 else first + p for p in self._window_parents]
                # Only the newest level needs logits: the older levels are its context.
                outputs += [i >= w - width for i in range(w)]
                out_count += width
            seqs += [row.seq] * (len(tokens) - len(seqs))
        batch = TokenBatch(tokens, positions, seqs, parents, outputs)
        # Hidden states and the heads' matmuls cost time of their own: not spent where
        # even typical guesses could not pay at this batch size (many rows on a CPU).
        want_hidden = (
            self.heads is not None
            and typical_plan(len(rows), self.costs)[1] > len(rows)
            and self._heads_active()
        )
        began = time.perf_counter()
        out = self.runtime.evaluate(batch, hidden=want_hidden)
        argmax = out.argmax()
        self.costs.observe(len(tokens), time.perf_counter() - began)
        updates: list[SequenceUpdate] = []
        finished: list[_Row] = []
        keep: dict[int, list[int]] = {}
        drafting: list[tuple[_Row, int]] = []  # (row, output index of its last node)
        for row, block in zip(rows, blocks, strict=True):
            try:
                update, path = self._advance(row, block, out, argmax)
            except Exception as exc:  # one row's fault (its sampling, ...) is its own
                update = SequenceUpdate(row.id, [], error=f"{type(exc).__name__}: {exc}")
                path = []
            updates.append(update)
            if update.finish_reason is not None or update.error is not None:
                finished.append(row)
                keep[row.seq] = []
            else:
                keep[row.seq] = [block.start + i for i in path]
                if row.speculative:
                    drafting.append((row, block.out_start + path[-1]))
        heads_s = 0.0
        if want_hidden:
            heads_s = self._draft(drafting, out)
        elif self.heads is not None:
            for row, _ in drafting:
                row.head_paths, row.head_scores = [], []
        self.runtime.settle(keep)
        self._remove(finished)
        stats = self.stats
        stats.decode_steps += 1
        stats.row_steps += len(rows)
        stats.step_tokens += len(tokens)
        stats.proposed_tokens += sum(len(b.tree) - 1 for b in blocks)
        elapsed = time.perf_counter() - start
        stats.decode_seconds += elapsed
        if self.heads is not None:
            self._judge_heads(len(rows), heads_s, elapsed - heads_s)
        return updates

    def _heads_active(self) -> bool:
        """Whether to pay for the heads this step (they draft the next step's tree).

        The heads cost real time of their own (a small matmul per row, more on a CPU
        than the tree nodes they save where blocks are expensive). While what their
        accepted tokens save stays below that cost, they rest, and are tried again
        after 32 steps, as a reply's later phase may suit them better.
        """
        if self._heads_worth > 0:
            return True
        self._heads_pause += 1
        if self._heads_pause >= 32:
            self._heads_pause = 0
            self._heads_worth = 0.5  # a fresh trial: a few steps to prove themselves
            return True
        return False

    def _judge_heads(self, rows: int, heads_s: float, step_s: float) -> None:
        """Update ``_heads_worth`` with this step: tokens the heads won, each worth a
        row's share of the step, against the heads' own time."""
        saved = self._heads_gain * step_s / max(1, rows)
        self._heads_worth = 0.8 * self._heads_worth + 0.2 * (saved - heads_s) / max(step_s, 1e-9)
        self._heads_gain = 0

    def _draft(self, drafting: list[tuple[_Row, int]], out: Any) -> float:
        """Let the draft heads guess what follows each greedy row's new current token;
        returns the seconds it took."""
        assert self.heads is not None
        if not drafting:
            return 0.0
        began = time.perf_counter()
        at = [i for _, i in drafting]
        hidden = out.hidden(at)  # [N, C]
        gated = self.heads.entropy_gated(out.logits(at))
        proposals = self.heads.propose(
            hidden, [r.tokens[-1] for r, _ in drafting], self.config.head_nodes
        )
        for (row, _), (paths, scores), skip in zip(drafting, proposals, gated, strict=True):
            row.head_paths, row.head_scores = ([], []) if skip else (paths, scores)
        elapsed = time.perf_counter() - began
        self.stats.heads_seconds += elapsed
        return elapsed

    def _advance(
        self, row: _Row, block: _Block, out: Any, argmax: list[int]
    ) -> tuple[SequenceUpdate, list[int]]:
        request = row.request
        tree = block.tree
        n = len(tree)
        if row.speculative:
            predicted = argmax[block.out_start : block.out_start + n]
            path, bonus = accept(tree, predicted)
            self._learn(block, path)
            row.last_node = path[-1]
            new = [tree.tokens[i] for i in path[1:]] + [bonus]
            if block.window_size and row.window is not None and row.pool is not None:
                width = self.config.window
                newest = argmax[block.out_start + n : block.out_start + n + width]
                padded = [0] * (block.window_size - width) + newest
                row.window.update(padded, row.pool)
            if row.jacobi is not None:
                if block.jacobi_branch is not None:
                    row.jacobi.update([predicted[i] for i in block.jacobi_branch], len(new))
                else:  # not evaluated this step: the old guess, shifted past the new tokens
                    row.jacobi.guess = row.jacobi.guess[len(new) :]
                if len(row.jacobi.guess) < row.jacobi.length:
                    fill = row.jacobi.guess[-1:] or [bonus]
                    row.jacobi.guess += fill * (row.jacobi.length - len(row.jacobi.guess))
        else:
            path = [0]
            context = row.tokens if request.sampling.has_penalty else None
            logits = out.logits([block.out_start])[0]
            new = [choose(logits, request.sampling, row.generator, context)]
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
            at = [block.out_start + i for i in path[: len(kept)]]
            logprobs = token_logprobs(out.logits(at), kept, request.logprobs)
        self.stats.accepted[len(kept) + (finish == "stop")] += 1
        self.stats.generated_tokens += len(kept)
        if finish is None:
            row.extend(new, self.config.ngram)
        else:
            row.tokens.extend(kept)  # the row leaves now; only ``on_leave`` sees these
            row.generated += len(kept)
        return SequenceUpdate(row.id, kept, logprobs, finish), path

    def _learn(self, block: _Block, path: list[int]) -> None:
        """Every proposed node whose parent was accepted is a trial for its sources."""
        tree = block.tree
        on_path = set(path)
        for node in range(1, len(tree)):
            if tree.parents[node] not in on_path:
                continue
            hit = node in on_path
            for source in block.sources[node]:
                self._acceptance[source].record(tree.depths[node], hit)
                if hit and source == "heads":
                    self._heads_gain += 1
