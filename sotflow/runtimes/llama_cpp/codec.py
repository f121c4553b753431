"""Prompts and text for the llama.cpp runtime, from the GGUF file's own vocabulary and
chat template (no Hugging Face tokenizer, no torch)."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from typing import Any

from ..codec import render_chat, transcript
from .runtime import LlamaCppRuntime

__all__ = ["LlamaCppCodec"]


class _Decoder:
    def __init__(self, codec: LlamaCppCodec) -> None:
        self._codec = codec
        self._bytes = bytearray()

    def feed(self, tokens: Sequence[int]) -> str:
        piece = self._codec.piece
        for token in tokens:
            self._bytes += piece(token)
        return self._bytes.decode("utf-8", "replace")


class LlamaCppCodec:
    def __init__(self, runtime: LlamaCppRuntime) -> None:
        self._runtime = runtime
        self._lib: Any = runtime._lib
        self._vocab = runtime.vocab
        self.template = runtime.metadata("tokenizer.chat_template")
        self._pieces: dict[int, bytes] = {}
        self._buffer = ctypes.create_string_buffer(256)
        lib, vocab = self._lib, self._vocab
        self.eos = frozenset(
            t for t in range(runtime.info.vocab_size) if lib.llama_vocab_is_eog(vocab, t)
        )
        self._special = {
            "bos_token": self._text_of(lib.llama_vocab_bos(vocab)),
            "eos_token": self._text_of(lib.llama_vocab_eos(vocab)),
        }

    def _text_of(self, token: int) -> str:
        if token < 0:
            return ""
        n = self._lib.llama_token_to_piece(self._vocab, token, self._buffer, 256, 0, True)
        return self._buffer.raw[: max(0, n)].decode("utf-8", "replace")

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (control tokens stand for none)."""
        cached = self._pieces.get(token)
        if cached is None:
            n = self._lib.llama_token_to_piece(self._vocab, token, self._buffer, 256, 0, False)
            cached = self._buffer.raw[: max(0, n)]
            self._pieces[token] = cached
        return cached

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 16
        out = (ctypes.c_int32 * size)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), out, size, False, True)
        if n < 0:  # the buffer was too small: -n is what it needs
            out = (ctypes.c_int32 * -n)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), out, -n, False, True)
        return list(out[:n])

    def prompt(self, messages: Sequence[Mapping[str, str]], prefill: str | None) -> list[int]:
        if self.template:
            text = render_chat(self.template, messages, prefill, self._special)
        else:
            text = transcript(messages, prefill)
        return self.tokenize(text)

    def decoder(self, prompt: Sequence[int]) -> _Decoder:
        return _Decoder(self)

    def token_text(self, token: int) -> str:
        return self.piece(token).decode("utf-8", "replace")
