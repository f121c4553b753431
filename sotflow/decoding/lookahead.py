"""Lookahead decoding (Fu et al., 2024): a 2D Jacobi window that harvests n-grams.

The window keeps ``N-1`` levels of ``W`` guesses. Token ``(l, j)`` (level ``l``, column
``j``) sits ``1+l+j`` places after the current token and sees the current token, level
0's columns ``0..j`` and column ``j`` of levels ``1..l``: a well-formed sequence of
consecutive positions. Its argmax is thus a Jacobi update of the token one place later.
Each step the last level's predictions become a new level (the oldest is dropped), and
every column yields an n-gram ``(L0[j], ..., L[N-2][j], prediction)`` for the pool.

The pool, keyed by first token, proposes up to ``G`` continuations of the current
token; they are verified in the same forward as the window (see ``verify``). The
window only ever produces guesses, so its contents never affect the output.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["LookaheadWindow", "NgramPool", "window_layout"]


class NgramPool:
    """n-grams keyed by their first token; the newest first, at most ``per_key`` per key."""

    def __init__(self, n: int, per_key: int = 8) -> None:
        if n < 2:
            raise ValueError(f"n-gram size must be at least 2, got {n}")
        self.n = n
        self.per_key = per_key
        self._pool: dict[int, OrderedDict[tuple[int, ...], None]] = {}

    def add(self, ngram: Sequence[int]) -> None:
        if len(ngram) != self.n:
            return
        entries = self._pool.setdefault(ngram[0], OrderedDict())
        tail = tuple(ngram[1:])
        entries.pop(tail, None)
        entries[tail] = None
        while len(entries) > self.per_key:
            entries.popitem(last=False)

    def add_all(self, tokens: Sequence[int]) -> None:
        for start in range(len(tokens) - self.n + 1):
            self.add(tokens[start : start + self.n])

    def get(self, token: int, limit: int) -> list[list[int]]:
        entries = self._pool.get(token)
        if not entries:
            return []
        return [list(tail) for tail in reversed(entries)][:limit]

    def __len__(self) -> int:
        return sum(len(v) for v in self._pool.values())


def window_layout(width: int, levels: int) -> tuple[list[int], list[list[tuple[int, int]]]]:
    """Offsets (places after the current token) and visibility of a window's tokens.

    Tokens are ordered level-major: index ``l*width + j``. Returns each token's offset and
    the list of window ``(level, column)`` tokens it sees besides itself and the root.
    """
    offsets = [1 + level + column for level in range(levels) for column in range(width)]
    sees = []
    for level in range(levels):
        for column in range(width):
            visible = [(0, c) for c in range(column + 1)]
            visible += [(m, column) for m in range(1, level + 1)]
            sees.append(visible)
    return offsets, sees


class LookaheadWindow:
    def __init__(self, width: int, ngram: int, seed_tokens: Sequence[int], seed: int = 0) -> None:
        if width < 1 or ngram < 2:
            raise ValueError(
                f"lookahead needs width >= 1 and n-gram size >= 2, got {width}, {ngram}"
            )
        self.width = width
        self.levels = ngram - 1
        # Tokens from the prompt are plausible guesses; the choice only affects speed.
        rng = random.Random(seed)
        source = list(seed_tokens) or [0]
        self.grid: list[list[int]] = [
            [rng.choice(source) for _ in range(width)] for _ in range(self.levels)
        ]

    @property
    def size(self) -> int:
        return self.width * self.levels

    def tokens(self) -> list[int]:
        return [token for level in self.grid for token in level]

    def update(self, predictions: Sequence[int], pool: NgramPool) -> None:
        """Feed the argmax of every window token (level-major order) back into the window."""
        last = predictions[(self.levels - 1) * self.width : self.levels * self.width]
        for column in range(self.width):
            pool.add([self.grid[level][column] for level in range(self.levels)] + [last[column]])
        self.grid = [*self.grid[1:], list(last)]
