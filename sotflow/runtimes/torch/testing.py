"""Tiny random models and a byte-level tokenizer for tests: built in memory, no download.

A random model with the default initialisation has nearly flat logits, and float
rounding then decides its argmax: useless for exactness checks. ``tiny_llama`` scales
the initialisation up so the argmax is decisive, while the output still varies with
the prompt.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch

from ...decoding.threads import on_model_thread

__all__ = ["CHATML_TEMPLATE", "byte_alphabet", "byte_tokenizer", "reference_greedy", "tiny_llama"]

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_llama(
    *,
    seed: int = 0,
    vocab_size: int = 258,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    init_std: float = 0.15,
    max_positions: int = 512,
    eos_token_id: int | None = None,
) -> Any:
    """A float32 ``LlamaForCausalLM`` with random weights, deterministic for ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eos_token_id
        model.generation_config.pad_token_id = eos_token_id
    return model


def byte_alphabet() -> list[str]:
    # The GPT-2 byte-to-printable mapping: printable bytes map to themselves, the rest
    # to unused code points, so every byte is one visible vocabulary entry.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_tokenizer() -> Any:
    """A byte-level tokenizer: ids 0-255 are bytes, 256 is ``<|im_end|>`` (also EOS) and
    257 is ``<|im_start|>``; it carries a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>"}
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def reference_greedy(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    max_tokens: int,
    eos: Collection[int],
) -> tuple[str, int]:
    """Hugging Face ``generate`` greedy from ``prompt``: the text and token count that
    every decoding mode must reproduce exactly.

    The text is decoded with the prompt's last tokens in front and then cut, so a
    tokenizer that merges across the boundary (a leading space) decodes as it does in
    the backend. Runs on the torch thread, like the backend it is compared with.
    """

    def run() -> list[int]:
        device = model.device
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([prompt], device=device),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
                max_new_tokens=max_tokens,
                do_sample=False,
            )
        return out[0, len(prompt) :].tolist()  # type: ignore[no-any-return]

    tokens = on_model_thread(run)
    for i, token in enumerate(tokens):
        if token in eos:
            tokens = tokens[:i]
            break
    anchor = prompt[-4:]
    anchor_text = tokenizer.decode(anchor, skip_special_tokens=True)
    text = tokenizer.decode(anchor + tokens, skip_special_tokens=True)[len(anchor_text) :]
    return text, len(tokens)
