"""Shared helpers for the decoding tests (a unique module name: tests have no packages)."""

from __future__ import annotations

import torch

from sotflow.decoding.batched import BatchDecoder, SequenceRequest, SpeculationConfig
from sotflow.decoding.forward import DecoderModel


def prompts(count: int, length: int = 12, seed: int = 0, vocab: int = 250) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (length + i % 3,), generator=g).tolist() for i in range(count)]


def hf_greedy(model: DecoderModel, prompt: list[int], n: int, eos: int | None = None) -> list[int]:
    """Hugging Face ``generate`` greedy, cut before EOS: the reference every mode must match."""
    with torch.inference_mode():
        out = model.hf_model.generate(
            torch.tensor([prompt]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos if eos is not None else 0,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    tokens = out[0, len(prompt) :].tolist()
    if eos is not None and eos in tokens:
        tokens = tokens[: tokens.index(eos)]
    return tokens


def decode_all(
    decoder: BatchDecoder,
    requests: list[SequenceRequest],
    arrivals: list[int] | None = None,
) -> tuple[list[list[int]], list[str | None]]:
    """Run requests to the end; request ``i`` is submitted before step ``arrivals[i]``."""
    arrivals = arrivals or [0] * len(requests)
    ids: dict[int, int] = {}
    tokens: list[list[int]] = [[] for _ in requests]
    finish: list[str | None] = [None] * len(requests)
    step = 0
    while True:
        for i, at in enumerate(arrivals):
            if at == step:
                ids[decoder.submit(requests[i])] = i
        if not decoder.has_work and step >= max(arrivals):
            break
        for update in decoder.step():
            i = ids[update.seq_id]
            tokens[i] += update.tokens
            if update.finish_reason:
                finish[i] = update.finish_reason
        step += 1
    return tokens, finish


def decoder(model: DecoderModel, mode: str = "plain", **kwargs: object) -> BatchDecoder:
    batch = kwargs.pop("max_batch_size", 16)
    return BatchDecoder(
        model,
        max_batch_size=batch,  # type: ignore[arg-type]
        speculation=SpeculationConfig(mode=mode, **kwargs),  # type: ignore[arg-type]
    )
