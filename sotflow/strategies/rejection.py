"""Rejection sampling: sample until a verifier accepts, at most ``max_samples`` times.

Samples go out ``batch`` at a time (``sample<i>``), each checked by ``verify<i>`` the
moment it is written. The first accepted sample wins at once: the rest of its batch is
cancelled. A batch with no accepted sample ends in ``batch<b>``, which adds the next
batch, until ``max_samples`` have been tried; then the run fails with ``NoAnswerError``
whose ``details`` keep every sample and verdict. A spent token budget, or a batch in
which no sample could even be sampled and checked, ends the search with that error.

The verifier is a function of the text (sync or async): its truth decides, or, with
``min_score``, its number must reach ``min_score``. It may also be a ``Judge`` (or
``"judge"``): the judge's score must reach ``min_score`` (default: 80% of its scale).

``answer.details``: ``accepted`` (the winning sample's number), ``tried`` (samples
started), ``batches`` and ``samples`` (status, verdict, score, text of each).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backends.base import check_backend
from ..errors import BudgetExceededError, ConfigurationError, NoAnswerError
from ..graph import Expand, Graph, Node, NodeContext, Outcome, Result, Step
from ..types import Message, SamplingParams
from .base import BuildContext
from .scoring import (
    Judge,
    call_maybe_async,
    check_score_setting,
    resolve_scorer,
    sample_call,
    sample_request,
    sample_row,
)

if TYPE_CHECKING:
    from ..backends.base import Backend

__all__ = ["RejectionSampling"]

Verifier = Callable[[str], Any | Awaitable[Any]] | Judge | str


@dataclass(frozen=True, slots=True)
class _Verdict:
    accepted: bool
    score: float | None


class RejectionSampling:
    """Sample, verify, and stop at the first accepted answer (bounded)."""

    name = "rejection"

    def __init__(
        self,
        verifier: Verifier,
        max_samples: int = 8,
        *,
        batch: int = 1,
        min_score: float | None = None,
        max_tokens: int | None = 512,
        temperature: float | None = 0.8,
        system: str | None = None,
        seed: int | None = None,
        backend: Backend | None = None,
        **params: Any,
    ) -> None:
        for name, value in (("max_samples", max_samples), ("batch", batch)):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        check_score_setting(min_score, "min_score")
        if isinstance(verifier, Judge) or verifier == "judge":
            self.judge: Judge | None = resolve_scorer(verifier, what="verifier")  # type: ignore[assignment]
            assert self.judge is not None
            self.min_score = 0.8 * self.judge.scale if min_score is None else min_score
            self.check: Callable[[str], Any] | None = None
        elif callable(verifier):
            self.judge, self.check, self.min_score = None, verifier, min_score
        else:
            raise ConfigurationError(
                "verifier must be a function of the text, a Judge(...) or 'judge'; "
                f"got {verifier!r}"
            )
        self.max_samples = max_samples
        self.batch = min(batch, max_samples)
        self.system = system
        self.seed = seed
        check_backend(backend, "backend")
        self.backend = backend
        self.params = SamplingParams.of(
            type(self).__name__, max_tokens=max_tokens, temperature=temperature, **params
        )

    def __repr__(self) -> str:
        verifier = self.judge if self.judge is not None else getattr(self.check, "__name__", "fn")
        return (
            f"RejectionSampling(verifier={verifier}, max_samples={self.max_samples}, "
            f"batch={self.batch})"
        )

    def build(self, question: str, ctx: BuildContext) -> Graph:
        return Graph(tuple(self._batch(question, 1)), output="answer")

    # -- batches -----------------------------------------------------------------------

    def _batch(self, question: str, number: int) -> list[Node]:
        first = (number - 1) * self.batch + 1
        last = min(number * self.batch, self.max_samples)
        head = (Message.system(self.system),) if self.system else ()
        messages = (*head, Message.user(question))
        nodes: list[Node] = []
        for i in range(first, last + 1):
            request = sample_request(messages, self.params, seed=self.seed, index=i)
            nodes.append(sample_call(f"sample{i}", request, index=i, backend=self.backend))
            nodes.append(self._verify(i))
        verdicts = tuple(f"verify{i}" for i in range(first, last + 1))
        gate = self._gate(question, number, first, last)
        nodes.append(Step(f"batch{number}", gate, needs=verdicts, settle=True))
        return nodes

    def _verify(self, index: int) -> Node:
        own = f"verify{index}"

        def decide(value: Any, ctx: NodeContext) -> _Verdict | Expand:
            if self.min_score is None:
                verdict = _Verdict(bool(value), None)
            else:
                score = float(value)
                if math.isnan(score):
                    raise ValueError("the verifier returned NaN")
                verdict = _Verdict(score >= self.min_score, score)
            if not verdict.accepted:
                return verdict
            # Accepted: the rest of this batch is no longer needed.
            running = [n for n in ctx.pending("sample") + ctx.pending("verify") if n != own]
            return Expand(value=verdict, cancel=running)

        if self.judge is not None:
            return self.judge.node(own, f"sample{index}", done=decide)
        check = self.check
        assert check is not None

        async def run_check(ctx: NodeContext) -> Any:
            return decide(await call_maybe_async(check, ctx[f"sample{index}"].text), ctx)

        return Step(own, run_check, needs=(f"sample{index}",))

    def _gate(
        self, question: str, number: int, first: int, last: int
    ) -> Callable[[NodeContext], Any]:
        def gate(ctx: NodeContext) -> Expand:
            rows = self._rows(ctx, first, last)
            accepted = [r for r in rows if r.get("accepted")]
            if accepted:
                winner = accepted[0]
                details = {"accepted": winner["index"], "tried": last, "batches": number,
                           "samples": rows}  # fmt: skip
                result = Result(winner["text"], details=details)
                return Expand(value=True, add=[Step("answer", lambda ctx: result)])
            errors = [o.error for o in ctx.inputs.values() if o.error is not None]
            spent = next((e for e in errors if isinstance(e, BudgetExceededError)), None)
            if spent is not None or (errors and len(errors) == last - first + 1):
                # More samples would fail the same way: out of budget, or nothing in a
                # whole batch could even be sampled and checked (after the engine's retries).
                raise spent or errors[0]
            if last < self.max_samples:
                return Expand(value=False, add=self._batch(question, number + 1))
            return Expand(value=False, add=[Step("answer", self._exhausted(rows))])

        return gate

    def _rows(self, ctx: NodeContext, first: int, last: int) -> list[dict[str, Any]]:
        """Every sample so far; problems are warned about once, by their own batch."""
        rows: list[dict[str, Any]] = []
        for i in range(1, last + 1):
            verdict = ctx.outcome(f"verify{i}") or Outcome("cancelled")
            row = sample_row(ctx, i, verdict, "could not be verified", warn=i >= first)
            if verdict.ok:
                row.update(accepted=verdict.value.accepted, score=verdict.value.score)
            rows.append(row)
        return rows

    def _exhausted(self, rows: list[dict[str, Any]]) -> Callable[[NodeContext], Result]:
        def fail(ctx: NodeContext) -> Result:
            errors = sum(1 for r in rows if "error" in r)
            note = f" ({errors} could not be sampled or verified)" if errors else ""
            raise NoAnswerError(
                f"the verifier accepted none of the {len(rows)} samples{note}; raise "
                "max_samples or loosen the verifier (this error's .details['samples'] "
                "holds every sample and verdict)",
                details={"samples": rows},
            )

        return fail
