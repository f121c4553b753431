"""Shared helpers for the decoding tests (a unique module name: tests have no packages)."""

from __future__ import annotations

import torch

from sotflow.decoding.batched import BatchDecoder, SequenceRequest, SpeculationConfig
from sotflow.decoding.forward import DecoderModel
from sotflow.decoding.head_training import Corpus, train_heads
from sotflow.decoding.heads import DraftHeads


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


def greedy_corpus(model: DecoderModel, count: int = 24, n: int = 60, seed: int = 101) -> Corpus:
    """The model's own greedy continuations of random prompts, recorded as a corpus."""
    recorded: list[tuple[list[int], int]] = []
    dec = BatchDecoder(model, speculation=SpeculationConfig(mode="plain"))
    dec.on_leave = lambda tokens, k: recorded.append((list(tokens), k))
    decode_all(dec, [SequenceRequest(p, n) for p in prompts(count, seed=seed)])
    return Corpus.of(recorded)


_HEADS: dict[tuple[int, str], DraftHeads] = {}


def trained_heads(model: DecoderModel, kind: str) -> DraftHeads:
    """Heads self-distilled on the model (once per model and kind): right often enough
    that proposals are accepted, partly and wholly, so every acceptance path is taken."""
    key = (id(model), kind)
    if key not in _HEADS:
        heads, _ = train_heads(model, greedy_corpus(model), kind=kind, epochs=8, lr=3e-3)  # type: ignore[arg-type]
        _HEADS[key] = heads
    return _HEADS[key]


def decoder(model: DecoderModel, mode: str = "plain", **kwargs: object) -> BatchDecoder:
    batch = kwargs.pop("max_batch_size", 16)
    config = SpeculationConfig(mode=mode, **kwargs)  # type: ignore[arg-type]
    return BatchDecoder(
        model,
        max_batch_size=batch,  # type: ignore[arg-type]
        speculation=config,
        heads=trained_heads(model, mode) if config.uses_heads else None,
    )
