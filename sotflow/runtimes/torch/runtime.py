"""The torch runtime: ``decoding.runtime.Runtime`` over our own Llama-family forward.

Each sequence owns a compact row of ``KVCache`` (no left padding: index = position).
An evaluation groups the batch's tokens by sequence, turns each sequence's tree
(``TokenBatch.parents``) into its block mask (a token sees its row's cache, its
ancestors and itself), and runs the blocks padded to a common length; rows whose
blocks differ much in length run in separate forwards, since padding wastes compute.
Settling moves the kept entries into place (``KVCache.commit``). Everything runs
under ``torch.inference_mode`` on the caller's thread: the backend calls it from the
one model thread (``decoding.threads``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...decoding.runtime import RuntimeInfo, TokenBatch
from .forward import DecoderModel, block_mask
from .kv_cache import KVCache

__all__ = ["TorchRuntime"]

SCRATCH = 64
"""Cache entries past the context a block may be written to before it is settled."""


class _Output:
    def __init__(self, logits: torch.Tensor | None, hidden: torch.Tensor | None) -> None:
        self._logits = logits  # [K, V]
        self._hidden = hidden  # [K, C]

    def argmax(self) -> list[int]:
        if self._logits is None:
            return []
        return self._logits.argmax(-1).tolist()  # type: ignore[no-any-return]

    def logits(self, rows: Sequence[int]) -> np.ndarray:
        assert self._logits is not None, "no token of the batch asked for output"
        index = torch.tensor(list(rows), device=self._logits.device)
        return self._logits.index_select(0, index).float().cpu().numpy()

    def hidden(self, rows: Sequence[int]) -> np.ndarray:
        assert self._hidden is not None, "evaluate(..., hidden=True) gives hidden states"
        index = torch.tensor(list(rows), device=self._hidden.device)
        return self._hidden.index_select(0, index).float().cpu().numpy()


@dataclass(slots=True)
class _Block:
    seq: int
    slot: int
    start: int
    """The row's cached length: where the block is written."""
    indices: list[int]
    """The batch indices of the sequence's tokens, in batch order."""


