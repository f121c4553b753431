"""Exactness of the batched decoder: every mode, batch and arrival order equals plain greedy."""

from __future__ import annotations

import pytest
import torch
from decoding_helpers import TinyModel, decode_all, decoder, hf_greedy, prompts

from sotflow.decoding.batched import DECODE_MODES, SequenceRequest
from sotflow.decoding.sampling import SamplingConfig

SPECULATIVE = [m for m in DECODE_MODES if m != "plain"]


def greedy(prompt: list[int], n: int, **kwargs: object) -> SequenceRequest:
    return SequenceRequest(prompt, n, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", DECODE_MODES)
def test_single_sequence_matches_hf_generate(tiny: TinyModel, mode: str) -> None:
    for prompt in prompts(3, seed=11):
        expected = hf_greedy(tiny, prompt, 40)
        dec = decoder(tiny, mode)
        (got,), (finish,) = decode_all(dec, [greedy(prompt, 40)])
        assert got == expected
        assert finish == "length"


@pytest.mark.parametrize("mode", SPECULATIVE)
def test_speculative_modes_accept_several_tokens_and_stay_exact(tiny: TinyModel, mode: str) -> None:
    # Random models loop, so multi-token blocks are accepted; if none were, the
    # acceptance and cache-commit paths would be untested.
    multi = 0
    for prompt in prompts(4, seed=3):
        dec = decoder(tiny, mode)
        (got,), _ = decode_all(dec, [greedy(prompt, 60)])
        assert got == hf_greedy(tiny, prompt, 60)
        multi += sum(count for k, count in dec.stats.accepted.items() if k > 1)
        assert dec.stats.generated_tokens == 60
    assert multi > 0


def test_outputs_differ_across_prompts(tiny_varied: TinyModel) -> None:
    # Guards the batch tests below: if every row produced the same text, mixing rows
    # up would go unnoticed.
    outs = {tuple(hf_greedy(tiny_varied, p, 12)) for p in prompts(6, seed=5)}
    assert len(outs) >= 5


@pytest.mark.parametrize("mode", ["plain", "hybrid", "medusa", "cerberus"])
def test_batch_equals_each_row_alone(tiny_varied: TinyModel, mode: str) -> None:
    ps = prompts(6, seed=5)  # different lengths: rows are written at different offsets
    alone = [decode_all(decoder(tiny_varied, mode), [greedy(p, 24)])[0][0] for p in ps]
    together, finish = decode_all(decoder(tiny_varied, mode), [greedy(p, 24) for p in ps])
    assert together == alone
    assert finish == ["length"] * len(ps)
    assert alone[0] == hf_greedy(tiny_varied, ps[0], 24)


@pytest.mark.parametrize("mode", ["plain", "lookahead", "hybrid", "medusa"])
def test_staggered_arrivals_equal_alone(tiny_varied: TinyModel, mode: str) -> None:
    ps = prompts(5, seed=7)
    lengths = [10, 30, 5, 18, 25]
    reqs = [greedy(p, n) for p, n in zip(ps, lengths, strict=True)]
    alone = [decode_all(decoder(tiny_varied, mode), [r])[0][0] for r in reqs]
    dec = decoder(tiny_varied, mode, max_batch_size=3)
    got, _ = decode_all(dec, reqs, arrivals=[0, 2, 3, 9, 9])
    assert got == alone
    assert dec.stats.max_batch == 3
    assert [len(g) for g in got] == lengths


@pytest.mark.parametrize("mode", ["plain", "hybrid", "cerberus"])
def test_shared_prefix_is_computed_once_and_changes_nothing(
    tiny_varied: TinyModel, mode: str
) -> None:
    g = torch.Generator().manual_seed(9)
    prefix = torch.randint(0, 250, (40,), generator=g).tolist()
    suffixes = [torch.randint(0, 250, (3 + i,), generator=g).tolist() for i in range(4)]
    ps = [prefix + s for s in suffixes]
    alone = [decode_all(decoder(tiny_varied, mode), [greedy(p, 16)])[0][0] for p in ps]
    assert len({tuple(a) for a in alone}) == 4
    dec = decoder(tiny_varied, mode)
    got, _ = decode_all(dec, [greedy(p, 16) for p in ps])
    assert got == alone
    # The first prompt computes the prefix; the other three copy it.
    assert dec.stats.shared_prefix_tokens >= 3 * len(prefix)
    full = sum(len(p) - 1 for p in ps)
    assert dec.stats.prefill_tokens <= full - 3 * len(prefix)


def test_late_arrival_copies_prefix_from_a_live_row(tiny_varied: TinyModel) -> None:
    g = torch.Generator().manual_seed(4)
    prefix = torch.randint(0, 250, (30,), generator=g).tolist()
    a, b = [*prefix, 1, 2, 3], [*prefix, 7, 8]
    alone = decode_all(decoder(tiny_varied), [greedy(b, 12)])[0][0]
    dec = decoder(tiny_varied)
    got, _ = decode_all(dec, [greedy(a, 20), greedy(b, 12)], arrivals=[0, 3])
    assert got[1] == alone
    assert dec.stats.shared_prefix_tokens >= len(prefix)


@pytest.mark.parametrize("mode", DECODE_MODES)
def test_eos_inside_an_accepted_block(tiny: TinyModel, mode: str) -> None:
    for prompt in prompts(3, seed=3):
        reference = hf_greedy(tiny, prompt, 50)
        for cut in (0, 7, 23):
            eos = reference[cut]
            first = reference.index(eos)
            dec = decoder(tiny, mode)
            (got,), (finish,) = decode_all(dec, [greedy(prompt, 50, stop_tokens=frozenset({eos}))])
            assert got == reference[:first]
            assert finish == "stop"
            assert got == hf_greedy(tiny, prompt, 50, eos=eos)


@pytest.mark.parametrize("mode", DECODE_MODES)
def test_length_limit_inside_an_accepted_block(tiny: TinyModel, mode: str) -> None:
    prompt = prompts(1, seed=3)[0]
    reference = hf_greedy(tiny, prompt, 40)
    for limit in (1, 2, 3, 9, 17, 40):
        (got,), (finish,) = decode_all(decoder(tiny, mode), [greedy(prompt, limit)])
        assert got == reference[:limit]
        assert finish == "length"


def test_context_end_stops_with_length(tiny: TinyModel) -> None:
    prompt = prompts(1, length=500, seed=1)[0]  # the tiny model's context is 512
    (got,), (finish,) = decode_all(decoder(tiny, "hybrid"), [greedy(prompt, 100)])
    assert len(got) == 512 - len(prompt)
    assert finish == "length"
    with pytest.raises(ValueError, match="context"):
        decoder(tiny).submit(greedy(list(range(512)), 4))


def test_placeholder_tokens_are_never_accepted(tiny: TinyModel) -> None:
    """Padding and window tokens equal to the model's favourite token must not leak out."""
    prompt = prompts(1, seed=3)[0]
    reference = hf_greedy(tiny, prompt, 30)
    favourite = max(set(reference), key=reference.count)
    # A batch whose other row has a much longer block pads this row with zeros; make
    # the zero token the one the model keeps predicting by remapping the prompt.
    other = [favourite] * 20
    dec = decoder(tiny, "hybrid")
    got, _ = decode_all(dec, [greedy(prompt, 30), greedy(other, 30)])
    assert got[0] == reference
    assert got[1] == hf_greedy(tiny, other, 30)


def test_cancel_removes_the_row_at_the_next_step(tiny_varied: TinyModel) -> None:
    ps = prompts(3, seed=2)
    alone = [decode_all(decoder(tiny_varied), [greedy(p, 20)])[0][0] for p in ps]
    dec = decoder(tiny_varied)
    ids = [dec.submit(greedy(p, 20)) for p in ps]
    out: dict[int, list[int]] = {i: [] for i in ids}
    for update in dec.step():
        out[update.seq_id] += update.tokens
    dec.cancel(ids[1])
    while dec.has_work:
        for update in dec.step():
            assert update.seq_id != ids[1]
            out[update.seq_id] += update.tokens
    assert dec.live == 0
    assert out[ids[0]] == alone[0] and out[ids[2]] == alone[2]
    assert len(out[ids[1]]) == 1


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_varied: TinyModel) -> None:
    ps = prompts(3, seed=8)
    cfg = SamplingConfig(temperature=1.0, top_k=20, top_p=0.9, seed=123)
    req = SequenceRequest(ps[0], 20, cfg)
    a = decode_all(decoder(tiny_varied), [req])[0][0]
    b = decode_all(decoder(tiny_varied), [req])[0][0]
    mixed = decode_all(decoder(tiny_varied, "hybrid"), [greedy(ps[1], 25), req, greedy(ps[2], 5)])
    assert a == b == mixed[0][1]
    other = decode_all(
        decoder(tiny_varied), [SequenceRequest(ps[0], 20, cfg.__class__(temperature=1.0, seed=124))]
    )[0][0]
    assert other != a
    assert a != hf_greedy(tiny_varied, ps[0], 20)


