"""Responders for the loopback server that behave like a model answering sotflow prompts.

``sot_responder`` recognises the request by its shape, not by exact prompt wording:
a reply that must start with ``1.`` is a skeleton, one that must start with
``i. <title>:`` is a point expansion, a one-letter classification is a router call,
anything else is a full direct answer. Lengths follow what the prompts ask for and
what hosted models write: a skeleton of 5-8 short points, 1-2 sentences (30-60
tokens) per point, and 300-450 tokens for a direct answer; each is fixed per question
(by hash), so SoT and a direct answer are compared on the same question.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

__all__ = ["question_of", "sot_responder"]

_WORDS = [
    "clear",
    "goals",
    "help",
    "people",
    "plan",
    "their",
    "time",
    "and",
    "energy",
    "so",
    "that",
    "focus",
    "stays",
    "on",
    "what",
    "matters",
    "most",
    "while",
    "regular",
    "review",
    "keeps",
    "habits",
    "useful",
    "and",
    "costs",
    "low",
    "for",
    "the",
    "team",
]
_POINT = re.compile(r"^(\d+)\.\s+(.+?)\s*[:-]$")
_BEGIN = re.compile(r"Begin your reply with exactly: (.+)$", re.S)


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())


def _sentence(rng: random.Random, words: int) -> str:
    body = " ".join(rng.choice(_WORDS) for _ in range(words))
    return body[0].upper() + body[1:] + "."


def _text(rng: random.Random, tokens: int) -> str:
    parts, left = [], tokens
    while left > 0:
        n = min(left, rng.randint(12, 20))
        parts.append(_sentence(rng, n))
        left -= n
    return " ".join(parts)


def _prefill(body: dict[str, Any]) -> str | None:
    messages = body.get("messages") or []
    if body.get("continue_final_message") and messages and messages[-1].get("role") == "assistant":
        return str(messages[-1].get("content") or "")
    last = str(messages[-1].get("content") or "") if messages else ""
    match = _BEGIN.search(last)
    return match.group(1).strip() if match else None


def question_of(body: dict[str, Any]) -> str:
    """The user's question inside a sotflow prompt (or the whole last user message)."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = str(users[-1].get("content") or "") if users else ""
    match = re.search(r"^Question: (.+)$", content, re.M)
    return match.group(1).strip() if match else content.strip()


def sot_responder(body: dict[str, Any], index: int) -> str:
    question = question_of(body)
    seed = _seed(question)
    prefill = _prefill(body)
    last = str((body.get("messages") or [{}])[-1].get("content") or "")
    if "one letter" in last.lower():
        return "A"
    if prefill == "1.":
        rng = random.Random(seed)
        points = 5 + seed % 4
        lines = [
            " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 5))) for _ in range(points)
        ]
        return " " + "\n".join(f"{i}. {line}" if i > 1 else line for i, line in enumerate(lines, 1))
    if prefill and _POINT.match(prefill):
        number = int(_POINT.match(prefill).group(1))  # type: ignore[union-attr]
        rng = random.Random(seed + number)
        return " " + _text(rng, 30 + (seed >> number) % 31)
    rng = random.Random(seed + 1000 + index)
    return _text(rng, 300 + seed % 151)
