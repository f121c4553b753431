"""Block costs and the plan they drive: speculate only where it pays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from decoding_helpers import TinyModel, decode_all, decoder, hf_greedy, prompts

from sotflow.decoding.batched import SequenceRequest
from sotflow.decoding.costs import BlockCosts, cached_costs, measure, plan

CPU = BlockCosts((1, 2, 4, 8, 16), (1.0, 1.75, 2.2, 3.9, 8.5), 0.0112)
"""What llama.cpp charged on a 2-core CPU for the bundled model (METHODS.md)."""


def test_costs_interpolate_and_extrapolate() -> None:
    assert CPU(1) == 1.0 and CPU(4) == 2.2
    assert CPU(3) == pytest.approx((1.75 + 2.2) / 2)
    assert CPU(32) == pytest.approx(8.5 + (8.5 - 3.9) / 8 * 16)
    assert BlockCosts.flat()(40) == 1.0


def test_the_plan_takes_only_nodes_that_pay() -> None:
    # Flat costs (a GPU): every node with any chance of acceptance is worth running.
    nodes = [(0.9, 1), (0.8, 2), (0.3, 1), (0.05, 3)]
    assert plan(1, nodes, BlockCosts.flat()) == 4
    # On the CPU a second token costs 0.75 of a step: a node must be nearly certain.
    assert plan(1, [(0.5, 1), (0.4, 2)], CPU) == 0
    assert plan(1, [(0.95, 1), (0.9, 2), (0.85, 3)], CPU) == 3
    # Linear costs: nothing ever pays.
    assert plan(4, [(0.99, 1)] * 4, BlockCosts.linear()) == 0


def test_online_observations_correct_the_curve() -> None:
    costs = BlockCosts((1, 2, 4), (1.0, 1.1, 1.2), 0.010)
    for _ in range(40):
        costs.observe(1, 0.010)
        costs.observe(4, 0.040)  # blocks got expensive: another process is busy
    assert costs(4) > 3.0
    assert costs(2) <= costs(4)


def test_measured_costs_are_cached_by_fingerprint(tiny: TinyModel, tmp_path: Path) -> None:
    runtime = tiny.runtime()
    first = cached_costs(runtime, tmp_path, seq=3)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and runtime.info.fingerprint in files[0].name
    data = json.loads(files[0].read_text())
    assert data["sizes"][0] == 1 and all(r >= 1.0 for r in data["relative"])
    again = cached_costs(runtime, tmp_path, seq=3)
    assert again.relative == first.relative  # read back, not measured again
    # The measurement leaves the cache as it found it: the sequence is gone.
    assert measure(runtime, seq=3).sizes[0] == 1


@pytest.mark.parametrize("mode", ["prompt_lookup", "hybrid", "cerberus"])
def test_where_blocks_cost_as_much_as_tokens_no_decoder_speculates(
    tiny: TinyModel, mode: str
) -> None:
    dec = decoder(tiny, mode, costs=BlockCosts.linear())
    ps = prompts(3, seed=3)
    got, _ = decode_all(dec, [SequenceRequest(p, 40) for p in ps])
    assert got == [hf_greedy(tiny, p, 40) for p in ps]
    assert dec.stats.proposed_tokens == 0
    assert dec.stats.step_tokens == dec.stats.row_steps  # one token a row and step


def test_where_blocks_are_free_the_decoders_speculate(tiny: TinyModel) -> None:
    dec = decoder(tiny, "hybrid")  # flat costs
    decode_all(dec, [SequenceRequest(p, 40) for p in prompts(3, seed=3)])
    assert dec.stats.proposed_tokens > 0
