"""Candidate continuations as a token tree, and greedy acceptance along it.

Every multi-token decoder here (prompt lookup, Jacobi, lookahead's n-gram pool,
Medusa/Cerberus heads) only *proposes* sequences that follow the current token.
They are merged into one trie, run in one forward with a tree mask (a node sees its
ancestors and itself; its position is its depth), and the longest path whose every
token equals the model's own argmax at its parent is accepted, plus the model's next
token after it. That makes the output exactly plain greedy's, whatever was proposed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["TokenTree", "accept", "build_tree"]


@dataclass(slots=True)
class TokenTree:
    """Node 0 is the root: the current token, whose key/value are not cached yet."""

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    children: list[dict[int, int]] = field(default_factory=list)
    branches: list[list[int]] = field(default_factory=list)
    """For each proposed candidate, the node ids its inserted prefix occupies."""

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestors_mask(self) -> list[list[bool]]:
        """``mask[i][j]``: node ``i`` may attend to node ``j`` (an ancestor or itself)."""
        n = len(self.tokens)
        mask = [[False] * n for _ in range(n)]
        for i in range(n):
            j = i
            while j >= 0:
                mask[i][j] = True
                j = self.parents[j]
        return mask


def build_tree(root: int, candidates: Sequence[Sequence[int]], max_nodes: int) -> TokenTree:
    """Merge candidates (each a continuation after ``root``) into a trie of at most ``max_nodes``.

    Earlier candidates have priority: a candidate that does not fit whole is cut short.
    """
    tree = TokenTree(tokens=[root], parents=[-1], depths=[0], children=[{}])
    for candidate in candidates:
        node = 0
        branch: list[int] = []
        for token in candidate:
            child = tree.children[node].get(token)
            if child is None:
                if len(tree.tokens) >= max_nodes:
                    break
                child = len(tree.tokens)
                tree.tokens.append(token)
                tree.parents.append(node)
                tree.depths.append(tree.depths[node] + 1)
                tree.children.append({})
                tree.children[node][token] = child
            branch.append(child)
            node = child
        tree.branches.append(branch)
    return tree


def accept(tree: TokenTree, predicted: Sequence[int]) -> tuple[list[int], int]:
    """Walk the tree along the model's argmax.

    ``predicted[i]`` is the greedy token after node ``i``. Returns the accepted path of
    node ids (root first) and the bonus token: the model's choice after the path's end.
    """
    path = [0]
    node = 0
    while True:
        child = tree.children[node].get(predicted[node])
        if child is None:
            return path, predicted[node]
        path.append(child)
        node = child
