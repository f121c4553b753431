"""A lean forward pass for Llama-family decoders over a ``KVCache``.

Why not call the Hugging Face module: a decode step here needs things its cache and mask
plumbing make slow or awkward: rows at different lengths written at their own offsets,
arbitrary per-token positions (window and tree tokens share positions), a block-level
attention mask, and logits for only some positions. The arithmetic mirrors
``transformers``' Llama (RMSNorm in float32, rotary embedding from its own ``inv_freq``),
and greedy decoding is checked token-for-token against ``generate``.

The weights are the Hugging Face module's own tensors, except that ``fuse=True``
concatenates q/k/v and gate/up (two fewer matmuls a layer) and ``pack`` (default: on
CPU in float32) keeps oneDNN-reordered copies (see ``_Linear``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .kv_cache import KVCache

__all__ = ["SUPPORTED_MODEL_TYPES", "DecoderModel", "block_mask", "packing_available"]

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})


class _Linear:
    """``x @ W.T + b``, optionally through oneDNN with the weight reordered once.

    On CPU, MKL's sgemm is tuned for large matrices: a block of 4-16 tokens costs two to
    three times a single token, which would eat what multi-token decoding gains. oneDNN's
    prepacked linear runs such blocks for little more than one token (and one token a bit
    faster too). Its sums are ordered differently, so results differ from ``F.linear`` in
    the last bits; greedy parity with ``generate`` is still checked in the tests.
    """

    __slots__ = ("bias", "out_features", "packed", "weight")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool) -> None:
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.out_features = weight.shape[0]
        # Packed for single rows too: a decode step streams every weight from memory, and
        # oneDNN's packed kernel reads them at ~20 GB/s here where MKL's matrix-vector
        # path reaches ~11 GB/s (measured on SmolLM2: 50 ms a step instead of 57 ms).
        # Benchmarks that keep one small matrix hot in cache hide this difference.
        self.packed = _reorder(self.weight) if pack else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    # Packed for blocks of about 8 rows: the typical decode block; it serves any size.
    return torch.ops.mkldnn._reorder_linear_weight(weight, 8)


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN prepacked linears work here (CPU, float32, a build with mkldnn)."""
    if device.type != "cpu" or dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = _Linear(torch.ones(4, 8), None, pack=True)
        return bool(torch.allclose(probe(torch.ones(3, 8)), torch.full((3, 4), 8.0)))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


@dataclass(slots=True)
class _Layer:
    qkv: list[_Linear]
    o: _Linear
    gate_up: list[_Linear]
    down: _Linear
    ln_in: torch.Tensor
    ln_post: torch.Tensor


def _bias(linear: Any) -> torch.Tensor | None:
    return linear.bias if getattr(linear, "bias", None) is not None else None


