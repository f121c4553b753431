"""Prompts and text for the torch runtime, through a Hugging Face tokenizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..codec import transcript

__all__ = ["HFCodec", "eos_ids"]


def eos_ids(hf_model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(hf_model, "generation_config", None), hf_model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


class _Decoder:
    def __init__(self, tokenizer: Any, prompt: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        # Decoding after a few prompt tokens keeps a leading space that a tokenizer
        # would drop when decoding the continuation on its own.
        self._anchor = list(prompt[-4:])
        self._anchor_text = tokenizer.decode(self._anchor, skip_special_tokens=True)
        self._tokens: list[int] = []

    def feed(self, tokens: Sequence[int]) -> str:
        self._tokens.extend(tokens)
        text = self._tokenizer.decode(self._anchor + self._tokens, skip_special_tokens=True)
        if text.startswith(self._anchor_text):
            return text[len(self._anchor_text) :]  # type: ignore[no-any-return]
        return self._tokenizer.decode(self._tokens, skip_special_tokens=True)  # type: ignore[no-any-return]


class HFCodec:
    def __init__(self, tokenizer: Any, eos: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.eos = eos

    def prompt(self, messages: Sequence[Mapping[str, str]], prefill: str | None) -> list[int]:
        items = [dict(m) for m in messages]
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            if prefill is not None:
                items.append({"role": "assistant", "content": prefill})
                text = tokenizer.apply_chat_template(
                    items, tokenize=False, continue_final_message=True
                )
                # The template may strip the message; trailing spaces of a prefill matter.
                if not text.endswith(prefill) and text.endswith(prefill.rstrip()):
                    text += prefill[len(prefill.rstrip()) :]
            else:
                text = tokenizer.apply_chat_template(
                    items, tokenize=False, add_generation_prompt=True
                )
        else:
            text = transcript(items, prefill)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def decoder(self, prompt: Sequence[int]) -> _Decoder:
        return _Decoder(self.tokenizer, prompt)

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])  # type: ignore[no-any-return]
