"""A preallocated key/value cache with one compact row per live sequence.

Layout per layer: ``[rows, kv_heads, capacity, head_dim]``. Row ``r`` holds the keys and
values of its sequence's committed tokens at indices ``0 .. length[r]-1``, index equal
to the token's position: no left padding, so positions never need an offset. Anything
past ``length[r]`` is scratch: a decode step writes its candidate block there, and only
the accepted entries are moved into place (``commit``); rejected ones are simply left
behind and overwritten later, which is the whole of "rolling back".

Live rows are kept packed at ``0 .. n-1`` so a step can use the views ``[:n]`` without
gathering; removing a row moves the last row into its place.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache"]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class KVCache:
    def __init__(
        self,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        rows: int = 1,
        capacity: int = 256,
        max_capacity: int | None = None,
    ) -> None:
        self.layers = layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_capacity = max_capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []
        """Committed tokens per live row; ``len(lengths)`` is the number of live rows."""
        self._allocate(rows, capacity)

    @property
    def rows_allocated(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def live_rows(self) -> int:
        return len(self.lengths)

    def _allocate(self, rows: int, capacity: int) -> None:
        shape = (rows, self.kv_heads, capacity, self.head_dim)
        old_k, old_v = self.keys, self.values
        self.keys = [
            torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)
        ]
        self.values = [
            torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)
        ]
        if old_k and self.lengths:
            n = self.live_rows
            t = min(max(self.lengths), capacity, old_k[0].shape[2])
            for new, old in zip(self.keys + self.values, old_k + old_v, strict=True):
                new[:n, :, :t] = old[:n, :, :t]

    def reserve(self, rows: int, tokens: int) -> None:
        """Make room for ``rows`` live rows of ``tokens`` entries each (grows, never shrinks)."""
        if self.max_capacity is not None and tokens > self.max_capacity:
            raise ValueError(
                f"a sequence needs {tokens} cache entries, more than the model's "
                f"{self.max_capacity}"
            )
        need_rows = rows > self.rows_allocated
        need_tokens = tokens > self.capacity
        if not (need_rows or need_tokens):
            return
        # Growing by doubling keeps the number of reallocations logarithmic.
        new_rows = max(rows, self.rows_allocated * 2) if need_rows else self.rows_allocated
        new_cap = self.capacity
        if need_tokens:
            new_cap = _round_up(max(tokens, self.capacity * 2), 64)
            if self.max_capacity is not None:
                new_cap = min(new_cap, _round_up(self.max_capacity, 64))
        self._allocate(new_rows, new_cap)

    def add_row(self) -> int:
        """Open a new empty row and return its index."""
        self.reserve(self.live_rows + 1, self.capacity)
        self.lengths.append(0)
        return self.live_rows - 1

    def remove_row(self, row: int) -> int | None:
        """Drop ``row``; the last row moves into its place. Returns the moved row's old index."""
        last = self.live_rows - 1
        moved: int | None = None
        if row != last:
            t = self.lengths[last]
            for tensor in self.keys + self.values:
                tensor[row, :, :t] = tensor[last, :, :t]
            self.lengths[row] = t
            moved = last
        self.lengths.pop()
        return moved

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Share a computed prefix: ``dst`` gets ``src``'s first ``n`` entries."""
        if n <= 0:
            return
        for tensor in self.keys + self.values:
            tensor[dst, :, :n] = tensor[src, :, :n]
        self.lengths[dst] = n

    def commit(self, row: int, block_start: int, block_offsets: list[int]) -> None:
        """Keep the block entries at ``block_offsets`` (relative to ``block_start``), in order.

        They become the row's next committed tokens at ``block_start, block_start+1, ...``.
        Offsets that are already in place (a contiguous run from 0) need no copy.
        """
        n = len(block_offsets)
        first_moved = 0
        while first_moved < n and block_offsets[first_moved] == first_moved:
            first_moved += 1
        if first_moved < n:
            src = torch.tensor(
                [block_start + o for o in block_offsets[first_moved:]], device=self.device
            )
            dst = block_start + first_moved
            for tensor in self.keys + self.values:
                # index_select copies first, so overlapping source and target are safe.
                tensor[row, :, dst : block_start + n] = tensor[row].index_select(1, src)
        self.lengths[row] = block_start + n

    def truncate(self, row: int, length: int) -> None:
        self.lengths[row] = min(self.lengths[row], length)
