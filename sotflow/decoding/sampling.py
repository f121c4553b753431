"""Token choice: greedy, seeded sampling with the usual processors, and log-probabilities.

The processors follow the order and semantics of ``transformers``: repetition penalty
(on every token already in the context, prompt included), then temperature, top-k,
top-p and min-p. Each row owns its generator, so a seeded row draws the same tokens
whether it is decoded alone or inside a batch. Plain numpy: every runtime hands the
decoder its logits as numpy arrays, and the llama.cpp runtime must not load torch.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_SEED",
    "SamplingConfig",
    "TokenLogprobs",
    "apply_repetition_penalty",
    "choose",
    "log_softmax",
    "make_generator",
    "process_logits",
    "token_logprobs",
]

MAX_SEED = 2**64 - 1
"""Seeds are taken modulo 2**64, so any integer a client sends is a valid seed."""


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.temperature

    @property
    def has_penalty(self) -> bool:
        return self.repetition_penalty is not None and self.repetition_penalty != 1.0

    @property
    def plain_greedy(self) -> bool:
        """Greedy on raw logits: the only case a multi-token verifier may speed up exactly."""
        return self.greedy and not self.has_penalty


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def make_generator(seed: int | None) -> np.random.Generator:
    value = secrets.randbits(64) if seed is None else int(seed) % (MAX_SEED + 1)
    return np.random.Generator(np.random.PCG64(value))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis, in float64 for the sums (float32 in, float64 out)."""
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    shifted = x - top
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # type: ignore[no-any-return]


def _softmax(x: np.ndarray) -> np.ndarray:
    finite = np.isfinite(x)
    top = x[finite].max()
    e = np.where(finite, np.exp(x - top), 0.0)
    return e / e.sum()  # type: ignore[no-any-return]


def apply_repetition_penalty(
    logits: np.ndarray,  # [V]
    context: Sequence[int],
    penalty: float,
) -> np.ndarray:
    out = logits.copy()
    ids = np.unique(np.asarray(context, dtype=np.int64))
    scores = out[ids]
    out[ids] = np.where(scores < 0, scores * penalty, scores / penalty)
    return out


def process_logits(
    logits: np.ndarray,  # [V]
    config: SamplingConfig,
    context: Sequence[int] | None = None,
) -> np.ndarray:
    """Processed float32 logits; masked-out tokens are ``-inf``."""
    out = np.asarray(logits, dtype=np.float32)
    if config.has_penalty and context is not None and len(context):
        assert config.repetition_penalty is not None
        out = apply_repetition_penalty(out, context, np.float32(config.repetition_penalty))
    if config.greedy:
        return out
    assert config.temperature is not None
    out = out / np.float32(config.temperature)
    if config.top_k is not None and 0 < config.top_k < out.shape[-1]:
        kth = np.partition(out, -config.top_k)[-config.top_k]
        out = np.where(out < kth, -np.inf, out).astype(np.float32)
    if config.top_p is not None and config.top_p < 1.0:
        order = np.argsort(out, kind="stable")  # ascending
        cumulative = np.cumsum(_softmax(out[order].astype(np.float64)))
        # Drop the low tail whose mass is at most 1 - top_p; the top token always stays.
        drop_sorted = cumulative <= (1 - config.top_p)
        drop_sorted[-1] = False
        drop = np.empty_like(drop_sorted)
        drop[order] = drop_sorted
        out = np.where(drop, -np.inf, out).astype(np.float32)
    if config.min_p is not None and config.min_p > 0:
        probs = _softmax(out.astype(np.float64))
        floor = probs.max() * config.min_p
        out = np.where(probs < floor, -np.inf, out).astype(np.float32)
    return out


def choose(
    logits: np.ndarray,  # [V]
    config: SamplingConfig,
    generator: np.random.Generator | None,
    context: Sequence[int] | None = None,
) -> int:
    """One token: the argmax when greedy, else a draw from the processed distribution."""
    processed = process_logits(logits, config, context)
    if config.greedy:
        return int(processed.argmax())
    assert generator is not None, "a sampled row needs its generator"
    probs = _softmax(processed.astype(np.float64))  # [V]
    # Inverse-CDF draw from one uniform: one generator call per token, batch-independent.
    cdf = np.cumsum(probs)
    u = generator.random() * cdf[-1]
    index = min(int(np.searchsorted(cdf, u, side="right")), len(probs) - 1)
    while probs[index] == 0 and index > 0:  # float round-off can land on a masked token
        index -= 1
    return index


def token_logprobs(
    logits: np.ndarray,  # [K, V] raw model logits that predicted each chosen token
    chosen: Sequence[int],  # [K]
    top: int = 0,
) -> list[TokenLogprobs]:
    """Log-probabilities of the model's raw distribution (before sampling processors)."""
    logp = log_softmax(np.asarray(logits))  # [K, V]
    rows = np.arange(len(chosen))
    picked = logp[rows, np.asarray(chosen, dtype=np.int64)].tolist()
    tops: list[tuple[tuple[int, float], ...]] = [() for _ in chosen]
    if top > 0:
        k = min(top, logp.shape[-1])
        ids = np.argpartition(-logp, k - 1, axis=-1)[:, :k]  # [K, k], unordered
        values = np.take_along_axis(logp, ids, -1)
        order = np.argsort(-values, axis=-1, kind="stable")
        ids = np.take_along_axis(ids, order, -1)
        values = np.take_along_axis(values, order, -1)
        tops = [
            tuple(zip(map(int, i), map(float, v), strict=True))
            for i, v in zip(ids.tolist(), values.tolist(), strict=True)
        ]
    return [
        TokenLogprobs(int(token), float(lp), t)
        for token, lp, t in zip(chosen, picked, tops, strict=True)
    ]