class TorchRuntime:
    def __init__(
        self, model: DecoderModel, *, max_sequences: int = 64, max_padding: float = 1.3
    ) -> None:
        self.model = model
        with torch.inference_mode():
            self.cache: KVCache = model.new_cache(rows=1, capacity=256)
        self.cache.max_capacity = model.max_positions + SCRATCH
        self.max_padding = max_padding
        self._slot: dict[int, int] = {}
        self._seq_at: list[int] = []
        self._last: list[_Block] = []
        self.info = RuntimeInfo(
            name="torch",
            vocab_size=model.vocab_size,
            hidden_size=model.hidden_size,
            layers=model.n_layers,
            context_length=model.max_positions,
            max_sequences=max_sequences,
            device=str(model.device),
            fingerprint=self._fingerprint(),
        )

    def _fingerprint(self) -> str:
        model = self.model
        probe = model.lm_head.weight[:4, :16].detach().float().cpu().numpy().tobytes()
        setting = (
            f"{model.vocab_size}|{model.hidden_size}|{model.n_layers}|{model.dtype}|"
            f"{model.device}|{torch.get_num_threads()}|{torch.__version__}"
        )
        return "torch-" + hashlib.sha256(probe + setting.encode()).hexdigest()[:16]

    # ----------------------------------------------------------------- sequences
    def _row(self, seq: int) -> int:
        slot = self._slot.get(seq)
        if slot is None:
            slot = self.cache.add_row()
            self._slot[seq] = slot
            self._seq_at.append(seq)
        return slot

    @torch.inference_mode()
    def fork(self, src: int, dst: int, length: int) -> None:
        source = self._slot[src]
        target = self._row(dst)
        self.cache.copy_prefix(source, target, length)

    @torch.inference_mode()
    def drop(self, seq: int) -> None:
        slot = self._slot.pop(seq, None)
        if slot is None:
            return
        moved = self.cache.remove_row(slot)
        last = self._seq_at.pop()
        if moved is not None:
            self._slot[last] = slot
            self._seq_at[slot] = last

    def length(self, seq: int) -> int:
        slot = self._slot.get(seq)
        return 0 if slot is None else self.cache.lengths[slot]

    # ----------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(self, batch: TokenBatch, *, hidden: bool = False) -> _Output:
        by_seq: dict[int, list[int]] = {}
        for i, seq in enumerate(batch.seqs):
            by_seq.setdefault(seq, []).append(i)
        blocks = []
        for seq, indices in by_seq.items():
            slot = self._row(seq)
            blocks.append(_Block(seq, slot, self.cache.lengths[slot], indices))
        self._last = blocks
        longest = max(len(b.indices) for b in blocks)
        self.cache.reserve(len(self._seq_at), max(b.start for b in blocks) + longest)
        hidden_of: dict[int, torch.Tensor] = {}  # batch index -> [C]
        for group in self._groups(blocks):
            hidden_of.update(self._forward(batch, group))
        wanted = [i for i, out in enumerate(batch.outputs) if out]
        if not wanted:
            return _Output(None, None)
        flat = torch.stack([hidden_of[i] for i in wanted])  # [K, C]
        return _Output(self.model.logits(flat), flat)

    def _groups(self, blocks: list[_Block]) -> list[list[_Block]]:
        """Blocks of similar length run together (sorted by slot inside a group)."""
        ordered = sorted(blocks, key=lambda b: len(b.indices))
        groups: list[list[_Block]] = []
        for block in ordered:
            if groups:
                group = [*groups[-1], block]
                lengths = [len(b.indices) for b in group]
                padded = max(lengths) * len(lengths)
                # Padding wastes compute, but another pass over the weights costs more
                # while the blocks are short.
                if padded <= max(self.max_padding * sum(lengths), 64):
                    groups[-1] = group
                    continue
            groups.append([block])
        return [sorted(g, key=lambda b: b.slot) for g in groups]

    def _forward(self, batch: TokenBatch, group: list[_Block]) -> dict[int, torch.Tensor]:
        device = self.model.device
        B = len(group)
        T = max(len(b.indices) for b in group)
        tokens = torch.zeros((B, T), dtype=torch.long)
        positions = torch.zeros((B, T), dtype=torch.long)
        inner = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)  # padding sees itself
        outputs: list[list[int]] = []
        for b, block in enumerate(group):
            local = {i: k for k, i in enumerate(block.indices)}
            n = len(block.indices)
            tokens[b, :n] = torch.tensor([batch.tokens[i] for i in block.indices])
            positions[b, :n] = torch.tensor([batch.positions[i] for i in block.indices])
            positions[b, n:] = block.start
            chain = all(
                batch.parents[i] == (block.indices[k - 1] if k else -1)
                for k, i in enumerate(block.indices)
            )
            if chain:  # a prompt chunk: plain causal attention
                inner[b, :n, :n] = torch.ones((n, n), dtype=torch.bool).tril()
            else:
                for k, i in enumerate(block.indices):
                    parent = batch.parents[i]
                    while parent >= 0:
                        inner[b, k, local[parent]] = True
                        parent = batch.parents[parent]
            outputs.append([k for k, i in enumerate(block.indices) if batch.outputs[i]])
        write_start = [b.start for b in group]
        mask = block_mask(write_start, inner)
        K = max(len(o) for o in outputs)
        hidden_at = None
        if 0 < K < T:
            hidden_at = torch.zeros((B, K), dtype=torch.long)
            for b, idx in enumerate(outputs):
                hidden_at[b, : len(idx)] = torch.tensor(idx, dtype=torch.long)
            hidden_at = hidden_at.to(device)
        hidden = self.model.hidden(
            tokens.to(device),
            positions.to(device),
            self.cache,
            rows=[b.slot for b in group],
            write_start=write_start,
            mask=mask.to(device),
            hidden_at=hidden_at,
            compute=K > 0,
        )
        found: dict[int, torch.Tensor] = {}
        if hidden is None:
            return found
        for b, (block, idx) in enumerate(zip(group, outputs, strict=True)):
            for j, k in enumerate(idx):
                found[block.indices[k]] = hidden[b, j if hidden_at is not None else k]
        return found

    @torch.inference_mode()
    def settle(self, keep: Mapping[int, Sequence[int]]) -> None:
        for block in self._last:
            local = {i: k for k, i in enumerate(block.indices)}
            path = [local[i] for i in keep.get(block.seq, ())]
            slot = self._slot.get(block.seq)
            if slot is not None:
                self.cache.commit(slot, block.start, path)
        self._last = []

    # ----------------------------------------------------------------- weights
    def output_rows(self, token_ids: Sequence[int]) -> np.ndarray:
        weight = self.model.lm_head.weight
        index = torch.tensor(list(token_ids), dtype=torch.long, device=weight.device)
        return weight.detach().index_select(0, index).float().cpu().numpy()

    def embedding_rows(self, token_ids: Sequence[int]) -> np.ndarray:
        weight = self.model.embed
        index = torch.tensor(list(token_ids), dtype=torch.long, device=weight.device)
        return weight.detach().index_select(0, index).float().cpu().numpy()
