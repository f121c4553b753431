"""Sampling processors against transformers' own, and seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from sotflow.decoding.sampling import (
    SamplingConfig,
    choose,
    make_generator,
    process_logits,
    token_logprobs,
)


def logits(seed: int = 0, vocab: int = 300) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_processors_match_transformers(seed: int) -> None:
    raw = logits(seed)
    context = torch.tensor([3, 5, 5, 17, int(raw.argmax())])
    cfg = SamplingConfig(temperature=0.7, top_k=40, top_p=0.8, min_p=0.05, repetition_penalty=1.2)
    ours = torch.from_numpy(process_logits(raw.numpy(), cfg, context.tolist()))
    ids = context[None]
    theirs = raw[None].clone()
    for proc in (
        RepetitionPenaltyLogitsProcessor(1.2),
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(40),
        TopPLogitsWarper(0.8),
        MinPLogitsWarper(0.05),
    ):
        theirs = proc(ids, theirs)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs[0]))
    kept = ~torch.isinf(ours)
    assert torch.allclose(ours[kept], theirs[0][kept])
    assert 1 < int(kept.sum()) < 40  # the filters really filtered


def test_greedy_ignores_filters_but_not_the_penalty() -> None:
    raw = logits(3)
    best = int(raw.argmax())
    raw = raw.numpy()
    assert choose(raw, SamplingConfig(temperature=0, top_k=5), None) == best
    penalised = choose(raw, SamplingConfig(repetition_penalty=100.0), None, [best])
    assert penalised != best


def test_seeded_draws_repeat_and_follow_the_distribution() -> None:
    raw = logits(4, vocab=5).numpy()
    cfg = SamplingConfig(temperature=1.0, seed=7)
    a = [choose(raw, cfg, g) for g in [make_generator(7)] for _ in range(50)]
    b = [choose(raw, cfg, g) for g in [make_generator(7)] for _ in range(50)]
    assert a == b
    g = make_generator(1)
    draws = np.array([choose(raw, cfg, g) for _ in range(3000)])
    freq = np.bincount(draws, minlength=5) / 3000
    expected = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
    assert np.allclose(freq, expected, atol=0.03)


def test_top_k_one_is_greedy() -> None:
    raw = logits(5).numpy()
    g = make_generator(0)
    cfg = SamplingConfig(temperature=1.5, top_k=1)
    assert {choose(raw, cfg, g) for _ in range(20)} == {int(raw.argmax())}


def test_token_logprobs() -> None:
    raw = torch.stack([logits(6), logits(7)])
    out = token_logprobs(raw.numpy(), [1, 2], top=2)
    expected = torch.log_softmax(raw, -1)
    assert out[0].logprob == pytest.approx(float(expected[0, 1]), abs=1e-6)
    assert out[1].top[0] == (
        int(raw[1].argmax()),
        pytest.approx(float(expected[1].max()), abs=1e-6),
    )
    assert token_logprobs(raw.numpy(), [1, 2])[0].top == ()


def test_any_integer_is_a_seed() -> None:
    # A client may send any JSON integer; seeds wrap at 2**64 instead of overflowing.
    huge = 1180591620717411303424
    a = make_generator(huge).random()
    assert a == make_generator(huge).random()
    assert a == make_generator(huge % 2**64).random()
    assert make_generator(-5).random() == make_generator(-5 % 2**64).random()
