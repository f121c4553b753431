"""What a block of tokens costs on this machine, and the decision it drives.

Every speculative decoder trades compute for steps: a tree of ``n`` proposed tokens is
verified in one evaluation, and it pays only if the tokens it adds are worth more than
the evaluation's extra cost. On a GPU a block of 16 tokens costs about what one token
costs; on a 2-core CPU it costs ~8x (measured on the bundled GGUF with llama.cpp:
2 tokens 1.75x, 4 tokens 2.2x, 8 tokens 3.9x, 16 tokens 8.5x). So the cost curve is
measured once per model and machine setting (``measure``), cached on disk
(``cached_costs``), and the decoder proposes only the tree nodes whose expected gain
beats their cost (``plan``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .runtime import Runtime, TokenBatch

__all__ = ["SIZES", "BlockCosts", "cached_costs", "measure", "plan"]

SIZES = (1, 2, 4, 8)
"""Block sizes measured at load (~0.35 s on a 2-core CPU with SmolLM2: it is most of
the load time there); costs in between are interpolated, beyond extrapolated, and
every step refines them (``BlockCosts.observe``)."""


@dataclass(slots=True)
class BlockCosts:
    """Seconds to evaluate ``n`` tokens in one batch, as a multiple of one token's.

    A measurement at load is only a first guess: another process may have been busy
    then, or become busy later. So every evaluation the decoder runs is also a
    measurement (``observe``), and the curve follows what steps really cost now.
    """

    sizes: tuple[int, ...]
    relative: tuple[float, ...]
    one_token_s: float = 0.0
    _seen: dict[int, float] | None = None
    """Recent seconds per evaluated token count (an average that forgets)."""
    _count: int = 0

    def observe(self, n: int, seconds: float) -> None:
        """Fold one evaluation of ``n`` tokens that took ``seconds`` into the curve."""
        if self.one_token_s <= 0 or n < 1 or seconds <= 0:
            return
        seen = self._seen if self._seen is not None else {}
        self._seen = seen
        old = seen.get(n)
        seen[n] = seconds if old is None else 0.9 * old + 0.1 * seconds
        self._count += 1
        if old is None or self._count % 16 == 0:
            self._refit()

    def _refit(self) -> None:
        """Merge what was seen with the measured curve (seen sizes win)."""
        assert self._seen is not None
        points = {n: r * self.one_token_s for n, r in zip(self.sizes, self.relative, strict=True)}
        points.update(self._seen)
        one = points.get(1, self.one_token_s)
        sizes = sorted(points)
        relative = []
        for n in sizes:
            r = max(1.0, points[n] / one) if n > 1 else 1.0
            relative.append(max(r, relative[-1]) if relative else r)
        self.sizes, self.relative, self.one_token_s = tuple(sizes), tuple(relative), one

    @classmethod
    def flat(cls, up_to: int = 64) -> BlockCosts:
        """Every block up to ``up_to`` tokens costs one token's time: what a GPU nearly
        gives, and the assumption when nothing was measured."""
        return cls((1, up_to), (1.0, 1.0))

    @classmethod
    def linear(cls) -> BlockCosts:
        """Each token costs as much as the first: speculation never pays."""
        return cls((1, 2), (1.0, 2.0))

    def __call__(self, n: int) -> float:
        sizes, rel = self.sizes, self.relative
        if n <= sizes[0]:
            return rel[0] * n / sizes[0]
        for i in range(1, len(sizes)):
            if n <= sizes[i]:
                a, b = sizes[i - 1], sizes[i]
                return rel[i - 1] + (rel[i] - rel[i - 1]) * (n - a) / (b - a)
        # Past the last size: the last segment's slope, never less than flat.
        if len(sizes) == 1:
            return rel[-1] * n / sizes[-1]
        slope = max(0.0, (rel[-1] - rel[-2]) / (sizes[-1] - sizes[-2]))
        return rel[-1] + slope * (n - sizes[-1])

    def as_dict(self) -> dict[str, object]:
        return {
            "sizes": list(self.sizes),
            "relative": [round(r, 3) for r in self.relative],
            "one_token_ms": round(self.one_token_s * 1000, 3),
        }


def measure(
    runtime: Runtime,
    *,
    seq: int,
    sizes: Sequence[int] = SIZES,
    context: int = 32,
    repeats: int = 2,
) -> BlockCosts:
    """Time blocks of each size after a ``context``-token prefix on sequence ``seq``.

    Sizes are interleaved round by round and the fastest of ``repeats`` runs is kept:
    another process can only add time, so the minimum is the machine's own cost.
    Every token asks for logits, as a verified draft tree does.
    """
    info = runtime.info
    context = min(context, info.max_batch_tokens)
    sizes = [n for n in sizes if n + context < info.context_length and n <= info.max_batch_tokens]
    vocab = info.vocab_size
    prefix = [(7 * i + 3) % vocab for i in range(context)]
    runtime.evaluate(
        TokenBatch(
            prefix,
            list(range(context)),
            [seq] * context,
            [-1, *range(context - 1)],
            [False] * context,
        )
    )
    runtime.settle({seq: list(range(context))})
    best = dict.fromkeys(sizes, float("inf"))
    try:
        for _ in range(repeats + 1):  # the first round warms caches up and is not kept
            for n in sizes:
                block = TokenBatch(
                    [(11 * i + 5) % vocab for i in range(n)],
                    list(range(context, context + n)),
                    [seq] * n,
                    [-1, *range(n - 1)],
                    [True] * n,
                )
                start = time.perf_counter()
                out = runtime.evaluate(block)
                out.argmax()
                elapsed = time.perf_counter() - start
                runtime.settle({seq: []})
                if _ > 0:
                    best[n] = min(best[n], elapsed)
    finally:
        runtime.drop(seq)
    one = best[sizes[0]]
    relative = tuple(max(1.0, best[n] / one) if n > 1 else 1.0 for n in sizes)
    # A bigger block never costs less than a smaller one; noise can say otherwise.
    fixed = []
    for r in relative:
        fixed.append(max(r, fixed[-1]) if fixed else r)
    return BlockCosts(tuple(sizes), tuple(fixed), one)


def cached_costs(runtime: Runtime, folder: Path, *, seq: int) -> BlockCosts:
    """``measure`` once per runtime fingerprint; later loads read the file."""
    key = runtime.info.fingerprint
    path = folder / f"block-costs-{key}.json"
    if key:
        try:
            data = json.loads(path.read_text())
            return BlockCosts(
                tuple(data["sizes"]), tuple(data["relative"]), float(data["one_token_s"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            pass
    costs = measure(runtime, seq=seq)
    if key:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            temporary.write_text(
                json.dumps(
                    {
                        "sizes": list(costs.sizes),
                        "relative": list(costs.relative),
                        "one_token_s": costs.one_token_s,
                    }
                )
            )
            temporary.replace(path)
        except OSError:
            pass  # a read-only cache only costs a measurement next time
    return costs


def plan(
    base: int,
    nodes: Sequence[tuple[float, int]],
    costs: BlockCosts,
    *,
    fixed: int = 0,
) -> int:
    """How many of ``nodes`` to evaluate this step.

    ``base`` tokens run anyway (one per row) and yield one token each; ``nodes`` are the
    candidate tree nodes of all rows, ``(probability of being accepted, depth)``, best
    first (a node never comes before its parent). ``fixed`` tokens cost without a direct
    yield (a lookahead window). Returns the count that maximises expected new tokens per
    unit of cost; 0 when speculating does not pay.
    """
    tokens = base + fixed
    expected = float(base)
    best_ratio = base / costs(base)  # plain: no proposals, no window
    best = 0
    for i, (p, _) in enumerate(nodes):
        tokens += 1
        expected += p
        ratio = expected / costs(tokens)
        if ratio > best_ratio * (1 + 1e-9):
            best_ratio, best = ratio, i + 1
    return best


# What a row's draft-head guesses are accepted with, best first: about the held-out
# top-1 of the bundled heads 1-3 (sotflow/decoding/weights/README.md), then their
# less likely siblings and deeper nodes. Only the shape matters: whether, and how far,
# the step plan finds speculating worth it for a number of rows.
TYPICAL_NODE_ACCEPTANCE = (0.57, 0.36, 0.27, 0.15, 0.1, 0.08, 0.05, 0.04)


def typical_plan(rows: int, costs: BlockCosts, speculating: bool = True) -> tuple[float, int]:
    """Expected new tokens per unit of cost for ``rows`` greedy rows whose heads guess
    as well as typical heads do, and the tokens a step then evaluates."""
    nodes = sorted(
        ((p, 1) for p in TYPICAL_NODE_ACCEPTANCE * rows if speculating),
        key=lambda node: -node[0],
    )
    k = plan(rows, nodes, costs)
    expected = rows + sum(p for p, _ in nodes[:k])
    return expected / costs(rows + k), rows + k