def test_greedy_with_repetition_penalty_matches_hf(tiny: TinyModel) -> None:
    prompt = prompts(1, seed=3)[0]
    with torch.inference_mode():
        out = tiny.hf_model.generate(
            torch.tensor([prompt]),
            max_new_tokens=25,
            do_sample=False,
            repetition_penalty=1.3,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            pad_token_id=0,
        )
    expected = out[0, len(prompt) :].tolist()
    dec = decoder(tiny, "hybrid")
    (got,), _ = decode_all(
        dec, [SequenceRequest(prompt, 25, SamplingConfig(repetition_penalty=1.3))]
    )
    assert got == expected
    assert got != hf_greedy(tiny, prompt, 25)
    assert dec.stats.step_tokens == dec.stats.decode_steps  # penalised rows never speculate


def test_logprobs_match_a_full_forward(tiny: TinyModel) -> None:
    prompt = prompts(1, seed=3)[0]
    dec = decoder(tiny, "hybrid")
    ids = dec.submit(SequenceRequest(prompt, 20, logprobs=3))
    tokens, lps = [], []
    while dec.has_work:
        for u in dec.step():
            assert u.seq_id == ids
            tokens += u.tokens
            lps += u.logprobs or []
    assert [lp.token for lp in lps] == tokens
    with torch.inference_mode():
        logits = tiny.hf_model(torch.tensor([prompt + tokens])).logits[0]
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    # llama.cpp keeps keys and values in float16: its logits differ from torch's a little.
    tolerance = 1e-4 if tiny.gguf is None else 2e-2
    for k, lp in enumerate(lps):
        assert lp.logprob == pytest.approx(float(logp[k, tokens[k]]), abs=tolerance)
        assert lp.top[0][0] == tokens[k]  # greedy picks the most likely token
        assert len(lp.top) == 3


@pytest.mark.parametrize("mode", ["plain", "hybrid", "cerberus"])
def test_a_full_cache_is_compacted_and_changes_nothing(tiny_varied: TinyModel, mode: str) -> None:
    """llama.cpp's cache has a fixed size and parks what it cannot free while rows live;
    when it is full, the rows are prefilled again into a fresh cache. The torch cache
    grows instead: the same requests run through both paths unchanged."""
    ps = prompts(5, length=20, seed=13)
    reqs = [greedy(p, 40) for p in ps]
    alone = [decode_all(decoder(tiny_varied, mode), [r])[0][0] for r in reqs]
    dec = decoder(tiny_varied, mode)
    if tiny_varied.gguf is not None:
        dec.runtime = tiny_varied.runtime(context=160)  # about two rows' worth
    got, finish = decode_all(dec, reqs, arrivals=[0, 0, 1, 5, 9])
    assert got == alone
    assert finish == ["length"] * 5
    if tiny_varied.gguf is not None:
        assert dec.stats.compactions > 0 and dec.stats.preempted > 0
