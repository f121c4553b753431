"""Refine: draft, critique, revise, until the critic is satisfied or the rounds run out.

The graph grows one round at a time: ``draft`` then ``critique0``; each critique that
finds problems adds ``revise<r>`` (which sees the previous text and the critique) and
the critique of that revision, ``critique<r>``. The critic is either the model, asked
with the critique prompt to reply ``DONE`` or to list problems, or a check function
``feedback(text) -> str | None`` (sync or async; ``None`` or an empty string means
"good"). A model critique is not run after the last allowed revision, since nothing
could act on it; a check function is cheap and checks that revision too, so
``details["accepted"]`` says whether it passed.

``answer.details``: ``rounds`` (round number, text, critique, whether the critic was
satisfied), ``accepted`` (``None`` when the last text was not critiqued) and ``stopped``
(``"accepted"`` or ``"max_rounds"``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backends.base import check_backend
from ..errors import ConfigurationError
from ..graph import Call, Expand, Graph, Node, NodeContext, Result, Step
from ..prompts import Prompts
from ..types import Completion, Message, Request, SamplingParams
from .base import BuildContext
from .scoring import call_maybe_async, completion_text

if TYPE_CHECKING:
    from ..backends.base import Backend

__all__ = ["Refine"]

# The templates this uses; an override for any other name is refused as a typo.
_PROMPTS = ("critique.system", "critique.user", "revise.user")

Feedback = Callable[[str], str | Awaitable[str | None] | None]

_DONE_FIRST = re.compile(r"^\W*done\b", re.IGNORECASE)
_DONE_LAST = re.compile(r"^\W*done\W*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Critique:
    text: str | None
    done: bool


def critique_is_done(text: str) -> bool:
    """The critic's verdict: ``DONE`` as its first word, or alone on its last line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return False
    return bool(_DONE_FIRST.match(lines[0]) or _DONE_LAST.match(lines[-1]))


def _text_id(round_: int) -> str:
    return "draft" if round_ == 0 else f"revise{round_}"


class Refine:
    """Self-refinement with the model as critic, or with an external check function."""

    name = "refine"

    def __init__(
        self,
        max_rounds: int = 2,
        feedback: Feedback | None = None,
        *,
        critic_backend: Backend | None = None,
        max_tokens: int | None = 512,
        critique_max_tokens: int = 256,
        temperature: float | None = None,
        system: str | None = None,
        prompts: Prompts | Mapping[str, str] | None = None,
        prompt_dir: str | os.PathLike[str] | None = None,
        **params: Any,
    ) -> None:
        if not isinstance(max_rounds, int) or max_rounds < 0:
            raise ConfigurationError(f"max_rounds must be an integer >= 0, got {max_rounds!r}")
        if feedback is not None and not callable(feedback):
            raise TypeError(f"feedback must be a function of the text, got {feedback!r}")
        self.max_rounds = max_rounds
        self.feedback = feedback
        check_backend(critic_backend, "critic_backend")
        self.critic_backend = critic_backend
        self.system = system
        self.prompts = Prompts.of(prompts, prompt_dir, uses=_PROMPTS, owner="Refine")
        self.params = SamplingParams.of(
            type(self).__name__, max_tokens=max_tokens, temperature=temperature, **params
        )
        self.critique_params = SamplingParams(max_tokens=critique_max_tokens, temperature=0.0)

    def __repr__(self) -> str:
        critic = "model" if self.feedback is None else getattr(self.feedback, "__name__", "fn")
        return f"Refine(max_rounds={self.max_rounds}, critic={critic})"

    def build(self, question: str, ctx: BuildContext) -> Graph:
        head = (Message.system(self.system),) if self.system else ()
        request = Request((*head, Message.user(question)), self.params)
        draft = Call("draft", request, then=completion_text)
        return Graph((draft, *self._after_text(0)), output="answer")

    # -- one round at a time ---------------------------------------------------------------

    def _after_text(self, round_: int) -> list[Node]:
        """What follows the text of ``round_``: its critique, or the answer."""
        if self.feedback is None and round_ == self.max_rounds:
            return [self._answer(round_, critiqued=False)]
        return [self._critique(round_)]

    def _critique(self, round_: int) -> Node:
        source = _text_id(round_)
        node_id = f"critique{round_}"
        if self.feedback is not None:
            check = self.feedback

            async def run_check(ctx: NodeContext) -> Expand:
                verdict = await call_maybe_async(check, ctx[source])
                if verdict is not None and not isinstance(verdict, str):
                    raise TypeError(
                        f"feedback must return a string or None, got {type(verdict).__name__}"
                    )
                text = verdict.strip() if verdict else None
                return self._next(round_, _Critique(text, done=not text))

            return Step(node_id, run_check, needs=(source,))

        def request(ctx: NodeContext) -> Request:
            values = {"question": ctx.question, "answer": ctx[source].strip()}
            return Request(
                (
                    Message.system(self.prompts.render("critique.system", **values)),
                    Message.user(self.prompts.render("critique.user", **values)),
                ),
                self.critique_params,
            )

        def then(completion: Completion, ctx: NodeContext) -> Expand:
            text = completion.text.strip()
            return self._next(round_, _Critique(text, done=critique_is_done(text)))

        return Call(node_id, request, needs=(source,), then=then, backend=self.critic_backend)

    def _next(self, round_: int, critique: _Critique) -> Expand:
        if critique.done or round_ == self.max_rounds:
            return Expand(value=critique, add=[self._answer(round_, critiqued=True)])
        nxt = round_ + 1
        source, critique_id = _text_id(round_), f"critique{round_}"
        head = (Message.system(self.system),) if self.system else ()

        def request(ctx: NodeContext) -> Request:
            user = self.prompts.render(
                "revise.user",
                question=ctx.question,
                answer=ctx[source].strip(),
                feedback=ctx[critique_id].text,
            )
            return Request((*head, Message.user(user)), self.params)

        revise = Call(_text_id(nxt), request, needs=(source, critique_id), then=completion_text)
        return Expand(value=critique, add=[revise, *self._after_text(nxt)])

    def _answer(self, last: int, *, critiqued: bool) -> Step:
        needs = [_text_id(r) for r in range(last + 1)]
        needs += [f"critique{r}" for r in range(last + (1 if critiqued else 0))]

        def answer(ctx: NodeContext) -> Result:
            rounds: list[dict[str, Any]] = []
            for r in range(last + 1):
                critique: _Critique | None = ctx.inputs.get(f"critique{r}")
                rounds.append(
                    {
                        "round": r,
                        "text": ctx[_text_id(r)],
                        "critique": critique.text if critique else None,
                        "done": critique.done if critique else None,
                    }
                )
            accepted = rounds[-1]["done"]
            return Result(
                rounds[-1]["text"],
                details={
                    "rounds": rounds,
                    "accepted": accepted,
                    "stopped": "accepted" if accepted else "max_rounds",
                },
            )

        return Step("answer", answer, needs=tuple(needs))