class DecoderModel:
    """The forward pass of a loaded ``transformers`` Llama/Mistral/Qwen2 causal LM."""

    def __init__(self, hf_model: Any, *, fuse: bool = True, pack: bool | None = None) -> None:
        config = hf_model.config
        model_type = getattr(config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"the local decoder supports {sorted(SUPPORTED_MODEL_TYPES)} models, "
                f"not {model_type!r}"
            )
        if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
            raise ValueError("sliding-window attention is not supported by the local decoder")
        core = hf_model.model
        self.hf_model = hf_model
        self.n_layers = config.num_hidden_layers
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.eps = float(config.rms_norm_eps)
        self.max_positions = int(getattr(config, "max_position_embeddings", 2048))
        self.embed = core.embed_tokens.weight
        self.norm = core.norm.weight
        rotary = core.rotary_emb
        self.inv_freq = rotary.inv_freq.detach().float()  # [D/2]
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        if pack is None:
            pack = packing_available(self.device, self.dtype)
        self.packed = pack
        self.lm_head = _Linear(hf_model.lm_head.weight, _bias(hf_model.lm_head), pack)
        self.layers = [self._layer(layer, fuse, pack) for layer in core.layers]
        self.scale = self.head_dim**-0.5
        self.small_block = 64
        """Blocks up to this many tokens use matmul attention instead of the SDPA kernel."""

    @staticmethod
    def _layer(layer: Any, fuse: bool, pack: bool) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        gate_up = [mlp.gate_proj, mlp.up_proj]
        if fuse:
            biases = [_bias(m) for m in qkv]
            fused_b = None if any(b is None for b in biases) else torch.cat(biases)  # type: ignore[arg-type]
            qkv_lin = [_Linear(torch.cat([m.weight for m in qkv]), fused_b, pack)]
            gate_up_lin = [_Linear(torch.cat([m.weight for m in gate_up]), None, pack)]
        else:
            qkv_lin = [_Linear(m.weight, _bias(m), pack) for m in qkv]
            gate_up_lin = [_Linear(m.weight, None, pack) for m in gate_up]
        return _Layer(
            qkv=qkv_lin,
            o=_Linear(attn.o_proj.weight, _bias(attn.o_proj), pack),
            gate_up=gate_up_lin,
            down=_Linear(mlp.down_proj.weight, None, pack),
            ln_in=layer.input_layernorm.weight,
            ln_post=layer.post_attention_layernorm.weight,
        )

    def new_cache(self, rows: int = 1, capacity: int = 256) -> KVCache:
        return KVCache(
            layers=self.n_layers,
            kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            dtype=self.dtype,
            device=self.device,
            rows=rows,
            capacity=min(capacity, self.max_positions),
            max_capacity=self.max_positions,
        )

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # One fused kernel instead of seven small ops; in float32 it computes exactly
            # what transformers' LlamaRMSNorm does.
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        h = x.to(torch.float32)
        var = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(var + self.eps)
        return weight * h.to(x.dtype)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
        cos = (emb.cos() * self.rope_scaling).to(self.dtype)[:, None]  # [B, 1, T, D]
        sin = (emb.sin() * self.rope_scaling).to(self.dtype)[:, None]
        return cos, sin

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _attend(
        self,
        q: torch.Tensor,  # [B, H, T, D]
        k: torch.Tensor,  # [B, Hkv, S, D]
        v: torch.Tensor,  # [B, Hkv, S, D]
        mask: torch.Tensor,  # [B, 1, T, S] bool
        bias: torch.Tensor | None,  # [B, 1, G*T, S] additive, for short blocks
    ) -> torch.Tensor:
        B, H, T, D = q.shape
        Hkv = k.shape[1]
        if bias is None:
            if Hkv != H:  # repeat K/V per query head, as transformers does (works on torch 2.4)
                S = k.shape[2]
                k = k[:, :, None].expand(B, Hkv, H // Hkv, S, D).reshape(B, H, S, D)
                v = v[:, :, None].expand(B, Hkv, H // Hkv, S, D).reshape(B, H, S, D)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        grouped = q.reshape(B, Hkv, (H // Hkv) * T, D)  # heads kv*G+g share kv head kv
        scores = torch.matmul(grouped, k.transpose(-1, -2)) * self.scale  # [B, Hkv, G*T, S]
        probs = torch.softmax(scores.float() + bias, dim=-1).to(q.dtype)
        return torch.matmul(probs, v).reshape(B, H, T, D)  # [B, H, T, D]

    def forward(
        self,
        tokens: torch.Tensor,  # [B, T]
        positions: torch.Tensor,  # [B, T]
        cache: KVCache,
        *,
        rows: Sequence[int],
        write_start: list[int],
        mask: torch.Tensor,  # [B, 1, T, S] bool, True = may attend
        logits_at: torch.Tensor | None = None,  # [B, K] indices into T, or None for all
        compute_logits: bool = True,
    ) -> torch.Tensor | None:
        """Run ``tokens`` for cache rows ``rows`` (one per batch row).

        Row ``b``'s block is written to cache indices ``write_start[b] .. +T-1``; keys
        ``0 .. S-1`` are read. Returns logits ``[B, T, V]`` (or ``[B, K, V]``).
        """
        hidden = self.hidden(
            tokens,
            positions,
            cache,
            rows=rows,
            write_start=write_start,
            mask=mask,
            hidden_at=logits_at,
            compute=compute_logits,
        )
        return None if hidden is None else self.logits(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The vocabulary projection of final hidden states: ``[..., C] -> [..., V]``."""
        return self.lm_head(hidden)

    def hidden(
        self,
        tokens: torch.Tensor,  # [B, T]
        positions: torch.Tensor,  # [B, T]
        cache: KVCache,
        *,
        rows: Sequence[int],
        write_start: list[int],
        mask: torch.Tensor,  # [B, 1, T, S] bool, True = may attend
        hidden_at: torch.Tensor | None = None,  # [B, K] indices into T, or None for all
        compute: bool = True,
    ) -> torch.Tensor | None:
        """Like ``forward``, but returns the final (normed) hidden states ``[B, T|K, C]``:
        what the vocabulary projection and draft heads read. ``compute=False`` only
        fills the cache."""
        B, T = tokens.shape
        S = mask.shape[-1]
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        cos, sin = self._rope(positions)
        first = rows[0]
        contiguous = list(rows) == list(range(first, first + B))
        # Contiguous rows are a view of the cache; others are gathered (a copy).
        picked: slice | torch.Tensor = (
            slice(first, first + B)
            if contiguous
            else torch.tensor(list(rows), device=tokens.device)
        )
        same_start = contiguous and all(w == write_start[0] for w in write_start)
        if same_start:
            w0 = write_start[0]
            index = None
        else:
            starts = torch.tensor(write_start, device=tokens.device)
            b_idx = torch.tensor(list(rows), device=tokens.device)[:, None]  # [B, 1]
            t_idx = starts[:, None] + torch.arange(T, device=tokens.device)  # [B, T]
            index = (b_idx, t_idx)
        # Decode blocks are short: a plain matmul attention beats the flash kernel there,
        # and grouping the query heads of each key/value head avoids repeating K and V.
        bias = None
        if self.small_block >= T:
            bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
            bias = bias.masked_fill(~mask, float("-inf"))  # [B, 1, T, S]
            group = H // Hkv
            if group > 1:
                bias = bias[:, :, None].expand(B, 1, group, T, S).reshape(B, 1, group * T, S)
        x = F.embedding(tokens, self.embed)  # [B, T, C]
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln_in)
            projected = [lin(h) for lin in layer.qkv]
            if len(projected) == 1:
                # Queries and keys are rotated together: half the small ops per layer.
                qk, v = projected[0].split([(H + Hkv) * D, Hkv * D], dim=-1)
                qk = self._rotate(qk.view(B, T, H + Hkv, D).transpose(1, 2), cos, sin)
                q, k = qk.split([H, Hkv], dim=1)  # [B, H, T, D], [B, Hkv, T, D]
            else:
                q, k, v = projected
                q = self._rotate(q.view(B, T, H, D).transpose(1, 2), cos, sin)  # [B, H, T, D]
                k = self._rotate(k.view(B, T, Hkv, D).transpose(1, 2), cos, sin)
            v = v.view(B, T, Hkv, D).transpose(1, 2)  # [B, Hkv, T, D]
            kc, vc = cache.keys[i], cache.values[i]  # [R, Hkv, C, D]
            if index is None:
                kc[picked, :, w0 : w0 + T] = k
                vc[picked, :, w0 : w0 + T] = v
            else:
                kc[index[0], :, index[1]] = k.transpose(1, 2)  # [B, T, Hkv, D]
                vc[index[0], :, index[1]] = v.transpose(1, 2)
            attn = self._attend(q, kc[picked, :, :S], vc[picked, :, :S], mask, bias)  # [B, H, T, D]
            attn = attn.transpose(1, 2).reshape(B, T, H * D)
            x = x + layer.o(attn)
            h = self._rms(x, layer.ln_post)
            parts = [lin(h) for lin in layer.gate_up]
            if len(parts) == 1:
                gate, up = parts[0].chunk(2, dim=-1)
            else:
                gate, up = parts
            x = x + layer.down(F.silu(gate) * up)
        if not compute:
            return None
        if hidden_at is not None:
            x = x.gather(1, hidden_at[..., None].expand(-1, -1, x.shape[-1]))  # [B, K, C]
        return self._rms(x, self.norm)  # [B, T|K, C]


def block_mask(
    write_start: list[int],
    inner: torch.Tensor,  # [B, T, T] bool: which block tokens each block token sees
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The attention mask for blocks written at per-row offsets: ``[B, 1, T, S]``.

    A block token sees every committed entry of its own row (indices below its row's
    ``write_start``) and the block tokens ``inner`` allows; nothing past the block.
    """
    B, T, _ = inner.shape
    starts = torch.tensor(write_start, device=device)  # [B]
    S = int(max(write_start)) + T
    rel = torch.arange(S, device=device)[None, :] - starts[:, None]  # [B, S]
    committed = rel < 0  # [B, S]
    in_block = (rel >= 0) & (rel < T)
    picked = inner.gather(2, rel.clamp(0, T - 1)[:, None, :].expand(B, T, S))  # [B, T, S]
    return (committed[:, None, :] | (in_block[:, None, :] & picked))[:, None]  # [B, 1, T, S]
