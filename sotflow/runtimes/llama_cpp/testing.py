"""Tiny GGUF models for tests: the weights of a tiny random Hugging Face Llama written as
a float32 GGUF file with a byte-level vocabulary, so the llama.cpp and torch runtimes
can be checked against each other on the same model in milliseconds, with no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_gguf"]


def _rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face keeps Llama's query/key rows in two halves per head (rotate-half);
    llama.cpp's Llama expects them interleaved in pairs. Same arithmetic, other order."""
    out, inp = weight.shape
    return weight.reshape(heads, 2, out // heads // 2, inp).swapaxes(1, 2).reshape(out, inp)


def write_gguf(hf_model: Any, path: str | Path, *, chat_template: str | None = None) -> Path:
    """Write a (tiny) ``LlamaForCausalLM`` with the byte tokenizer of
    ``runtimes.torch.testing.byte_tokenizer`` (ids 0-255 bytes, 256 ``<|im_end|>`` =
    EOS, 257 ``<|im_start|>``) as a float32 GGUF file."""
    import gguf

    from ..torch.testing import CHATML_TEMPLATE, byte_alphabet

    config = hf_model.config
    state = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    target = Path(path)
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name("sotflow-tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = [*byte_alphabet(), "<|im_end|>", "<|im_start|>"]
    if len(tokens) != config.vocab_size:
        raise ValueError(
            f"the byte vocabulary has {len(tokens)} tokens; the model {config.vocab_size}"
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    normal, control = gguf.TokenType.NORMAL, gguf.TokenType.CONTROL
    writer.add_token_types([normal] * 256 + [control, control])
    writer.add_token_merges(["ƒ ƒ"])  # never applies: llama.cpp wants the list to exist
    writer.add_eos_token_id(256)
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template or CHATML_TEMPLATE)

    def tensor(name: str, value: np.ndarray) -> None:
        writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))

    tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        tensor(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        tensor(f"blk.{i}.attn_q.weight", _rope_permute(state[p + "self_attn.q_proj.weight"], heads))
        tensor(
            f"blk.{i}.attn_k.weight", _rope_permute(state[p + "self_attn.k_proj.weight"], kv_heads)
        )
        tensor(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        tensor(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        tensor(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        tensor(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        tensor(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        tensor(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    tensor("output_norm.weight", state["model.norm.weight"])
    tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
