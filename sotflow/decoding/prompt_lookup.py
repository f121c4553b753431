"""Prompt lookup: propose what followed the last n-gram where it occurred before.

Answers often copy phrases from the question (and SoT point expansions repeat their
point's title), so the tokens after an earlier occurrence of the current n-gram are
cheap, frequently right guesses. The index is updated as tokens are appended, so a
lookup costs a dictionary probe instead of a scan of the context.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["NgramIndex"]


class NgramIndex:
    """Where each n-gram (``1 <= n <= max_ngram``) of a growing token list last ended."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, per_key: int = 4) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.per_key = per_key
        self.tokens: list[int] = []
        self._ends: dict[tuple[int, ...], list[int]] = {}

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens)
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end < n:
                    break
                key = tuple(self.tokens[end - n : end])
                ends = self._ends.setdefault(key, [])
                ends.append(end)
                if len(ends) > self.per_key + 1:
                    del ends[0]

    def candidates(self, num_tokens: int, max_candidates: int = 2) -> list[list[int]]:
        """Continuations of the current suffix, longest n-gram match and latest first."""
        out: list[list[int]] = []
        seen: set[tuple[int, ...]] = set()
        end = len(self.tokens)
        for n in range(min(self.max_ngram, end), self.min_ngram - 1, -1):
            ends = self._ends.get(tuple(self.tokens[end - n :]), ())
            for previous in reversed(ends):
                if previous >= end:  # the suffix itself
                    continue
                continuation = self.tokens[previous : previous + num_tokens]
                key = tuple(continuation)
                if continuation and key not in seen:
                    seen.add(key)
                    out.append(continuation)
                    if len(out) >= max_candidates:
                        return out
        return out
