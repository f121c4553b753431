"""The lean forward against Hugging Face's, and the cache's bookkeeping."""

from __future__ import annotations

import pytest
import torch

from sotflow.decoding.verify import build_tree
from sotflow.runtimes.torch.forward import DecoderModel, block_mask, packing_available


def run(model: DecoderModel, cache, row: int, start: int, tokens, offsets, inner):  # type: ignore[no-untyped-def]
    return model.forward(
        torch.tensor([tokens]),
        start + torch.tensor([offsets]),
        cache,
        rows=[row],
        write_start=[start],
        mask=block_mask([start], torch.as_tensor(inner)[None]),
    )


@pytest.mark.parametrize("pack", [False, True])
def test_prefill_logits_match_transformers(tiny_torch: DecoderModel, pack: bool) -> None:
    if pack and not packing_available(tiny_torch.device, tiny_torch.dtype):
        pytest.fail("oneDNN packing should be available on CPU float32 with this torch")
    tiny = DecoderModel(tiny_torch.hf_model, pack=pack)
    assert tiny.packed == pack
    ids = torch.randint(0, 250, (1, 30), generator=torch.Generator().manual_seed(0))
    cache = tiny.new_cache()
    cache.add_row()
    causal = torch.ones(30, 30, dtype=torch.bool).tril()
    ours = run(tiny, cache, 0, 0, ids[0].tolist(), list(range(30)), causal)
    with torch.inference_mode():
        theirs = tiny.hf_model(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_short_and_long_blocks_agree(tiny_torch: DecoderModel) -> None:
    """Blocks up to ``small_block`` tokens use matmul attention, longer ones SDPA."""
    ids = torch.randint(0, 250, (1, 70), generator=torch.Generator().manual_seed(2)).tolist()[0]
    causal = torch.ones(70, 70, dtype=torch.bool).tril()
    cache = tiny_torch.new_cache()
    cache.add_row()
    long = run(tiny_torch, cache, 0, 0, ids, list(range(70)), causal)
    short = run(tiny_torch, cache, 0, 0, ids[:20], list(range(20)), causal[:20, :20])
    assert torch.allclose(long[:, :20], short, atol=1e-5)


def test_tree_block_equals_each_branch_run_causally(tiny_torch: DecoderModel) -> None:
    prefix = torch.randint(0, 250, (12,), generator=torch.Generator().manual_seed(1)).tolist()
    branches = [[5, 6, 7], [5, 9], [11, 12, 13, 14]]
    tree = build_tree(prefix[-1], branches, max_nodes=16)
    cache = tiny_torch.new_cache()
    cache.add_row()
    causal = torch.ones(11, 11, dtype=torch.bool).tril()
    run(tiny_torch, cache, 0, 0, prefix[:-1], list(range(11)), causal)
    cache.lengths[0] = 11
    block = run(tiny_torch, cache, 0, 11, tree.tokens, tree.depths, tree.ancestors_mask())[0]
    with torch.inference_mode():
        for branch, nodes in zip(branches, tree.branches, strict=True):
            full = tiny_torch.hf_model(torch.tensor([prefix + branch])).logits[0, 11:]
            assert torch.allclose(block[[0, *nodes]], full, atol=1e-5)


def test_commit_moves_accepted_entries_into_place(tiny_torch: DecoderModel) -> None:
    cache = tiny_torch.new_cache(rows=2, capacity=64)
    cache.add_row()
    for tensor in cache.keys:
        tensor[0, :, :10] = torch.arange(10.0)[None, :, None]
    cache.lengths[0] = 4
    cache.commit(0, 4, [0, 3, 5])  # keep block entries 4, 7, 9 at 4, 5, 6
    assert cache.lengths[0] == 7
    assert cache.keys[0][0, 0, :7, 0].tolist() == [0, 1, 2, 3, 4, 7, 9]


def test_rows_compact_and_growth_keeps_content(tiny_torch: DecoderModel) -> None:
    cache = tiny_torch.new_cache(rows=1, capacity=64)
    for r in range(3):
        cache.add_row()
        cache.keys[1][r, :, :5] = float(r + 1)
        cache.lengths[r] = 5
    cache.reserve(3, 300)
    assert cache.capacity >= 300 and cache.rows_allocated >= 3
    assert cache.keys[1][2, 0, 4, 0] == 3.0
    moved = cache.remove_row(0)
    assert moved == 2 and cache.live_rows == 2
    assert cache.keys[1][0, 0, 4, 0] == 3.0
    cache.copy_prefix(1, 0, 3)
    assert cache.lengths[0] == 3 and cache.keys[1][0, 0, 2, 0] == 2.0
