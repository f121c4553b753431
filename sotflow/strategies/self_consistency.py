"""Self-consistency: sample N reasoned answers at once and let their final answers vote.

The graph: ``sample1..sampleN`` (all in flight together), one ``vote<i>`` per sample that
extracts and normalises its final answer and weighs it (weight 1, the sample's
probability ``exp(mean log-probability)``, a function of the text, or a judge's score),
and ``answer``, which settles over every vote and counts them.

Early stopping: each vote, once cast, compares the leader with the runner-up. When the
leader is ahead by more than the votes still out could bring (``still out x max_weight``),
no outcome of the remaining samples can change the winner, so they are cancelled. With
a weight function, early stopping needs ``max_weight`` (the most one vote can weigh).

Ties (only possible when every vote is in) go to the answer first given by the
lowest-numbered sample. Samples whose final answer cannot be extracted are recorded in
``details["unextracted"]`` and not counted; if no sample has one, the run fails with
``NoAnswerError``. The answer's text is the full text of the lowest-numbered sample that
voted for the winner.

``answer.details``: ``answer`` (the normalised winning answer), ``votes`` (answer ->
votes, or summed weights when weighted, best first), ``counts`` (answer -> samples),
``chosen``, ``tie``, ``unextracted``, ``stopped_early``, ``cancelled`` and ``samples``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backends.base import check_backend
from ..errors import ConfigurationError, GraphError, NoAnswerError
from ..graph import Expand, Graph, Node, NodeContext, Outcome, Result, Step
from ..prompts import Prompts
from ..types import Message, SamplingParams
from .answers import Extract, make_extractor, normalize_answer
from .base import BuildContext
from .scoring import (
    Judge,
    Sample,
    Scorer,
    check_logprobs,
    resolve_scorer,
    sample_call,
    sample_request,
    sample_row,
)

if TYPE_CHECKING:
    from ..backends.base import Backend

__all__ = ["SelfConsistency"]

# The templates this uses; an override for any other name is refused as a typo.
_PROMPTS = ("self_consistency.user",)


@dataclass(frozen=True, slots=True)
class _Ballot:
    index: int
    answer: str | None
    key: str | None
    weight: float


@dataclass(frozen=True, slots=True)
class _Standing:
    key: str
    weight: float
    count: int
    first: int


def _standings(ballots: list[_Ballot]) -> list[_Standing]:
    """Answers with their summed weight, best first; ties by the first sample to give it."""
    table: dict[str, list[float]] = {}
    for ballot in sorted(ballots, key=lambda b: b.index):
        if ballot.key is None:
            continue
        entry = table.setdefault(ballot.key, [0.0, 0, ballot.index])
        entry[0] += ballot.weight
        entry[1] += 1
    standings = [_Standing(k, w, int(c), int(f)) for k, (w, c, f) in table.items()]
    standings.sort(key=lambda s: (-s.weight, s.first))
    return standings


class SelfConsistency:
    """Majority (or weighted) vote over N sampled answers, with early stopping."""

    name = "self-consistency"

    def __init__(
        self,
        n: int = 8,
        extract: Extract = "auto",
        *,
        weights: Scorer | None = None,
        max_weight: float | None = None,
        early_stop: bool = True,
        max_tokens: int | None = 512,
        temperature: float | None = 0.8,
        system: str | None = None,
        seed: int | None = None,
        backend: Backend | None = None,
        prompts: Prompts | Mapping[str, str] | None = None,
        prompt_dir: str | os.PathLike[str] | None = None,
        **params: Any,
    ) -> None:
        if not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"n must be a positive integer, got {n!r}")
        if max_weight is not None and max_weight <= 0:
            raise ConfigurationError(f"max_weight must be positive, got {max_weight!r}")
        self.n = n
        self.extract = make_extractor(extract)
        self.extract_spec = extract
        self.early_stop = early_stop
        self.system = system
        self.seed = seed
        check_backend(backend, "backend")
        self.backend = backend
        self.prompts = Prompts.of(prompts, prompt_dir, uses=_PROMPTS, owner="SelfConsistency")
        self.logprob_weights = weights == "logprob"
        self.weigher = None if weights is None else resolve_scorer(weights, what="weights")
        if weights is None or self.logprob_weights:
            # One vote, or a probability: either way no vote weighs more than 1.
            self.max_weight: float | None = 1.0 if max_weight is None else max_weight
        elif isinstance(self.weigher, Judge):
            self.max_weight = float(self.weigher.scale) if max_weight is None else max_weight
        else:
            self.max_weight = max_weight
        self.params = SamplingParams.of(
            type(self).__name__, max_tokens=max_tokens, temperature=temperature, **params
        )
        if self.logprob_weights:
            self.params = self.params.replace(logprobs=True)

    def __repr__(self) -> str:
        return (
            f"SelfConsistency(n={self.n}, extract={self.extract_spec!r}, "
            f"weights={self.weigher!r}, early_stop={self.early_stop})"
        )

    def build(self, question: str, ctx: BuildContext) -> Graph:
        if self.logprob_weights:
            check_logprobs(self.backend or ctx.backend, "weights")
        head = (Message.system(self.system),) if self.system else ()
        user = Message.user(self.prompts.render("self_consistency.user", question=question))
        nodes: list[Node] = []
        for i in range(1, self.n + 1):
            request = sample_request((*head, user), self.params, seed=self.seed, index=i)
            nodes.append(sample_call(f"sample{i}", request, index=i, backend=self.backend))
            nodes.append(self._vote_node(i))
        votes = tuple(f"vote{i}" for i in range(1, self.n + 1))
        nodes.append(Step("answer", self._count, needs=votes, settle=True))
        return Graph(tuple(nodes), output="answer")

    # -- voting ------------------------------------------------------------------------

    def _vote_node(self, index: int) -> Node:
        source = f"sample{index}"
        if self.weigher is None:
            return Step(f"vote{index}", lambda ctx: self._cast(index, 1.0, ctx), needs=(source,))

        def weighed(score: float, ctx: NodeContext) -> Any:
            weight = math.exp(score) if self.logprob_weights else score
            if weight < 0:
                raise ValueError(f"a vote's weight must be >= 0, got {weight!r}")
            return self._cast(index, weight, ctx)

        return self.weigher.node(f"vote{index}", source, done=weighed)

    def _cast(self, index: int, weight: float, ctx: NodeContext) -> _Ballot | Expand:
        sample: Sample = ctx[f"sample{index}"]
        answer = self.extract(sample.text)
        key = normalize_answer(answer) if answer is not None else None
        ballot = _Ballot(index, answer, key or None, weight)
        if not self.early_stop or self.max_weight is None:
            return ballot
        own = f"vote{index}"
        out = [nid for nid in ctx.pending("vote") if nid != own]
        cast = [o.value for o in ctx.outcomes("vote").values() if o.ok]
        standings = _standings([*cast, ballot])
        if not out or not standings:
            return ballot
        lead = standings[0].weight
        runner_up = standings[1].weight if len(standings) > 1 else 0.0
        if lead - runner_up <= len(out) * self.max_weight:
            return ballot
        # The votes still out cannot change the winner: stop sampling for them.
        samples = [f"sample{nid.removeprefix('vote')}" for nid in out]
        return Expand(value=ballot, cancel=[*samples, *out])

    def _count(self, ctx: NodeContext) -> Result:
        ballots: list[_Ballot] = []
        rows: list[dict[str, Any]] = []
        first_error: BaseException | None = None
        for i in range(1, self.n + 1):
            vote: Outcome = ctx[f"vote{i}"]
            row = sample_row(ctx, i, vote, "did not vote")
            if vote.ok:
                ballot: _Ballot = vote.value
                ballots.append(ballot)
                row.update(answer=ballot.answer, normalized=ballot.key, weight=ballot.weight)
            first_error = first_error or vote.error
            rows.append(row)
        unextracted = [b.index for b in ballots if b.key is None]
        standings = _standings(ballots)
        if not standings:
            if not ballots and first_error is not None:
                raise first_error
            if not ballots:
                raise GraphError("every sample was cancelled before it voted")
            raise NoAnswerError(
                f"none of the {len(ballots)} samples had a final answer that could be "
                f"extracted (extract={self.extract_spec!r}); ask for an explicit final "
                "answer line in the prompt or pass another extract=",
                details={"samples": rows},
            )
        winner = standings[0]
        weighted = self.weigher is not None
        cancelled = [r["index"] for r in rows if r["status"] == "cancelled"]
        return Result(
            rows[winner.first - 1]["text"],
            details={
                "answer": winner.key,
                "votes": {s.key: (s.weight if weighted else s.count) for s in standings},
                "counts": {s.key: s.count for s in standings},
                "chosen": winner.first,
                "tie": len(standings) > 1 and standings[1].weight == winner.weight,
                "weighted": weighted,
                "unextracted": unextracted,
                "stopped_early": bool(cancelled),
                "cancelled": cancelled,
                "samples": rows,
            },
        )
