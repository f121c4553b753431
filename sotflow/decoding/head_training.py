"""Self-distillation of draft heads: learn to guess what the model itself will write.

The corpus is the model's own greedy output (``Corpus``: token sequences with their
prompt length; ``sotflow train-heads`` records one by answering questions directly and
with Skeleton-of-Thought). One teacher-forced forward per batch of sequences gives the
final hidden state at every generated position; head ``k`` learns, from the hidden
state at position ``t`` (and the token ``t + 1`` it decided), the token at ``t + 1 + k``.
The base model stays frozen (Medusa-1), so the heads can only change speed, never text.

Training is deterministic for a seed: a fixed split (the last ``holdout`` share of the
sequences is held out, never trained on), fixed shuffles, AdamW, and the epoch with the
best held-out loss is kept. The report carries per-head accuracy on the held-out part.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .forward import DecoderModel, block_mask
from .heads import DraftHeads, HeadKind, HeadsSpec

__all__ = [
    "Corpus",
    "HeadData",
    "Prepared",
    "features",
    "head_vocabulary",
    "prepare",
    "train_heads",
]

IGNORE = -100
"""A target past the end of its sequence: neither trained on nor scored."""
OUTSIDE = -1
"""A target outside the head vocabulary: not trained on, scored as a miss."""


@dataclass(frozen=True, slots=True)
class Corpus:
    sequences: tuple[tuple[tuple[int, ...], int], ...]
    """``(tokens, prompt_len)``: the prompt followed by what the model generated."""

    @classmethod
    def of(cls, items: Sequence[tuple[Sequence[int], int]]) -> Corpus:
        kept = tuple((tuple(t), n) for t, n in items if len(t) - n >= 2 and n >= 1)
        return cls(kept)

    @property
    def generated_tokens(self) -> int:
        return sum(len(t) - n for t, n in self.sequences)

    def split(self, holdout: float) -> tuple[Corpus, Corpus]:
        cut = len(self.sequences) - max(1, round(len(self.sequences) * holdout))
        return Corpus(self.sequences[:cut]), Corpus(self.sequences[cut:])


@dataclass(slots=True)
class HeadData:
    hidden: torch.Tensor  # [N, C] final hidden state at a generated position t
    tokens: torch.Tensor  # [N] the token at t + 1 (what that hidden state decided)
    targets: torch.Tensor  # [N, K] head-vocabulary index of the token at t + 1 + k, or a sentinel
    entropy: torch.Tensor  # [N] of the model's next-token distribution at t, in nats

    def __len__(self) -> int:
        return int(self.hidden.shape[0])


def head_vocabulary(corpus: Corpus, max_size: int) -> tuple[int, ...]:
    """The ``max_size`` most frequent generated tokens, most frequent first (ties by id)."""
    counts = Counter(tok for tokens, n in corpus.sequences for tok in tokens[n:])
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(tok for tok, _ in ranked[:max_size])


@torch.inference_mode()
def features(
    model: DecoderModel,
    corpus: Corpus,
    vocab: Sequence[int],
    num_heads: int,
    *,
    max_batch_tokens: int = 4096,
) -> HeadData:
    """Hidden states and targets at every generated position, batched by length."""
    index = torch.full((model.vocab_size,), OUTSIDE, dtype=torch.long)
    index[torch.tensor(list(vocab), dtype=torch.long)] = torch.arange(len(vocab))
    order = sorted(range(len(corpus.sequences)), key=lambda i: len(corpus.sequences[i][0]))
    parts: dict[int, tuple[torch.Tensor, ...]] = {}
    start = 0
    while start < len(order):
        longest = len(corpus.sequences[order[start]][0])
        end = start + 1
        while end < len(order):
            longest = len(corpus.sequences[order[end]][0])
            if longest * (end - start + 1) > max_batch_tokens:
                break
            end += 1
        batch = order[start:end]
        T = max(len(corpus.sequences[i][0]) for i in batch)
        B = len(batch)
        tokens = torch.zeros((B, T), dtype=torch.long)
        for b, i in enumerate(batch):
            seq = corpus.sequences[i][0]
            tokens[b, : len(seq)] = torch.tensor(seq)
        # Right padding is harmless under a causal mask: a real position sees only
        # earlier positions, which are all real.
        cache = model.new_cache(rows=B, capacity=T)
        inner = torch.ones((T, T), dtype=torch.bool).tril().expand(B, T, T)
        hidden = model.hidden(
            tokens.to(model.device),
            torch.arange(T).expand(B, T).to(model.device),
            cache,
            row_start=0,
            write_start=[0] * B,
            mask=block_mask([0] * B, inner).to(model.device),
        )
        assert hidden is not None
        for b, i in enumerate(batch):
            seq, n = corpus.sequences[i]
            first, last = n - 1, len(seq) - 1  # hidden at t predicts t + 1
            h = hidden[b, first:last].float().cpu()  # [L, C]
            logp = model.logits(hidden[b, first:last]).float().log_softmax(-1)
            entropy = -(logp.exp() * logp).sum(-1).cpu()
            ids = torch.tensor(seq)
            targets = torch.full((last - first, num_heads), IGNORE, dtype=torch.long)
            for k in range(1, num_heads + 1):
                ahead = ids[first + 1 + k :]
                targets[: len(ahead), k - 1] = index[ahead]
            parts[i] = (h, ids[first + 1 :], targets, entropy)
        start = end
    ordered = [parts[i] for i in range(len(corpus.sequences))]
    return HeadData(
        hidden=torch.cat([p[0] for p in ordered]),
        tokens=torch.cat([p[1] for p in ordered]),
        targets=torch.cat([p[2] for p in ordered]),
        entropy=torch.cat([p[3] for p in ordered]),
    )


def _loss(heads: DraftHeads, data: HeadData, rows: torch.Tensor) -> torch.Tensor:
    logits = heads(data.hidden[rows], data.tokens[rows])  # [n, K, V']
    targets = data.targets[rows].clamp(min=IGNORE)
    targets = targets.masked_fill(targets == OUTSIDE, IGNORE)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
    )


@torch.no_grad()
def evaluate(
    heads: DraftHeads, data: HeadData, batch_size: int = 2048
) -> tuple[dict[str, Any], torch.Tensor]:
    """Held-out loss and each head's top-1 / top-k accuracy (over all positions: a
    target outside the head vocabulary counts as a miss), and where head 1's top-1
    guess was right (``[N]`` bool, for the entropy gate)."""
    K = heads.spec.num_heads
    k = heads.spec.top_k
    hits1, hitsk, counts = torch.zeros(K), torch.zeros(K), torch.zeros(K)
    loss_sum, loss_n = 0.0, 0
    first_hit = torch.zeros(len(data), dtype=torch.bool)
    for start in range(0, len(data), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(data)))
        logits = heads(data.hidden[rows], data.tokens[rows])
        targets = data.targets[rows]
        valid = targets >= 0
        scored = targets != IGNORE
        top = logits.topk(k, -1).indices  # [n, K, k]
        hit1 = (top[..., 0] == targets) & valid
        hitk = (top == targets[..., None]).any(-1) & valid
        hits1 += hit1.sum(0).float()
        hitsk += hitk.sum(0).float()
        counts += scored.sum(0).float()
        first_hit[rows] = hit1[:, 0]
        if valid.any():
            flat = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.masked_fill(~valid, IGNORE).reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            loss_sum += float(flat)
            loss_n += int(valid.sum())
    scores = {
        "loss": round(loss_sum / max(1, loss_n), 4),
        "top1": [round(float(h / max(c, 1)), 4) for h, c in zip(hits1, counts, strict=True)],
        f"top{k}": [round(float(h / max(c, 1)), 4) for h, c in zip(hitsk, counts, strict=True)],
    }
    return scores, first_hit


def choose_gate(data: HeadData, first_hit: torch.Tensor, min_yield: float = 0.1) -> float | None:
    """The Cerberus entropy gate: the entropy above which head 1's top-1 guess is right
    less often than ``min_yield`` (measured in tenths of the held-out positions, from the
    most uncertain down). None when even the most uncertain tenth is worth a guess."""
    if len(data) < 50:
        return None
    order = torch.argsort(data.entropy, descending=True)
    tenth = max(1, len(order) // 10)
    gate: float | None = None
    for start in range(0, len(order) - tenth + 1, tenth):
        part = order[start : start + tenth]
        if float(first_hit[part].float().mean()) >= min_yield:
            break
        gate = float(data.entropy[part].min())
    return None if gate is None else round(gate, 3)


@dataclass(slots=True)
class Prepared:
    """A corpus turned into training material: the split, the head vocabulary, features."""

    train: HeadData
    held: HeadData
    vocab: tuple[int, ...]
    num_heads: int
    sequences: int
    generated_tokens: int


def prepare(
    model: DecoderModel,
    corpus: Corpus,
    *,
    num_heads: int = 3,
    max_vocab: int = 8192,
    holdout: float = 0.1,
) -> Prepared:
    """Split ``corpus`` (the last ``holdout`` share held out), choose the head vocabulary
    from the training part, and compute the features of both parts."""
    if len(corpus.sequences) < 2:
        raise ValueError("the corpus needs at least two sequences (one is held out)")
    train_part, held_part = corpus.split(holdout)
    vocab = head_vocabulary(train_part, max_vocab)
    return Prepared(
        train=features(model, train_part, vocab, num_heads),
        held=features(model, held_part, vocab, num_heads),
        vocab=vocab,
        num_heads=num_heads,
        sequences=len(corpus.sequences),
        generated_tokens=corpus.generated_tokens,
    )


def train_heads(
    model: DecoderModel,
    corpus: Corpus | Prepared,
    *,
    kind: HeadKind = "medusa",
    num_heads: int = 3,
    sees_token: bool = True,
    max_vocab: int = 8192,
    top_k: int = 4,
    epochs: int = 6,
    lr: float = 1e-3,
    batch_size: int = 512,
    holdout: float = 0.1,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[DraftHeads, dict[str, Any]]:
    """Train heads on ``corpus`` (or on features already ``prepare``d from one, whose
    head count and vocabulary then win); returns them and a report (settings, data,
    held-out accuracy)."""
    say = log or (lambda _: None)
    began = time.perf_counter()
    if isinstance(corpus, Corpus):
        data = prepare(model, corpus, num_heads=num_heads, max_vocab=max_vocab, holdout=holdout)
    else:
        data = corpus
    train, held, vocab, num_heads = data.train, data.held, data.vocab, data.num_heads
    say(
        f"features: {len(train)} training and {len(held)} held-out positions, "
        f"head vocabulary {len(vocab)} ({time.perf_counter() - began:.0f} s)"
    )
    spec = HeadsSpec(kind, num_heads, model.hidden_size, vocab, sees_token, top_k=top_k)
    torch.manual_seed(seed)
    heads = DraftHeads(spec, model).float()
    trainable = [p for p in heads.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(1, steps), pct_start=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    best: tuple[dict[str, torch.Tensor], dict[str, Any], torch.Tensor] | None = None
    history = []
    for epoch in range(epochs):
        heads.train()
        permutation = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), batch_size):
            rows = permutation[start : start + batch_size]
            loss = _loss(heads, train, rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        heads.eval()
        scores, first_hit = evaluate(heads, held)
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(train), 4), **scores})
        say(
            f"epoch {epoch + 1}/{epochs}: train loss {total / len(train):.3f}, held-out "
            f"loss {scores['loss']:.3f}, top-1 {scores['top1']} "
            f"({time.perf_counter() - began:.0f} s)"
        )
        if best is None or scores["loss"] < best[1]["loss"]:
            state = {k: v.detach().clone() for k, v in heads.state_dict().items()}
            best = (state, scores, first_hit)
    assert best is not None
    best_state, best_scores, best_hits = best
    gate = choose_gate(held, best_hits) if kind == "cerberus" else None
    # The spec is frozen and the gate is known only now: the kept epoch goes into new heads.
    final = DraftHeads(
        HeadsSpec(kind, num_heads, model.hidden_size, vocab, sees_token, gate, top_k), model
    )
    final.load_state_dict({k: v.to(model.dtype) for k, v in best_state.items()})
    final.eval()
    final.requires_grad_(False)
    report = {
        "kind": kind,
        "num_heads": num_heads,
        "sees_token": sees_token,
        "head_vocab": len(vocab),
        "top_k": top_k,
        "entropy_gate": gate,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "sequences": data.sequences,
        "generated_tokens": data.generated_tokens,
        "train_positions": len(train),
        "held_out_positions": len(held),
        "held_out": best_scores,
        "history": history,
        "seconds": round(time.perf_counter() - began, 1),
    }
    final.info = report
    return final, report
