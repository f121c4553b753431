"""Between text and token ids: what the local backend needs of a model's tokenizer.

A ``Codec`` turns a conversation into prompt ids (the model's chat template, continuing
a prefilled assistant message when asked), decodes generated ids to text as they
arrive, and names the tokens that end a turn. The torch runtime's codec wraps a Hugging
Face tokenizer (``torch.codec``); llama.cpp's reads the vocabulary and the chat template
from the GGUF file (``llama_cpp.codec``), with the template rendered here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

__all__ = ["Codec", "TextDecoder", "render_chat", "transcript"]


class TextDecoder(Protocol):
    """The text of one completion's tokens so far (an incomplete UTF-8 character at the
    end reads as U+FFFD until its next bytes arrive)."""

    def feed(self, tokens: Sequence[int]) -> str:
        """Add tokens; returns the whole text so far."""
        ...


class Codec(Protocol):
    eos: frozenset[int]
    """Tokens that end a turn."""

    def prompt(self, messages: Sequence[Mapping[str, str]], prefill: str | None) -> list[int]:
        """The prompt ids; with ``prefill`` the reply continues that assistant text."""
        ...

    def decoder(self, prompt: Sequence[int]) -> TextDecoder:
        """A fresh decoder for a completion of ``prompt``."""
        ...

    def token_text(self, token: int) -> str: ...


def transcript(messages: Sequence[Mapping[str, str]], prefill: str | None) -> str:
    """A plain transcript for a base model without a chat template."""
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + "Assistant: " + (prefill or "")


@lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    """A chat template compiled once (compiling costs milliseconds, on every prompt)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    # The settings chat templates are written for (as Hugging Face renders them).
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, str]],
    prefill: str | None,
    special: Mapping[str, Any],
) -> str:
    """Render a Jinja chat template the way chat templates expect to be rendered.

    With ``prefill``, the conversation gets a final assistant message and the text is
    cut right after it, so the model continues it instead of starting a new turn.
    """
    compiled = _compiled(template)
    items = [dict(m) for m in messages]
    if prefill is None:
        return compiled.render(messages=items, add_generation_prompt=True, **special)
    # A marker instead of the real prefill: the template may strip or escape content,
    # and the prefill itself may occur earlier in the conversation.
    marker = "\x00sotflow-prefill\x00"
    text = compiled.render(
        messages=[*items, {"role": "assistant", "content": marker}],
        add_generation_prompt=False,
        **special,
    )
    at = text.rfind(marker)
    if at < 0:
        raise ValueError("the chat template dropped the assistant message; cannot prefill")
    return text[:at] + prefill
