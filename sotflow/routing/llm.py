"""A router that asks a model: independent points (A), dependent points (B), or no list (C).

The answer is constrained to one letter; with log-probabilities the confidence is the
model's own probability of its letter among the three. Inside ``Routed`` the question
to the model is a node of the run's graph, so it shares the run's limits, retries,
budget and trace.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

from ..backends.base import Backend, check_backend
from ..errors import ConfigurationError
from ..graph import Call, Graph, NodeContext
from ..prompts import Prompts
from ..strategies.base import BuildContext
from ..types import Completion, Decision, Message, Request, SamplingParams

__all__ = ["LLMRouter"]

# The templates this uses; an override for any other name is refused as a typo.
_PROMPTS = ("router.system", "router.user")

_LETTER = re.compile(r"(?<![A-Za-z])([ABC])(?![A-Za-z])")
_LABELS = {"A": "sot", "B": "sot-dag", "C": "direct"}


class LLMRouter:
    """Classify a question with one short, constrained model call."""

    name = "llm"

    def __init__(
        self,
        backend: Backend,
        *,
        prompts: Prompts | Mapping[str, str] | None = None,
        prompt_dir: str | os.PathLike[str] | None = None,
        labels: Mapping[str, str] | None = None,
        max_retries: int = 2,
    ) -> None:
        check_backend(backend, "LLMRouter's backend", optional=False)
        self.backend = backend
        self.prompts = Prompts.of(prompts, prompt_dir, uses=_PROMPTS, owner="LLMRouter")
        self.labels = dict(labels or _LABELS)
        self.max_retries = max_retries
        logprobs = backend.capabilities.logprobs
        self.params = SamplingParams(
            max_tokens=3, temperature=0.0, logprobs=logprobs, top_logprobs=5 if logprobs else None
        )

    def request(self, question: str) -> Request:
        return Request(
            (
                Message.system(self.prompts.render("router.system")),
                Message.user(self.prompts.render("router.user", question=question)),
            ),
            self.params,
        )

    def parse(self, completion: Completion) -> Decision:
        text = completion.text.strip()
        bare = text.strip("()[].:*'\" ").upper()
        # A lone letter counts in any case; inside words only a capital does, so the
        # article in "a list" is not read as answer A.
        match = _LETTER.fullmatch(bare) or _LETTER.search(text[:20])
        if match is None:
            return Decision(
                strategy="direct",
                confidence=0.0,
                reason=f"the router model did not answer A, B or C ({text[:40]!r}); "
                "answering directly",
                router=self.name,
            )
        letter = match.group(1)
        return Decision(
            strategy=self.labels[letter],
            confidence=_confidence(completion, letter),
            reason=f"the model classified the question as {letter}",
            router=self.name,
        )

    def node(self, question: str, node_id: str = "route") -> Call:
        """The routing call as a graph node (used by ``Routed``)."""
        return Call(
            node_id,
            self.request(question),
            backend=self.backend,
            then=lambda completion, ctx: self.parse(completion),
        )

    async def decide(self, question: str) -> Decision:
        if not isinstance(question, str) or not question.strip():
            raise ConfigurationError("the router needs a non-empty question")
        from ..engine import Engine

        # No `async with`: leaving it would close a backend the caller may still use.
        engine = Engine(self.backend, max_retries=self.max_retries)
        answer = await engine.run(_RouteOnly(self), question)
        assert answer.decision is not None
        return answer.decision


class _RouteOnly:
    name = "route"

    def __init__(self, router: LLMRouter) -> None:
        self.router = router

    def build(self, question: str, ctx: BuildContext) -> Graph:
        from ..graph import Result

        def result(completion: Completion, node: NodeContext) -> Result:
            decision = self.router.parse(completion)
            return Result("", decision=decision)

        call = Call(
            "route", self.router.request(question), backend=self.router.backend, then=result
        )
        return Graph((call,), output="route")


def _confidence(completion: Completion, letter: str) -> float:
    """The model's probability of ``letter`` among A/B/C at the first answer token."""
    logprobs = completion.choices[0].logprobs
    if not logprobs:
        return 1.0
    for token in logprobs:
        if token.token.strip().upper() not in _LABELS:
            continue
        candidates = dict(token.top) or {token.token: token.logprob}
        candidates.setdefault(token.token, token.logprob)
        mass: dict[str, float] = {}
        for tok, lp in candidates.items():
            key = tok.strip().upper()
            if key in _LABELS:
                mass[key] = mass.get(key, 0.0) + math.exp(lp)
        total = sum(mass.values())
        return round(mass.get(letter, 0.0) / total, 4) if total else 1.0
    return 1.0
