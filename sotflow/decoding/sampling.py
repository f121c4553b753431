"""Token choice: greedy, seeded sampling with the usual processors, and log-probabilities.

The processors follow the order and semantics of ``transformers``: repetition penalty
(on every token already in the context, prompt included), then temperature, top-k,
top-p and min-p. Each row owns its ``torch.Generator``, so a seeded row draws the same
tokens whether it is decoded alone or inside a batch.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "SamplingConfig",
    "TokenLogprobs",
    "apply_repetition_penalty",
    "choose",
    "make_generator",
    "process_logits",
    "token_logprobs",
]


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


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator


def apply_repetition_penalty(
    logits: torch.Tensor,  # [V]
    context: torch.Tensor,  # [L] token ids
    penalty: float,
) -> torch.Tensor:
    scores = logits.gather(0, context)  # [L]
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(0, context, scores)


def process_logits(
    logits: torch.Tensor,  # [V]
    config: SamplingConfig,
    context: torch.Tensor | None = None,  # [L]
) -> torch.Tensor:
    """Processed float32 logits; masked-out tokens are ``-inf``."""
    out = logits.float()
    if config.has_penalty and context is not None and context.numel():
        assert config.repetition_penalty is not None
        out = apply_repetition_penalty(out, context, config.repetition_penalty)
    if config.greedy:
        return out
    assert config.temperature is not None
    out = out / config.temperature
    if config.top_k is not None and 0 < config.top_k < out.shape[-1]:
        kth = torch.topk(out, config.top_k).values[-1]
        out = out.masked_fill(out < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=False)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop the low tail whose mass is at most 1 - top_p; the top token always stays.
        drop_sorted = cumulative <= (1 - config.top_p)
        drop_sorted[-1] = False
        drop = drop_sorted.scatter(0, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    if config.min_p is not None and config.min_p > 0:
        probs = out.softmax(-1)
        floor = probs.max() * config.min_p
        out = out.masked_fill(probs < floor, float("-inf"))
    return out


def choose(
    logits: torch.Tensor,  # [V]
    config: SamplingConfig,
    generator: torch.Generator | None,
    context: torch.Tensor | None = None,  # [L]
) -> int:
    """One token: the argmax when greedy, else a draw from the processed distribution."""
    processed = process_logits(logits, config, context)
    if config.greedy:
        return int(processed.argmax())
    probs = processed.softmax(-1)  # [V]
    # Inverse-CDF draw from one uniform: one generator call per token, batch-independent.
    u = torch.rand((), generator=generator, device=probs.device, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    index = int(torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=probs.shape[-1] - 1))
    while probs[index] == 0 and index > 0:  # float round-off can land on a masked token
        index -= 1
    return index


def token_logprobs(
    logits: torch.Tensor,  # [K, V] raw model logits that predicted each chosen token
    chosen: Sequence[int],  # [K]
    top: int = 0,
) -> list[TokenLogprobs]:
    """Log-probabilities of the model's raw distribution (before sampling processors)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [K, V]
    idx = torch.tensor(list(chosen), device=logits.device)
    picked = logp.gather(1, idx[:, None])[:, 0].tolist()  # [K]
    tops: list[tuple[tuple[int, float], ...]] = [() for _ in chosen]
    if top > 0:
        values, ids = logp.topk(min(top, logp.shape[-1]), dim=-1)  # [K, top]
        tops = [
            tuple(zip(row_ids, row_vals, strict=True))
            for row_ids, row_vals in zip(ids.tolist(), values.tolist(), strict=True)
        ]
    return [TokenLogprobs(token, lp, t) for token, lp, t in zip(chosen, picked, tops, strict=True)]
