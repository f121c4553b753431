"""A loopback responder that behaves like a model solving word problems with sotflow's
sampling, judging, critique and tree-search prompts.

Each question has one right answer (``right_answer``: a number fixed by the question's
hash), and the simulated model is right 60% of the time: a solution is about 150 tokens
of working (log-normal, +-25%: sampled solutions vary in length, with a long tail) that
ends "The answer is N.", where N is the right answer or, otherwise, a near miss (off by
one or ten, doubled). That spread makes votes, early stopping,
judges and verifiers meaningful. Requests are recognised by shape, not exact wording:

- a reply that must start with ``Score:`` is a judge: 8-9 for a right final answer (or a
  partial solution without a slip), 2-5 otherwise;
- "reply with the single word DONE" is a critique: ``DONE`` for a right answer, else a
  one-line problem;
- "feedback on it" is a revision: a new solution, right 80% of the time;
- "Write only the next step" is a tree-search proposal: a 20-30 token step, with a slip
  ("roughly") 30% of the time; the third step is the final ``Answer:`` line;
- "Restate the problem" is a short restatement (30-40 tokens);
- anything else is a full solution.

Sampling varies like a model at temperature > 0: the request's ``seed`` (and choice
index) fixes the draw when given; unseeded requests draw afresh every time.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from typing import Any

from .responders import _prefill

__all__ = ["right_answer", "strategy_responder"]

_WORDS = [
    "first", "we", "note", "the", "given", "amounts", "then", "combine", "them", "so",
    "the", "total", "follows", "from", "the", "rate", "and", "the", "time", "while",
    "each", "part", "is", "counted", "once", "and", "the", "units", "stay", "consistent",
]  # fmt: skip
_unseeded = itertools.count()
_FINAL = re.compile(r"(?:The answer is|Answer:)\s*(-?\d+)")


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())


def _question(body: dict[str, Any]) -> str:
    users = [str(m.get("content") or "") for m in body.get("messages") or [] if m["role"] == "user"]
    for content in reversed(users):
        match = re.search(r"^Question: (.+)$", content, re.M)
        if match:
            return match.group(1).strip()
    return users[-1].split("\n\n", 1)[0].strip() if users else ""


def right_answer(question: str) -> int:
    """The simulated model's right answer to ``question``."""
    return 10 + _hash(question.strip()) % 90


def _rng(body: dict[str, Any], index: int, kind: str) -> random.Random:
    seed = body.get("seed")
    last = str((body.get("messages") or [{}])[-1].get("content") or "")
    salt = f"{seed}|{index}" if seed is not None else f"unseeded-{next(_unseeded)}"
    return random.Random(_hash(f"{kind}|{salt}|{last}"))


def _working(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(tokens)).capitalize() + "."


def _final(rng: random.Random, right: int, p_right: float) -> int:
    if rng.random() < p_right:
        return right
    return rng.choice((right + 1, right - 1, right + 10, 2 * right, right - 10))


def _solution(rng: random.Random, right: int, p_right: float = 0.6) -> str:
    # Sampled solutions to one question differ in length with a long right tail (some
    # samples ramble): log-normal around 150 tokens, about +-25%.
    tokens = min(300, max(80, round(150 * math.exp(rng.gauss(0.0, 0.25)))))
    return f"{_working(rng, tokens - 4)} The answer is {_final(rng, right, p_right)}."


def strategy_responder(body: dict[str, Any], index: int) -> str:
    messages = body.get("messages") or []
    prefill = _prefill(body)
    users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
    prompt = users[-1] if users else ""
    right = right_answer(_question(body))
    if prefill is not None and prefill.strip() == "Score:":
        rng = _rng(body, index, "judge")
        finals = [int(n) for n in _FINAL.findall(prompt)]
        if "partial solution" in prompt:
            good = "roughly" not in prompt and (not finals or finals[-1] == right)
        else:
            good = bool(finals) and finals[-1] == right
        score = rng.randint(8, 9) if good else rng.randint(2, 5)
        # A prefilled reply continues after "Score:"; otherwise it must say it.
        return f" {score}" if body.get("continue_final_message") else f"Score: {score}"
    if "reply with the single word DONE" in prompt:
        finals = [int(n) for n in _FINAL.findall(prompt)]
        if finals and finals[-1] == right:
            return "DONE"
        return "The final result does not follow from the working; recompute the total."
    if "feedback on it" in prompt:
        return _solution(_rng(body, index, "revise"), right, p_right=0.8)
    if "Write only the next step" in prompt:
        rng = _rng(body, index, "step")
        block = re.search(r"Steps written so far:\n(.*?)\n\nWrite only", prompt, re.S)
        done = (
            0
            if block is None or block.group(1) == "(none yet)"
            else len(block.group(1).splitlines())
        )
        slip = rng.random() < 0.3
        step = _working(rng, rng.randint(20, 30))
        if slip:
            step = step[:-1] + ", roughly."
        if done >= 2:
            path_ok = not slip and "roughly" not in (block.group(1) if block else "")
            final = right if path_ok else _final(rng, right, 0.0)
            return f"{step}\nAnswer: {final}"
        return step
    if "Restate the problem" in prompt:
        rng = _rng(body, index, "restate")
        return _working(rng, rng.randint(30, 40))
    return _solution(_rng(body, index, "solve"), right)
