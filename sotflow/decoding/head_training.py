"""Self-distillation of draft heads: learn to guess what the model itself will write.

The corpus is the model's own greedy output (``Corpus``: token sequences with their
prompt length; ``sotflow train-heads`` records one by answering questions directly and
with Skeleton-of-Thought). One teacher-forced evaluation per sequence, on whichever
runtime will decode with the heads, gives the final hidden state at every generated
position; head ``k`` learns, from the hidden state at position ``t`` (and the token
``t + 1`` it decided), the token at ``t + 1 + k``. The base model stays frozen
(Medusa-1), so the heads can only change speed, never text. The optimisation is torch;
the features come from the runtime (llama.cpp's hidden states differ from torch's
float32 ones a little, so heads are best trained on the runtime that uses them).

Training is deterministic for a seed: a fixed split (the last ``holdout`` share of the
sequences is held out, never trained on), fixed shuffles, AdamW, and the epoch with the
best held-out loss is kept. The report carries per-head accuracy on the held-out part.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .heads import FORMAT, DraftHeads, HeadKind, HeadsSpec, runtime_fingerprint
from .runtime import Runtime, TokenBatch

__all__ = [
    "Corpus",
    "HeadData",
    "Prepared",
    "TrainableHeads",
    "features",
    "head_vocabulary",
    "prepare",
    "save_heads",
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
    token_embed: torch.Tensor  # [N, C] that token's input embedding
    targets: torch.Tensor  # [N, K] head-vocabulary index of the token at t + 1 + k, or a sentinel
    entropy: torch.Tensor  # [N] of the model's next-token distribution at t, in nats

    def __len__(self) -> int:
        return int(self.hidden.shape[0])


def head_vocabulary(corpus: Corpus, max_size: int) -> tuple[int, ...]:
    """The ``max_size`` most frequent generated tokens, most frequent first (ties by id)."""
    counts = Counter(tok for tokens, n in corpus.sequences for tok in tokens[n:])
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(tok for tok, _ in ranked[:max_size])


def features(
    runtime: Runtime,
    corpus: Corpus,
    vocab: Sequence[int],
    num_heads: int,
    *,
    seq: int = 0,
    chunk: int = 512,
) -> HeadData:
    """Hidden states and targets at every generated position, one sequence at a time
    on ``runtime``'s sequence ``seq`` (left empty afterwards)."""
    index = np.full(runtime.info.vocab_size, OUTSIDE, dtype=np.int64)
    index[np.asarray(list(vocab), dtype=np.int64)] = np.arange(len(vocab))
    parts = []
    chunk = min(chunk, runtime.info.max_batch_tokens)
    for seq_tokens, n in corpus.sequences:
        first, last = n - 1, len(seq_tokens) - 1  # hidden at t predicts t + 1
        hidden_rows, logit_rows = [], []
        for start in range(0, last, chunk):
            end = min(last, start + chunk)
            span = range(start, end)
            batch = TokenBatch(
                tokens=list(seq_tokens[start:end]),
                positions=list(span),
                seqs=[seq] * len(span),
                parents=[-1, *range(len(span) - 1)],
                outputs=[t >= first for t in span],
            )
            out = runtime.evaluate(batch, hidden=True)
            rows = list(range(sum(batch.outputs)))
            if rows:
                hidden_rows.append(out.hidden(rows))
                logit_rows.append(out.logits(rows))
            runtime.settle({seq: list(range(len(span)))})
        runtime.drop(seq)
        h = np.concatenate(hidden_rows)  # [L, C]
        logits = np.concatenate(logit_rows).astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        entropy = -(np.exp(logp) * logp).sum(-1)
        ids = np.asarray(seq_tokens, dtype=np.int64)
        targets = np.full((last - first, num_heads), IGNORE, dtype=np.int64)
        for k in range(1, num_heads + 1):
            ahead = ids[first + 1 + k :]
            targets[: len(ahead), k - 1] = index[ahead]
        decided = ids[first + 1 :]
        parts.append((h, decided, runtime.embedding_rows(decided.tolist()), targets, entropy))
    return HeadData(
        hidden=torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.float32)),
        tokens=torch.from_numpy(np.concatenate([p[1] for p in parts])),
        token_embed=torch.from_numpy(np.concatenate([p[2] for p in parts]).astype(np.float32)),
        targets=torch.from_numpy(np.concatenate([p[3] for p in parts])),
        entropy=torch.from_numpy(np.concatenate([p[4] for p in parts]).astype(np.float32)),
    )


