"""Trained draft heads (Medusa, Cerberus) at decode time: guesses of the tokens after
the next one, from the model's final hidden state.

A head reads the final hidden state ``h_p`` of the last accepted position and guesses
the token ``k + 1`` places further on (head 1: the token after the one ``h_p`` itself
predicts). Each head is a residual block ``s_k = h + SiLU(W_k u)`` followed by the
model's own vocabulary projection, restricted to the ``head_vocab`` tokens the heads may
propose (the most frequent ones of the training corpus: a tenth of the projection's
cost, and nothing is lost that a tiny head could guess anyway).

- ``medusa`` (Cai et al., 2024): the heads are independent; ``u = h``.
- ``cerberus`` (Liu et al., 2024): head ``k`` also receives head ``k-1``'s state,
  ``s_k = h + SiLU(W_k u + U_k s_{k-1})``, so later heads know what earlier ones
  guessed; and an entropy gate: a row whose next-token distribution is too uncertain
  proposes nothing and takes a plain step.

``sees_token`` (on by default, for both kinds) is this project's addition: ``u`` is
``h`` joined with the embedding of the token that ``h`` decided, which is known when the
heads run. On SmolLM2 it lifted head 1's held-out top-1 accuracy from 0.25 to 0.32
(``benchmarks/heads_ablation.py``).

Proposals are a token tree: nodes are taken best first by the product of the heads'
probabilities along their path, so the tree holds the likeliest continuations under a
node budget. The decoder verifies them with the model (``verify.accept``), so what the
heads guess changes the speed, never the output.

This module is numpy only, so heads run on any runtime (llama.cpp loads no torch); the
projection and embedding rows come from the runtime. Training is torch
(``head_training``). Files are safetensors: the trained blocks in float16 and a JSON
record (``spec``, the model they belong to, how they were trained).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .runtime import Runtime

__all__ = [
    "FORMAT",
    "HEAD_KINDS",
    "DraftHeads",
    "HeadKind",
    "HeadsSpec",
    "best_paths",
    "bundled_heads",
    "fingerprint",
    "load_heads",
    "read_heads_file",
    "runtime_fingerprint",
]

HeadKind = Literal["medusa", "cerberus"]
HEAD_KINDS: tuple[HeadKind, ...] = ("medusa", "cerberus")
FORMAT = 1


@dataclass(frozen=True, slots=True)
class HeadsSpec:
    kind: HeadKind
    num_heads: int
    hidden_size: int
    head_vocab: tuple[int, ...]
    """Token ids the heads can propose, most frequent first."""
    sees_token: bool = True
    entropy_gate: float | None = None
    """Cerberus: no proposals after a next-token distribution with more entropy (nats)."""
    top_k: int = 4
    """Children a tree node may get: each head's best ``top_k`` tokens."""

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; use one of {HEAD_KINDS}")
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {self.num_heads}")
        if not self.head_vocab:
            raise ValueError("head_vocab must name at least one token")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")


BUNDLED = Path(__file__).parent / "weights"
"""Heads that ship with sotflow, named ``<model alias>-<kind>.safetensors``."""


def bundled_heads(model_name: str, kind: str) -> Path | None:
    """The bundled heads file for a model alias and kind, if sotflow ships one."""
    path = BUNDLED / f"{model_name}-{kind}.safetensors"
    return path if path.is_file() else None


def fingerprint(
    probe_rows: np.ndarray, *, hidden_size: int, vocab_size: int, layers: int
) -> dict[str, Any]:
    """What heads must match: the shapes, and the first weights of three projection rows
    (``0``, ``V // 2``, ``V - 1``; they tell two fine-tunes of one architecture apart)."""
    probe = np.asarray(probe_rows, dtype=np.float32)[:, :8].flatten().tolist()
    return {
        "hidden_size": int(hidden_size),
        "vocab_size": int(vocab_size),
        "layers": int(layers),
        "probe": [round(v, 5) for v in probe],
    }


