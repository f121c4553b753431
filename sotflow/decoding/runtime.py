"""The seam under the decoders: what a model runtime must do for them.

A runtime holds a model and one key/value cache shared by numbered sequences. The
decoders (continuous batching, the shared SoT prefix, prompt lookup, Jacobi/lookahead,
draft heads) speak only this interface, so they run unchanged on llama.cpp and on torch.

One evaluation is a ``TokenBatch``: tokens of one or more sequences. The tokens of one
sequence form a *tree* hanging after that sequence's cached tokens: each token names
its parent in the batch (``-1``: it follows the cache directly) and sits one position
after it. A token attends to its sequence's cache, its ancestors in the batch and
itself, never to its siblings. That covers everything the decoders run: a prompt chunk
(a chain), a plain step (one token), a draft tree, and the lookahead window, whose
visibility pattern is itself a tree (``lookahead.window_layout``). Why parents rather
than free-form masks or llama.cpp's sequence sets: a tree is what every decoder here
proposes, torch turns parents into its block mask directly, and llama.cpp turns a
tree's root-to-leaf paths into sequence sets (see ``runtimes/llama_cpp``).

After every ``evaluate`` the caller says, with ``settle``, which tokens each sequence of
the batch keeps: a root-to-node path, in order (all of a prompt chunk, the accepted
branch of a tree, nothing). The rest is forgotten. ``fork`` gives a new sequence a copy
of another's first cached tokens (a shared prefix is computed once); ``drop`` forgets a
sequence.

No torch and no numpy-free fallbacks here: logits come back as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Runtime",
    "RuntimeInfo",
    "StepOutput",
    "TokenBatch",
    "ancestors",
]


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """One evaluation; every list has one entry per token."""

    tokens: list[int]
    positions: list[int]
    seqs: list[int]
    """The sequence each token belongs to."""
    parents: list[int]
    """Index in this batch of the token this one follows, or -1 (it follows the cache)."""
    outputs: list[bool]
    """Whether the token's logits (and hidden state) are wanted."""

    def __len__(self) -> int:
        return len(self.tokens)


def ancestors(parents: Sequence[int], index: int) -> list[int]:
    """``index`` and its ancestors in the batch, the root first."""
    chain = []
    i = index
    while i >= 0:
        chain.append(i)
        i = parents[i]
    chain.reverse()
    return chain


class StepOutput(Protocol):
    """What one evaluation produced, for the tokens that asked for output, in batch
    order. Valid until the runtime's next ``evaluate``."""

    def argmax(self) -> list[int]:
        """The greedy next token after each output token: ``[K]``."""
        ...

    def logits(self, rows: Sequence[int]) -> np.ndarray:
        """Raw float32 logits of the given output rows: ``[len(rows), V]``."""
        ...

    def hidden(self, rows: Sequence[int]) -> np.ndarray:
        """Final (normed) hidden states of the given output rows: ``[len(rows), C]``.
        Only after ``evaluate(..., hidden=True)``."""
        ...


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    name: str
    """``"llama.cpp"`` or ``"torch"``."""
    vocab_size: int
    hidden_size: int
    layers: int
    context_length: int
    """Positions a sequence may use (prompt and completion together)."""
    max_sequences: int
    """Sequence ids ``0 .. max_sequences-1`` may be used at once."""
    max_batch_tokens: int = 1 << 30
    """The most tokens one evaluation may hold (llama.cpp stays exact below 64)."""
    max_branches: int = 1 << 30
    """The most tree leaves one evaluation may hold over all its sequences, counting
    only sequences whose tokens branch (a chain has no cost here)."""
    device: str = "cpu"
    fingerprint: str = ""
    """Identifies the weights and the machine setting (threads, device, dtype) whose
    speed was measured: the key under which block costs are cached."""


@runtime_checkable
class Runtime(Protocol):
    info: RuntimeInfo

    def evaluate(self, batch: TokenBatch, *, hidden: bool = False) -> StepOutput:
        """Run ``batch``; every token's key/value is cached until ``settle``."""
        ...

    def settle(self, keep: Mapping[int, Sequence[int]]) -> None:
        """For each sequence of the last batch, the batch indices it keeps (a path from
        its root, in order); its other tokens of that batch are forgotten."""
        ...

    def fork(self, src: int, dst: int, length: int) -> None:
        """``dst`` (empty) gets a copy of ``src``'s first ``length`` cached tokens."""
        ...

    def drop(self, seq: int) -> None:
        """Forget every cached token of ``seq``."""
        ...

    def output_rows(self, token_ids: Sequence[int]) -> np.ndarray:
        """Rows of the vocabulary projection, float32 ``[len(token_ids), C]``: what
        draft heads score their guesses with."""
        ...

    def embedding_rows(self, token_ids: Sequence[int]) -> np.ndarray:
        """Rows of the input embedding, float32 ``[len(token_ids), C]``."""
        ...
