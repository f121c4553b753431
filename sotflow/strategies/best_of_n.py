"""Best-of-N: sample N answers at once, score each, answer with the best.

The graph: ``sample1..sampleN`` (all in flight together), ``score1..scoreN`` (each starts
the moment its sample is written: a function, a judge call, or the sample's mean
log-probability), and ``answer``, which settles over every score and picks the highest
(ties go to the lower sample number). With ``threshold`` the first sample whose score
reaches it wins at once: its score node cancels every sample and score still running,
and the answer is picked from what finished.

``answer.details``: ``chosen`` (the sample number), ``scores`` (sample number -> score),
``threshold``, ``stopped_early``, and ``samples`` (each sample's status, score, text and
error, cancelled ones included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..backends.base import check_backend
from ..errors import ConfigurationError, GraphError
from ..graph import Expand, Graph, Node, NodeContext, Outcome, Result, Step
from ..types import Message, SamplingParams
from .base import BuildContext
from .scoring import (
    Scorer,
    check_logprobs,
    check_score_setting,
    needs_logprobs,
    resolve_scorer,
    sample_call,
    sample_request,
    sample_row,
)

if TYPE_CHECKING:
    from ..backends.base import Backend

__all__ = ["BestOfN"]


class BestOfN:
    """Best-of-N sampling with a scorer: a function, a ``Judge``, or ``"logprob"``."""

    name = "best-of-n"

    def __init__(
        self,
        n: int,
        scorer: Scorer,
        *,
        threshold: float | None = None,
        max_tokens: int | None = 512,
        temperature: float | None = 0.8,
        system: str | None = None,
        seed: int | None = None,
        backend: Backend | None = None,
        **params: Any,
    ) -> None:
        if not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"n must be a positive integer, got {n!r}")
        self.n = n
        self.scorer = resolve_scorer(scorer, what="scorer")
        check_score_setting(threshold, "threshold")
        self.threshold = threshold
        self.system = system
        self.seed = seed
        check_backend(backend, "backend")
        self.backend = backend
        self.params = SamplingParams.of(
            type(self).__name__, max_tokens=max_tokens, temperature=temperature, **params
        )
        if needs_logprobs(self.scorer):
            self.params = self.params.replace(logprobs=True)

    def __repr__(self) -> str:
        return f"BestOfN(n={self.n}, scorer={self.scorer!r}, threshold={self.threshold})"

    def build(self, question: str, ctx: BuildContext) -> Graph:
        if needs_logprobs(self.scorer):
            check_logprobs(self.backend or ctx.backend, "scorer")
        head = (Message.system(self.system),) if self.system else ()
        messages = (*head, Message.user(question))
        nodes: list[Node] = []
        for i in range(1, self.n + 1):
            request = sample_request(messages, self.params, seed=self.seed, index=i)
            nodes.append(sample_call(f"sample{i}", request, index=i, backend=self.backend))
            done = self._on_score(i) if self.threshold is not None else None
            nodes.append(self.scorer.node(f"score{i}", f"sample{i}", done=done))
        scores = tuple(f"score{i}" for i in range(1, self.n + 1))
        nodes.append(Step("answer", self._pick, needs=scores, settle=True))
        return Graph(tuple(nodes), output="answer")

    def _on_score(self, index: int) -> Any:
        threshold = self.threshold
        own = f"score{index}"

        def done(score: float, ctx: NodeContext) -> Any:
            if threshold is None or score < threshold:
                return score
            # This sample wins: whatever is still sampling or scoring is wasted work.
            running = [nid for nid in ctx.pending("sample") + ctx.pending("score") if nid != own]
            return Expand(value=score, cancel=running)

        return done

    def _pick(self, ctx: NodeContext) -> Result:
        rows: list[dict[str, Any]] = []
        first_error: BaseException | None = None
        for i in range(1, self.n + 1):
            # A failed sample fails its score node too, with the sample's error.
            score: Outcome = ctx[f"score{i}"]
            row = sample_row(ctx, i, score, "has no score")
            row["score"] = score.value if score.ok else None
            first_error = first_error or score.error
            rows.append(row)
        scored = [r for r in rows if r["score"] is not None]
        if not scored:
            if first_error is not None:
                raise first_error
            raise GraphError("every sample was cancelled before it was scored")
        # max() keeps the first of equal scores: ties go to the lower sample number.
        best = max(scored, key=lambda r: r["score"])
        return Result(
            best["text"],
            details={
                "chosen": best["index"],
                "score": best["score"],
                "scores": {r["index"]: r["score"] for r in scored},
                "threshold": self.threshold,
                "stopped_early": any(r["status"] == "cancelled" for r in rows),
                "samples": rows,
            },
        )