class TrainableHeads(torch.nn.Module):
    """The heads of ``heads.DraftHeads`` as a torch module, for training (float32, CPU).

    The vocabulary projection (restricted to ``head_vocab``) is a frozen buffer taken
    from the runtime; the embedding of the decided token comes with the features.
    """

    def __init__(self, spec: HeadsSpec, projection: np.ndarray) -> None:
        super().__init__()
        self.spec = spec
        C = spec.hidden_size
        inputs = 2 * C if spec.sees_token else C
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(inputs, C) for _ in range(spec.num_heads))
        links = spec.num_heads - 1 if spec.kind == "cerberus" else 0
        self.links = torch.nn.ModuleList(torch.nn.Linear(C, C, bias=False) for _ in range(links))
        # Zero blocks start every head as "the next token again": a known, harmless guess
        # from which training moves away (Medusa's initialisation).
        for module in [*self.blocks, *self.links]:
            torch.nn.init.zeros_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        self.register_buffer(
            "projection", torch.from_numpy(np.asarray(projection, np.float32)), persistent=False
        )  # [V', C]

    def forward(
        self,
        hidden: torch.Tensor,  # [N, C]
        token_embed: torch.Tensor,  # [N, C]
    ) -> torch.Tensor:
        """Logits over ``head_vocab`` for every head: ``[N, K, V']``."""
        u = torch.cat([hidden, token_embed], -1) if self.spec.sees_token else hidden
        states = []
        previous: torch.Tensor | None = None
        for k, block in enumerate(self.blocks):
            z = block(u)
            if previous is not None and self.links:
                z = z + self.links[k - 1](previous)
            previous = hidden + F.silu(z)  # [N, C]
            states.append(previous)
        return torch.stack(states, 1) @ self.projection.T  # type: ignore[no-any-return]


def _loss(heads: TrainableHeads, data: HeadData, rows: torch.Tensor) -> torch.Tensor:
    logits = heads(data.hidden[rows], data.token_embed[rows])  # [n, K, V']
    targets = data.targets[rows].clamp(min=IGNORE)
    targets = targets.masked_fill(targets == OUTSIDE, IGNORE)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
    )


@torch.no_grad()
def evaluate(
    heads: TrainableHeads, data: HeadData, batch_size: int = 2048
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
        logits = heads(data.hidden[rows], data.token_embed[rows])
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
    runtime: Runtime,
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
        train=features(runtime, train_part, vocab, num_heads),
        held=features(runtime, held_part, vocab, num_heads),
        vocab=vocab,
        num_heads=num_heads,
        sequences=len(corpus.sequences),
        generated_tokens=corpus.generated_tokens,
    )


def train_heads(
    runtime: Runtime,
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
        data = prepare(runtime, corpus, num_heads=num_heads, max_vocab=max_vocab, holdout=holdout)
    else:
        data = corpus
    train, held, vocab, num_heads = data.train, data.held, data.vocab, data.num_heads
    say(
        f"features: {len(train)} training and {len(held)} held-out positions, "
        f"head vocabulary {len(vocab)} ({time.perf_counter() - began:.0f} s)"
    )
    hidden_size = runtime.info.hidden_size
    spec = HeadsSpec(kind, num_heads, hidden_size, vocab, sees_token, top_k=top_k)
    projection = runtime.output_rows(list(vocab))
    torch.manual_seed(seed)
    heads = TrainableHeads(spec, projection)
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
    spec = HeadsSpec(kind, num_heads, hidden_size, vocab, sees_token, gate, top_k)
    blocks = [
        (best_state[f"blocks.{k}.weight"].numpy(), best_state[f"blocks.{k}.bias"].numpy())
        for k in range(num_heads)
    ]
    links = [best_state[f"links.{k}.weight"].numpy() for k in range(len(heads.links))]
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
    final = DraftHeads(spec, blocks, links, projection, runtime.embedding_rows, report)
    final.fingerprint = runtime_fingerprint(runtime)
    return final, report


def save_heads(heads: DraftHeads, path: str | Path, info: Mapping[str, Any] | None = None) -> None:
    """Write the trained blocks (float16) and their record to a safetensors file."""
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for k, (w, b) in enumerate(heads.blocks):
        tensors[f"blocks.{k}.weight"] = w.T.astype(np.float16)
        tensors[f"blocks.{k}.bias"] = b.astype(np.float16)
    for k, u in enumerate(heads.links):
        tensors[f"links.{k}.weight"] = u.T.astype(np.float16)
    spec = asdict(heads.spec)
    spec["head_vocab"] = list(heads.spec.head_vocab)
    record = {"spec": spec, "fingerprint": heads.fingerprint, "info": dict(info or heads.info)}
    metadata = {"format": str(FORMAT), "record": json.dumps(record)}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(temporary), metadata)
    temporary.replace(target)  # never a half-written file under the real name
