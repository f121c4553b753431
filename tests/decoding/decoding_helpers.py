"""Shared helpers for the decoding tests (a unique module name: tests have no packages)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sotflow.decoding.batched import BatchDecoder, SequenceRequest, SpeculationConfig
from sotflow.decoding.costs import BlockCosts
from sotflow.decoding.head_training import Corpus, train_heads
from sotflow.decoding.heads import DraftHeads
from sotflow.decoding.runtime import Runtime
from sotflow.runtimes.torch.forward import DecoderModel
from sotflow.runtimes.torch.runtime import TorchRuntime


@dataclass
class TinyModel:
    """One tiny random Llama on one runtime: torch, or llama.cpp on the same weights
    written as a float32 GGUF file."""

    runtime_name: str
    model: DecoderModel
    gguf: Path | None = None

    @classmethod
    def make(cls, hf_model: Any, runtime: str, path: Path) -> TinyModel:
        model = DecoderModel(hf_model)
        if runtime == "torch":
            return cls("torch", model)
        from sotflow.runtimes.llama_cpp.testing import write_gguf

        if not path.exists():
            write_gguf(hf_model, path)
        return cls("llama.cpp", model, path)

    @property
    def hf_model(self) -> Any:
        return self.model.hf_model

    @property
    def hidden_size(self) -> int:
        return self.model.hidden_size

    def runtime(self, context: int = 1024) -> Runtime:
        """A fresh runtime: an empty cache (llama.cpp: of ``context`` cells)."""
        if self.gguf is None:
            return TorchRuntime(self.model)
        from sotflow.runtimes.llama_cpp.runtime import LlamaCppRuntime

        return LlamaCppRuntime(self.gguf, threads=1, context=context)

    def __repr__(self) -> str:
        return f"TinyModel({self.runtime_name})"


def prompts(count: int, length: int = 12, seed: int = 0, vocab: int = 250) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (length + i % 3,), generator=g).tolist() for i in range(count)]


def hf_greedy(model: TinyModel, prompt: list[int], n: int, eos: int | None = None) -> list[int]:
    """The reference every mode must match: on torch, Hugging Face ``generate`` greedy;
    on llama.cpp, that runtime's own plain greedy, one token a step (its arithmetic is
    not torch's; ``test_runtimes`` checks the two agree on these models). Cut before EOS."""
    if model.gguf is not None:
        stops = frozenset() if eos is None else frozenset({eos})
        plain = BatchDecoder(model.runtime(), speculation=SpeculationConfig(mode="plain"))
        (tokens,), _ = decode_all(plain, [SequenceRequest(prompt, n, stop_tokens=stops)])
        return tokens
    return generate_greedy(model.model, prompt, n, eos)


def generate_greedy(
    model: DecoderModel, prompt: list[int], n: int, eos: int | None = None
) -> list[int]:
    """Hugging Face ``generate`` greedy, cut before EOS."""
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


def greedy_corpus(model: TinyModel, count: int = 24, n: int = 60, seed: int = 101) -> Corpus:
    """The model's own greedy continuations of random prompts, recorded as a corpus."""
    recorded: list[tuple[list[int], int]] = []
    dec = BatchDecoder(model.runtime(), speculation=SpeculationConfig(mode="plain"))
    dec.on_leave = lambda tokens, k: recorded.append((list(tokens), k))
    decode_all(dec, [SequenceRequest(p, n) for p in prompts(count, seed=seed)])
    return Corpus.of(recorded)


_HEADS: dict[tuple[int, str], DraftHeads] = {}


def trained_heads(model: TinyModel, kind: str) -> DraftHeads:
    """Heads self-distilled on the model (once per model and kind), on its own runtime's
    hidden states: right often enough that proposals are accepted, partly and wholly,
    so every acceptance path is taken."""
    key = (id(model), kind)
    if key not in _HEADS:
        heads, _ = train_heads(model.runtime(), greedy_corpus(model), kind=kind, epochs=8, lr=3e-3)  # type: ignore[arg-type]
        _HEADS[key] = heads
    return _HEADS[key]


def decoder(
    model: TinyModel, mode: str = "plain", costs: BlockCosts | None = None, **kwargs: object
) -> BatchDecoder:
    """A decoder on a fresh torch runtime. Block costs default to flat (every block as
    cheap as one token), so every proposal is evaluated and every path is exercised."""
    batch = kwargs.pop("max_batch_size", 16)
    config = SpeculationConfig(mode=mode, **kwargs)  # type: ignore[arg-type]
    return BatchDecoder(
        model.runtime(),
        max_batch_size=batch,  # type: ignore[arg-type]
        speculation=config,
        heads=trained_heads(model, mode) if config.uses_heads else None,
        costs=costs,
    )