def probe_ids(vocab_size: int) -> list[int]:
    return [0, vocab_size // 2, vocab_size - 1]


def runtime_fingerprint(runtime: Runtime) -> dict[str, Any]:
    info = runtime.info
    return fingerprint(
        runtime.output_rows(probe_ids(info.vocab_size)),
        hidden_size=info.hidden_size,
        vocab_size=info.vocab_size,
        layers=info.layers,
    )


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))  # type: ignore[no-any-return]


class DraftHeads:
    """``num_heads`` draft heads over a runtime's hidden states, in numpy float32."""

    def __init__(
        self,
        spec: HeadsSpec,
        blocks: Sequence[tuple[np.ndarray, np.ndarray]],
        links: Sequence[np.ndarray],
        projection: np.ndarray,
        embed: Any,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        # Stored as [in, out] so a row-major ``x @ W`` needs no transpose per call.
        self.blocks = [(np.ascontiguousarray(w.T), b) for w, b in blocks]
        self.links = [np.ascontiguousarray(u.T) for u in links]
        self.projection_t = np.ascontiguousarray(projection.T)  # [C, V']
        self.vocab = np.asarray(spec.head_vocab, dtype=np.int64)
        self.embed = embed
        """``ids -> [N, C]``: the runtime's embedding rows."""
        self.info: dict[str, Any] = dict(info or {})
        """The training record a loaded file carried."""
        self.fingerprint: dict[str, Any] = {}
        """The model the heads were trained for (``fingerprint``)."""

    @property
    def kind(self) -> HeadKind:
        return self.spec.kind

    def scores(self, hidden: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
        """Logits over ``head_vocab`` for every head: ``[N, K, V']``."""
        h = np.asarray(hidden, dtype=np.float32)  # [N, C]
        u = np.concatenate([h, self.embed(list(tokens))], -1) if self.spec.sees_token else h
        states = []
        previous: np.ndarray | None = None
        for k, (w, b) in enumerate(self.blocks):
            z = u @ w + b
            if previous is not None and self.links:
                z = z + previous @ self.links[k - 1]
            previous = h + _silu(z)  # [N, C]
            states.append(previous)
        return np.stack(states, 1) @ self.projection_t  # type: ignore[no-any-return]

    def propose(
        self, hidden: np.ndarray, tokens: Sequence[int], max_nodes: int
    ) -> list[tuple[list[list[int]], list[float]]]:
        """For each row, continuations after its token (the paths of a tree of at most
        ``max_nodes`` nodes, likeliest first) and each path's probability."""
        if max_nodes < 1 or not len(tokens):
            return [([], []) for _ in tokens]
        logits = self.scores(hidden, tokens)  # [N, K, V']
        logits = logits - logits.max(-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(-1, keepdims=True)
        k = min(self.spec.top_k, probs.shape[-1])
        top_i = np.argpartition(-probs, k - 1, axis=-1)[..., :k]  # [N, K, k]
        top_p = np.take_along_axis(probs, top_i, -1)
        order = np.argsort(-top_p, axis=-1, kind="stable")
        top_i = np.take_along_axis(top_i, order, -1)
        top_p = np.take_along_axis(top_p, order, -1)
        words = self.vocab[top_i].tolist()
        return [best_paths(p, w, max_nodes) for p, w in zip(top_p.tolist(), words, strict=True)]

    def entropy_gated(self, logits: np.ndarray) -> list[bool]:  # logits [N, V]
        """Which rows the Cerberus gate stops from proposing (all False without a gate)."""
        gate = self.spec.entropy_gate
        if gate is None:
            return [False] * logits.shape[0]
        x = np.asarray(logits, dtype=np.float64)
        x = x - x.max(-1, keepdims=True)
        logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
        entropy = -(np.exp(logp) * logp).sum(-1)
        return [bool(e > gate) for e in entropy]


def best_paths(
    probs: Sequence[Sequence[float]],  # [K][k] each head's best probabilities
    words: Sequence[Sequence[int]],  # [K][k] and their tokens
    max_nodes: int,
) -> tuple[list[list[int]], list[float]]:
    """The tree of the ``max_nodes`` likeliest paths (score: product of probabilities),
    returned as its leaves' paths in the order they were chosen, with their scores.

    A child never scores above its parent, so taking nodes best first always takes a
    parent before its children: the result is a valid tree.
    """
    heap: list[tuple[float, int, tuple[int, ...]]] = []
    order = 0
    for r, p in enumerate(probs[0]):
        heap.append((-p, order, (r,)))
        order += 1
    heapq.heapify(heap)
    chosen: list[tuple[tuple[int, ...], float]] = []
    inner: set[tuple[int, ...]] = set()
    while heap and len(chosen) < max_nodes:
        negative, _, ranks = heapq.heappop(heap)
        chosen.append((ranks, -negative))
        inner.add(ranks[:-1])
        depth = len(ranks)
        if depth < len(probs):
            for r, p in enumerate(probs[depth]):
                heapq.heappush(heap, (negative * p, order, (*ranks, r)))
                order += 1
    leaves = [(ranks, score) for ranks, score in chosen if ranks not in inner]
    paths = [[words[d][r] for d, r in enumerate(ranks)] for ranks, _ in leaves]
    return paths, [score for _, score in leaves]


def _differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    out = []
    for key, want in expected.items():
        got = actual.get(key)
        if key == "probe" and isinstance(got, list) and len(got) == len(want):
            # Weights move a little with the dtype and the runtime's quantisation.
            if any(abs(a - b) > 0.01 + 0.02 * abs(b) for a, b in zip(got, want, strict=True)):
                out.append(key)
        elif got != want:
            out.append(key)
    return sorted(out)


@dataclass(frozen=True, slots=True)
class HeadsFile:
    spec: HeadsSpec
    tensors: dict[str, np.ndarray]
    fingerprint: dict[str, Any]
    info: dict[str, Any]


def read_heads_file(
    path: str | Path, *, entropy_gate: float | Literal["saved"] | None = "saved"
) -> HeadsFile:
    """The spec, float32 weights and record of a heads file, checked for its format."""
    from safetensors import safe_open

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(
            f"no draft heads at {source}; train them with `sotflow train-heads`"
        )
    with safe_open(str(source), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != str(FORMAT) or "record" not in metadata:
            raise ValueError(f"{source} is not a sotflow draft-heads file (format {FORMAT})")
        record = json.loads(metadata["record"])
        tensors = {
            name: handle.get_tensor(name).astype(np.float32)
            for name in handle.keys()  # noqa: SIM118
        }
    spec_fields = dict(record["spec"])
    spec_fields["head_vocab"] = tuple(spec_fields["head_vocab"])
    if entropy_gate != "saved":
        spec_fields["entropy_gate"] = entropy_gate
    return HeadsFile(
        HeadsSpec(**spec_fields), tensors, record["fingerprint"], dict(record.get("info", {}))
    )


def load_heads(
    path: str | Path, runtime: Runtime, *, entropy_gate: float | Literal["saved"] | None = "saved"
) -> DraftHeads:
    """Load heads for the model a runtime holds, checking that they belong to it."""
    file = read_heads_file(path, entropy_gate=entropy_gate)
    differ = _differences(file.fingerprint, runtime_fingerprint(runtime))
    if differ:
        raise ValueError(
            f"the draft heads in {path} were trained for another model ({', '.join(differ)} "
            "differ); train heads for this one with `sotflow train-heads`"
        )
    spec = file.spec
    if spec.hidden_size != runtime.info.hidden_size:
        raise ValueError(
            f"heads for hidden size {spec.hidden_size} cannot run on a model with "
            f"hidden size {runtime.info.hidden_size}"
        )
    if max(spec.head_vocab) >= runtime.info.vocab_size or min(spec.head_vocab) < 0:
        raise ValueError("head_vocab names tokens outside the model's vocabulary")
    t = file.tensors
    blocks = [(t[f"blocks.{k}.weight"], t[f"blocks.{k}.bias"]) for k in range(spec.num_heads)]
    links = [t[f"links.{k}.weight"] for k in range(spec.num_heads - 1) if f"links.{k}.weight" in t]
    projection = runtime.output_rows(list(spec.head_vocab))
    heads = DraftHeads(spec, blocks, links, projection, runtime.embedding_rows, file.info)
    heads.fingerprint = file.fingerprint
    return heads
