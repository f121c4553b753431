"""Samples and their scores, shared by best-of-N, self-consistency, rejection and tree search.

A sample is one model call whose value is a ``Sample``. A score is one more node that
needs it, of one of three kinds:

- a function of the text (sync or async) returning a number: a ``Step``;
- an LLM judge (``Judge``), a model asked to rate the text from 1 to ``scale``: a ``Call``
  whose reply is parsed by ``parse_score``;
- ``"logprob"``: the sample's mean token log-probability, which the sample call asks the
  backend for; a backend that cannot return log-probabilities is refused at build time.

Every score is a node of the run, so it shares the run's limits, budget and trace, and a
strategy can react to it the moment it exists (a ``done`` hook may return ``Expand`` to
cancel work that is no longer needed).
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..backends.base import check_backend
from ..errors import ConfigurationError
from ..graph import Call, NodeContext, Outcome, Step
from ..prompts import Prompts
from ..types import Completion, Message, Request, SamplingParams

if TYPE_CHECKING:
    from ..backends.base import Backend

__all__ = [
    "Judge",
    "Sample",
    "ScoreFn",
    "Scorer",
    "call_maybe_async",
    "check_logprobs",
    "check_score_setting",
    "completion_text",
    "needs_logprobs",
    "parse_score",
    "resolve_scorer",
    "sample_call",
    "sample_request",
    "sample_row",
]

ScoreFn = Callable[[str], float | Awaitable[float]]
Done = Callable[[float, NodeContext], Any]
TextOf = Callable[[NodeContext], str]


@dataclass(frozen=True, slots=True)
class Sample:
    """The value of a sample call: its text and what the backend said about it."""

    index: int
    text: str
    mean_logprob: float | None = None
    finish_reason: str | None = None


def sample_request(
    messages: tuple[Message, ...], params: SamplingParams, *, seed: int | None, index: int
) -> Request:
    """Sample ``index`` (from 1) of a set; with a base ``seed`` it gets ``seed + index - 1``,
    so the set is reproducible and no two samples share a seed."""
    if seed is not None:
        params = params.replace(seed=seed + index - 1)
    return Request(messages, params)


def sample_call(
    node_id: str,
    request: Request | Callable[[NodeContext], Request],
    *,
    index: int,
    backend: Backend | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Call:
    """One sampled answer; its value is a ``Sample``."""

    def then(completion: Completion, ctx: NodeContext) -> Sample:
        choice = completion.choices[0]
        return Sample(index, choice.text, choice.mean_logprob, choice.finish_reason)

    return Call(node_id, request, then=then, backend=backend, meta=dict(meta or {}))


def sample_row(
    ctx: NodeContext, index: int, outcome: Outcome, problem: str, *, warn: bool = True
) -> dict[str, Any]:
    """What became of sample ``index``, for ``answer.details``: its number, the status of
    the node that judged it (``outcome``), its text and the error that stopped it, if any
    (also a warning: "sample 3 <problem>: ...")."""
    row: dict[str, Any] = {"index": index, "status": outcome.status}
    sample = ctx.outcome(f"sample{index}")
    if sample is not None and sample.ok:
        row["text"] = sample.value.text
    if outcome.status == "failed" and outcome.error is not None:
        row["error"] = f"{type(outcome.error).__name__}: {outcome.error}"
        if warn:
            ctx.warn(f"sample {index} {problem}: {row['error']}")
    return row


def completion_text(completion: Completion, ctx: NodeContext) -> str:
    """A call's ``then`` that makes its value the reply's text."""
    return completion.text


async def call_maybe_async(fn: Callable[[str], Any], text: str) -> Any:
    value = fn(text)
    if inspect.isawaitable(value):
        value = await value
    return value


# -- parsing a judge's reply -----------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"
_SCORE_PATTERNS = (
    # "Score: 8", "score = 7.5/10", "**Score:** 9 out of 10"
    re.compile(rf"score\W{{0,6}}{_NUM}(?:\s*(?:/|out\s+of)\s*{_NUM})?", re.IGNORECASE),
    # "8/10", "7 out of 10"
    re.compile(rf"(?<![\d.]){_NUM}\s*(?:/|out\s+of)\s*{_NUM}", re.IGNORECASE),
    # "I would rate it a 7", "Rating: 6"
    re.compile(rf"rat(?:e|ing)\b\D{{0,20}}?{_NUM}(?:\s*(?:/|out\s+of)\s*{_NUM})?", re.I),
)
_BARE = re.compile(rf"^\W*{_NUM}\W*$")


def parse_score(text: str, scale: float = 10) -> float | None:
    """The score in a judge's reply, on a 0..``scale`` scale; ``None`` if there is none.

    Tried in order: an explicit ``Score: N`` (the last one, if the judge corrected
    itself), ``N/M`` or ``N out of M`` (rescaled to ``scale``), ``rate ... N``, and a
    reply that is just a number. A score outside 0..scale is no score.
    """
    for pattern in _SCORE_PATTERNS:
        matches = list(pattern.finditer(text))
        if not matches:
            continue
        value_s, out_of = matches[-1].group(1), matches[-1].group(2)
        value = float(value_s)
        if out_of is not None and float(out_of) > 0:
            value = value / float(out_of) * scale
        return value if 0 <= value <= scale else None
    bare = _BARE.match(text.strip())
    if bare:
        value = float(bare.group(1))
        return value if 0 <= value <= scale else None
    return None


class Judge:
    """An LLM judge: asks a model to rate a text from 1 to ``scale`` and parses the score.

    The reply is started with ``Score:`` (prefilled where the backend can, asked for in
    words elsewhere), so a compliant judge answers in a few tokens. ``backend`` is the
    judge's model; by default the run's own. ``template`` names the prompt pair
    ``<template>.system`` / ``<template>.user`` (placeholders ``$question``, ``$text``,
    ``$scale``), e.g. ``"judge"`` for whole answers or ``"tree_judge"`` for partial ones.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        scale: int = 10,
        template: str = "judge",
        max_tokens: int = 16,
        temperature: float | None = 0.0,
        prompts: Prompts | Mapping[str, str] | None = None,
        prompt_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if scale < 1:
            raise ConfigurationError(f"a judge's scale must be at least 1, got {scale}")
        check_backend(backend, "a Judge's backend")
        self.backend = backend
        self.scale = scale
        self.template = template
        self.params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        self.prompts = Prompts.of(
            prompts,
            prompt_dir,
            uses=(f"{template}.system", f"{template}.user"),
            owner=f"Judge(template={template!r})",
        )

    def __repr__(self) -> str:
        return f"Judge(backend={self.backend!r}, scale={self.scale}, template={self.template!r})"

    def request(self, question: str, text: str) -> Request:
        values = {"question": question, "text": text.strip(), "scale": self.scale}
        return Request(
            (
                Message.system(self.prompts.render(f"{self.template}.system", **values)),
                Message.user(self.prompts.render(f"{self.template}.user", **values)),
            ),
            self.params,
            prefill="Score:",
        )

    def parse(self, completion: Completion) -> float:
        reply = completion.text
        score = parse_score("Score:" + reply, self.scale)
        if score is None:
            raise ValueError(
                f"the judge's reply holds no score from 0 to {self.scale}: {reply.strip()[:120]!r}"
            )
        return score

    def node(
        self,
        node_id: str,
        source: str,
        *,
        text: TextOf | None = None,
        done: Done | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Call:
        """A call that rates the text of the sample node ``source``."""
        text_of = text or _sample_text(source)

        def request(ctx: NodeContext) -> Request:
            return self.request(ctx.question, text_of(ctx))

        def then(completion: Completion, ctx: NodeContext) -> Any:
            score = self.parse(completion)
            return done(score, ctx) if done is not None else score

        return Call(
            node_id,
            request,
            needs=(source,),
            then=then,
            backend=self.backend,
            meta={"judge": True, **(meta or {})},
        )


def check_score_setting(value: object, what: str) -> None:
    """A score bound (a threshold, a minimum) is a number or None; refused otherwise.

    Checked when the strategy is made: compared with the first score, a string would
    fail the run only after samples were paid for.
    """
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return
    raise ConfigurationError(f"{what} must be a number (a score) or None, got {value!r}")


class _FunctionScorer:
    def __init__(self, fn: ScoreFn) -> None:
        self.fn = fn

    def node(
        self,
        node_id: str,
        source: str,
        *,
        text: TextOf | None = None,
        done: Done | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Step:
        text_of = text or _sample_text(source)
        fn = self.fn

        async def score(ctx: NodeContext) -> Any:
            value = _as_score(await call_maybe_async(fn, text_of(ctx)), fn)
            return done(value, ctx) if done is not None else value

        return Step(node_id, score, needs=(source,), meta=dict(meta or {}))


class _LogprobScorer:
    def node(
        self,
        node_id: str,
        source: str,
        *,
        text: TextOf | None = None,
        done: Done | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Step:
        def score(ctx: NodeContext) -> Any:
            value = ctx[source].mean_logprob
            if value is None:
                raise ValueError(
                    f"{source!r} came back without log-probabilities (or without tokens), "
                    "so it cannot be scored by mean log-probability"
                )
            return done(value, ctx) if done is not None else value

        return Step(node_id, score, needs=(source,), meta=dict(meta or {}))


AnyScorer = Judge | _FunctionScorer | _LogprobScorer
Scorer = ScoreFn | Judge | Literal["judge", "logprob"]
"""What ``scorer=`` accepts: a function of the text, a ``Judge``, ``"judge"`` or ``"logprob"``."""


def resolve_scorer(spec: Any, *, what: str, judge_template: str = "judge") -> AnyScorer:
    """Turn a ``scorer=`` setting into something that makes score nodes."""
    if isinstance(spec, Judge):
        return spec
    if spec == "judge":
        return Judge(template=judge_template)
    if spec == "logprob":
        return _LogprobScorer()
    if callable(spec):
        return _FunctionScorer(spec)
    raise ConfigurationError(
        f"{what} must be a function of the text returning a number, a Judge(...), "
        f"'judge' or 'logprob'; got {spec!r}"
    )


def needs_logprobs(scorer: AnyScorer) -> bool:
    return isinstance(scorer, _LogprobScorer)


def check_logprobs(backend: Backend, what: str) -> None:
    """Refuse, before any call is made, to score by log-probabilities the backend lacks."""
    if not backend.capabilities.logprobs:
        raise ConfigurationError(
            f"{what}='logprob' needs log-probabilities, but the {backend.name} backend "
            f"(model {backend.model!r}) does not return them (capabilities.logprobs is "
            "False); score with a function or a Judge(...) instead"
        )


def _sample_text(source: str) -> TextOf:
    return lambda ctx: ctx[source].text


def _as_score(value: Any, fn: Callable[..., Any]) -> float:
    if isinstance(value, bool | int | float) and not (
        isinstance(value, float) and math.isnan(value)
    ):
        return float(value)
    name = getattr(fn, "__name__", repr(fn))
    raise TypeError(f"the scoring function {name} returned {value!r}; it must return a number")
