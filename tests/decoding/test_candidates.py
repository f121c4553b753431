"""Token trees, greedy acceptance, prompt lookup, the n-gram pool and the lookahead window."""

from __future__ import annotations

import pytest

from sotflow.decoding.jacobi import JacobiGuess
from sotflow.decoding.lookahead import LookaheadWindow, NgramPool, window_layout
from sotflow.decoding.prompt_lookup import NgramIndex
from sotflow.decoding.verify import accept, build_tree


def test_tree_merges_shared_prefixes_and_respects_the_budget() -> None:
    tree = build_tree(9, [[1, 2, 3], [1, 2, 4], [5]], max_nodes=10)
    assert tree.tokens == [9, 1, 2, 3, 4, 5]
    assert tree.parents == [-1, 0, 1, 2, 2, 0]
    assert tree.depths == [0, 1, 2, 3, 3, 1]
    assert tree.branches == [[1, 2, 3], [1, 2, 4], [5]]
    small = build_tree(9, [[1, 2, 3], [1, 2, 4], [5]], max_nodes=3)
    assert small.tokens == [9, 1, 2]
    assert small.branches == [[1, 2], [1, 2], []]


def test_ancestor_mask_sees_only_the_path() -> None:
    tree = build_tree(0, [[1, 2], [3]], max_nodes=8)
    mask = tree.ancestors_mask()
    assert mask[2] == [True, True, True, False]
    assert mask[3] == [True, False, False, True]  # the sibling branch is invisible


def test_accept_walks_the_argmax_and_adds_the_bonus_token() -> None:
    tree = build_tree(0, [[1, 2, 3], [1, 5]], max_nodes=8)
    # nodes: 0:root 1:'1' 2:'2' 3:'3' 4:'5'
    path, bonus = accept(tree, [1, 5, 0, 0, 7])
    assert path == [0, 1, 4] and bonus == 7
    path, bonus = accept(tree, [4, 2, 3, 8, 0])
    assert path == [0] and bonus == 4
    path, bonus = accept(tree, [1, 2, 3, 6, 0])
    assert path == [0, 1, 2, 3] and bonus == 6


def test_prompt_lookup_prefers_the_longest_latest_match() -> None:
    index = NgramIndex(max_ngram=3)
    index.extend([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3])
    # Suffix (1, 2, 3) occurred at the start; (2, 3) also before 7.
    assert index.candidates(3, max_candidates=3) == [[4, 5, 9], [7, 8, 1]]
    index.extend([4])
    assert index.candidates(2, max_candidates=1) == [[5, 9]]
    empty = NgramIndex()
    empty.extend([1, 2, 3])
    assert empty.candidates(4) == []


def test_pool_keeps_the_newest_ngrams_per_key() -> None:
    pool = NgramPool(3, per_key=2)
    pool.add_all([1, 2, 3, 1, 4, 5, 1, 2, 3])
    assert pool.get(1, 5) == [[2, 3], [4, 5]]
    pool.add([1, 7, 7])
    assert pool.get(1, 5) == [[7, 7], [2, 3]]
    assert pool.get(42, 5) == []
    with pytest.raises(ValueError):
        NgramPool(1)


def test_window_layout_gives_each_token_a_consecutive_history() -> None:
    offsets, sees = window_layout(width=3, levels=2)
    assert offsets == [1, 2, 3, 2, 3, 4]
    # Level 1, column 2 sees level 0 columns 0-2, then itself: offsets 1, 2, 3, 4.
    assert sees[5] == [(0, 0), (0, 1), (0, 2), (1, 2)]
    for i, visible in enumerate(sees):
        seen = sorted(offsets[level * 3 + column] for level, column in visible)
        assert seen == list(range(1, offsets[i] + 1))


def test_window_update_harvests_column_ngrams_and_shifts() -> None:
    window = LookaheadWindow(width=2, ngram=3, seed_tokens=[5])
    window.grid = [[10, 11], [20, 21]]
    pool = NgramPool(3)
    predictions = [0, 0, 30, 31]  # only the last level's predictions matter
    window.update(predictions, pool)
    assert pool.get(10, 4) == [[20, 30]]
    assert pool.get(11, 4) == [[21, 31]]
    assert window.grid == [[20, 21], [30, 31]]
    assert window.tokens() == [20, 21, 30, 31]


def test_jacobi_guess_shifts_past_accepted_tokens() -> None:
    guess = JacobiGuess(4, [1, 1, 1, 1])
    guess.update([7, 8, 9, 6], accepted=2)
    assert guess.candidate() == [8, 9, 6]
