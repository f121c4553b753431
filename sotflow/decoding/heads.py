"""Trained draft heads (Medusa, Cerberus): guesses of the tokens after the next one.

A head reads the final hidden state ``h_p`` of the last accepted position and guesses
the token ``k + 1`` places further on (head 1: the token after the one ``h_p`` itself
predicts). Each head is a residual block ``s_k = h + SiLU(W_k u)`` followed by the
model's own vocabulary projection, kept frozen and restricted to the ``head_vocab``
tokens the heads may propose (the most frequent ones of the training corpus: a tenth of
the projection's cost, and nothing is lost that a tiny head could guess anyway).

- ``medusa`` (Cai et al., 2024): the heads are independent; ``u = h``.
- ``cerberus`` (Liu et al., 2024): head ``k`` also receives head ``k-1``'s state,
  ``s_k = h + SiLU(W_k u + U_k s_{k-1})``, so later heads know what earlier ones
  guessed; and an entropy gate: a row whose next-token distribution is too uncertain
  proposes nothing and takes a plain step.

``sees_token`` (on by default, for both kinds) is this project's addition: ``u`` is
``h`` joined with the embedding of the token that ``h`` decided, which is known when the
heads run. On SmolLM2 it lifted head 1's held-out top-1 accuracy from 0.25 to 0.32, and
head 2's from 0.12 to 0.15, with the same data and features
(``benchmarks/heads_ablation.py``, ``benchmarks/results/heads_ablation.json``).

Proposals are a token tree: nodes are taken best first by the product of the heads'
probabilities along their path, so the tree holds the likeliest continuations under a
node budget. The decoder verifies them with the model (``verify.accept``), so what the
heads guess changes the speed, never the output.

Weights are saved as safetensors: the trained blocks in float16 and a JSON record
(``spec``, the model they belong to, how they were trained). The projection is not
stored; it is taken from the model when the heads are loaded.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = [
    "HEAD_KINDS",
    "DraftHeads",
    "HeadKind",
    "HeadsSpec",
    "bundled_heads",
    "load_heads",
    "model_fingerprint",
    "save_heads",
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


def model_fingerprint(model: Any) -> dict[str, Any]:
    """What heads must match: the shapes, and a few projection weights (they tell two
    fine-tunes of one architecture apart)."""
    weight = model.lm_head.weight
    rows = [0, weight.shape[0] // 2, weight.shape[0] - 1]
    probe = weight[rows, :8].float().flatten().tolist()
    return {
        "hidden_size": int(model.hidden_size),
        "vocab_size": int(model.vocab_size),
        "layers": int(model.n_layers),
        "probe": [round(v, 5) for v in probe],
    }


class DraftHeads(torch.nn.Module):
    """``num_heads`` draft heads over a ``DecoderModel``'s hidden states."""

    def __init__(self, spec: HeadsSpec, model: Any) -> None:
        super().__init__()
        if spec.hidden_size != model.hidden_size:
            raise ValueError(
                f"heads for hidden size {spec.hidden_size} cannot run on a model with "
                f"hidden size {model.hidden_size}"
            )
        if max(spec.head_vocab) >= model.vocab_size or min(spec.head_vocab) < 0:
            raise ValueError("head_vocab names tokens outside the model's vocabulary")
        self.spec = spec
        self.fingerprint = model_fingerprint(model)
        C = spec.hidden_size
        inputs = 2 * C if spec.sees_token else C
        dtype, device = model.dtype, model.device
        self.blocks = torch.nn.ModuleList(
            torch.nn.Linear(inputs, C, dtype=dtype, device=device) for _ in range(spec.num_heads)
        )
        links = spec.num_heads - 1 if spec.kind == "cerberus" else 0
        self.links = torch.nn.ModuleList(
            torch.nn.Linear(C, C, bias=False, dtype=dtype, device=device) for _ in range(links)
        )
        # Zero blocks start every head as "the next token again": a known, harmless guess
        # from which training moves away (Medusa's initialisation).
        for module in [*self.blocks, *self.links]:
            torch.nn.init.zeros_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        vocab = torch.tensor(spec.head_vocab, dtype=torch.long, device=device)
        self.register_buffer("vocab", vocab, persistent=False)
        self.register_buffer(
            "projection", model.lm_head.weight.detach()[vocab].clone(), persistent=False
        )  # [V', C]
        self.register_buffer("embed", model.embed.detach(), persistent=False)  # [V, C]
        self.info: dict[str, Any] = {}
        """The training record a loaded file carried."""

    @property
    def kind(self) -> HeadKind:
        return self.spec.kind

    def forward(
        self,
        hidden: torch.Tensor,  # [N, C] final hidden states
        tokens: torch.Tensor,  # [N] the token each hidden state decided
    ) -> torch.Tensor:
        """Logits over ``head_vocab`` for every head: ``[N, K, V']``."""
        u = torch.cat([hidden, self.embed[tokens]], -1) if self.spec.sees_token else hidden
        states = []
        previous: torch.Tensor | None = None
        for k, block in enumerate(self.blocks):
            z = block(u)
            if previous is not None and self.links:
                z = z + self.links[k - 1](previous)
            previous = hidden + F.silu(z)  # [N, C]
            states.append(previous)
        return torch.stack(states, 1) @ self.projection.T  # [N, K, V']

    @torch.inference_mode()
    def propose(
        self,
        hidden: torch.Tensor,  # [N, C]
        tokens: Sequence[int],  # [N]
        max_nodes: int,
    ) -> list[list[list[int]]]:
        """For each row, continuations after its token: the paths of a tree of at most
        ``max_nodes`` nodes, likeliest first."""
        if max_nodes < 1 or not len(tokens):
            return [[] for _ in tokens]
        ids = torch.tensor(list(tokens), dtype=torch.long, device=hidden.device)
        probs = self.forward(hidden, ids).float().softmax(-1)  # [N, K, V']
        top_p, top_i = probs.topk(min(self.spec.top_k, probs.shape[-1]), -1)  # [N, K, k]
        words = self.vocab[top_i].tolist()
        return [best_paths(p, w, max_nodes) for p, w in zip(top_p.tolist(), words, strict=True)]

    def entropy_gated(self, logits: torch.Tensor) -> list[bool]:  # logits [N, V]
        """Which rows the Cerberus gate stops from proposing (all False without a gate)."""
        gate = self.spec.entropy_gate
        if gate is None:
            return [False] * logits.shape[0]
        logp = logits.float().log_softmax(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return (entropy > gate).tolist()  # type: ignore[no-any-return]


def best_paths(
    probs: Sequence[Sequence[float]],  # [K][k] each head's best probabilities
    words: Sequence[Sequence[int]],  # [K][k] and their tokens
    max_nodes: int,
) -> list[list[int]]:
    """The tree of the ``max_nodes`` likeliest paths (score: product of probabilities),
    returned as its leaves' paths in the order they were chosen.

    A child never scores above its parent, so taking nodes best first always takes a
    parent before its children: the result is a valid tree.
    """
    heap: list[tuple[float, int, tuple[int, ...]]] = []
    order = 0
    for r, p in enumerate(probs[0]):
        heap.append((-p, order, (r,)))
        order += 1
    heapq.heapify(heap)
    chosen: list[tuple[int, ...]] = []
    inner: set[tuple[int, ...]] = set()
    while heap and len(chosen) < max_nodes:
        negative, _, ranks = heapq.heappop(heap)
        chosen.append(ranks)
        inner.add(ranks[:-1])
        depth = len(ranks)
        if depth < len(probs):
            for r, p in enumerate(probs[depth]):
                heapq.heappush(heap, (negative * p, order, (*ranks, r)))
                order += 1
    leaves = [ranks for ranks in chosen if ranks not in inner]
    return [[words[d][r] for d, r in enumerate(ranks)] for ranks in leaves]


def _differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    out = []
    for key, want in expected.items():
        got = actual.get(key)
        if key == "probe" and isinstance(got, list) and len(got) == len(want):
            # Weights move a little with the dtype (bfloat16 on a GPU vs float32 training).
            if any(abs(a - b) > 0.01 + 0.02 * abs(b) for a, b in zip(got, want, strict=True)):
                out.append(key)
        elif got != want:
            out.append(key)
    return sorted(out)


@dataclass(slots=True)
class _Record:
    spec: dict[str, Any]
    fingerprint: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def save_heads(heads: DraftHeads, path: str | Path, info: Mapping[str, Any] | None = None) -> None:
    """Write the trained blocks (float16) and their record to a safetensors file."""
    from safetensors.torch import save_file

    tensors = {
        name: tensor.detach().to("cpu", torch.float16).contiguous()
        for name, tensor in heads.state_dict().items()
    }
    spec = asdict(heads.spec)
    spec["head_vocab"] = list(heads.spec.head_vocab)
    record = _Record(spec, heads.fingerprint, dict(info or heads.info))
    metadata = {"format": str(FORMAT), "record": json.dumps(asdict(record))}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    temporary.replace(target)  # never a half-written file under the real name


def load_heads(
    path: str | Path, model: Any, *, entropy_gate: float | Literal["saved"] | None = "saved"
) -> DraftHeads:
    """Load heads for ``model`` (a ``DecoderModel``), checking that they belong to it."""
    from safetensors import safe_open

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(
            f"no draft heads at {source}; train them with `sotflow train-heads`"
        )
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != str(FORMAT) or "record" not in metadata:
            raise ValueError(f"{source} is not a sotflow draft-heads file (format {FORMAT})")
        record = json.loads(metadata["record"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    spec_fields = dict(record["spec"])
    spec_fields["head_vocab"] = tuple(spec_fields["head_vocab"])
    if entropy_gate != "saved":
        spec_fields["entropy_gate"] = entropy_gate
    spec = HeadsSpec(**spec_fields)
    expected = record["fingerprint"]
    actual = model_fingerprint(model)
    differ = _differences(expected, actual)
    if differ:
        raise ValueError(
            f"the draft heads in {source} were trained for another model ({', '.join(differ)} "
            "differ); train heads for this one with `sotflow train-heads`"
        )
    heads = DraftHeads(spec, model)
    heads.load_state_dict({k: v.to(model.dtype) for k, v in tensors.items()})
    heads.info = dict(record.get("info", {}))
    heads.eval()
    heads.requires_grad_(False)
    return heads
