"""Chain: each step's output feeds the next step's prompt.

A step is either a prompt template, answered by one model call, or a whole strategy
embedded in the run (``Embed``: same limits, budget, events and trace; its nodes are
namespaced ``step<i>/...``). Templates use ``$question`` (the run's question),
``$previous`` (the previous step's output; for the first step, the question) and
``$step1``, ``$step2``, ... (the output of any earlier step). A strategy step answers
``$question`` when it comes first; later, it answers the ``chain_next`` prompt (the
question plus the previous output, to build on), or a template of your own given as a
pair ``(strategy, template)``:

    Chain(SkeletonOfThought(), Refine(1))
    Chain("List the facts in: $question", "Answer $question using only:\\n$previous")
    Chain(Direct(), (BestOfN(4, Judge()), "Make this clearer:\\n$previous"))

The last step streams as the answer (a call's tokens, or an embedded strategy's own
answer parts where it has them, e.g. SoT's points). ``answer.details["steps"]`` holds
each step's kind, text and, for strategies, their details.
"""

from __future__ import annotations

import os
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backends.base import check_backend
from ..errors import ConfigurationError
from ..graph import Call, Embed, Graph, Node, NodeContext, Part, Result, Step
from ..prompts import Prompts
from ..types import Message, Request, SamplingParams
from .base import BuildContext, Strategy
from .scoring import completion_text

if TYPE_CHECKING:
    from ..backends.base import Backend

__all__ = ["Chain"]

# The templates this uses; an override for any other name is refused as a typo.
_PROMPTS = ("chain_next",)

ChainStep = str | Strategy | tuple[Strategy, str]


@dataclass(frozen=True, slots=True)
class _Link:
    template: string.Template
    strategy: Strategy | None


def _is_strategy(value: Any) -> bool:
    return callable(getattr(value, "build", None)) and hasattr(value, "name")


class Chain:
    """Steps run one after another, each on the output of the one before."""

    name = "chain"

    def __init__(
        self,
        *steps: ChainStep,
        max_tokens: int | None = 512,
        temperature: float | None = None,
        system: str | None = None,
        backend: Backend | None = None,
        prompts: Prompts | Mapping[str, str] | None = None,
        prompt_dir: str | os.PathLike[str] | None = None,
        **params: Any,
    ) -> None:
        if not steps:
            raise ConfigurationError("a Chain needs at least one step")
        self.prompts = Prompts.of(prompts, prompt_dir, uses=_PROMPTS, owner="Chain")
        self.links = tuple(self._link(i, step) for i, step in enumerate(steps, start=1))
        self.system = system
        check_backend(backend, "backend")
        self.backend = backend
        self.params = SamplingParams.of(
            type(self).__name__, max_tokens=max_tokens, temperature=temperature, **params
        )

    def _link(self, index: int, step: ChainStep) -> _Link:
        if isinstance(step, str):
            template, strategy = step, None
        elif isinstance(step, tuple) and len(step) == 2 and _is_strategy(step[0]):
            strategy, template = step
        elif _is_strategy(step):
            strategy = step  # type: ignore[assignment]
            template = "$question" if index == 1 else self.prompts.text("chain_next")
        else:
            raise ConfigurationError(
                f"chain step {index} must be a prompt template, a strategy or a "
                f"(strategy, template) pair; got {step!r}"
            )
        if not isinstance(template, str):
            raise ConfigurationError(f"chain step {index}'s template must be a string")
        parsed = string.Template(template)
        if not parsed.is_valid():
            raise ConfigurationError(f"chain step {index}'s template is malformed: {template!r}")
        known = {"question", "previous", *(f"step{i}" for i in range(1, index))}
        unknown = sorted(set(parsed.get_identifiers()) - known)
        if unknown:
            raise ConfigurationError(
                f"chain step {index}'s template uses ${unknown[0]}, which is not available "
                f"there; available: {', '.join('$' + k for k in sorted(known))}"
            )
        return _Link(parsed, strategy)

    def __repr__(self) -> str:
        kinds = [link.strategy.name if link.strategy else "prompt" for link in self.links]
        return f"Chain({', '.join(kinds)})"

    def build(self, question: str, ctx: BuildContext) -> Graph:
        head = (Message.system(self.system),) if self.system else ()
        last = len(self.links)
        nodes: list[Node] = []
        for i, link in enumerate(self.links, start=1):
            node_id = f"step{i}"
            needs = (f"step{i - 1}",) if i > 1 else ()
            part = Part((0,)) if i == last else None
            prompt = _renderer(link, i)
            if link.strategy is not None:
                nodes.append(Embed(node_id, link.strategy, prompt, needs=needs, part=part))
                continue

            def request(ctx: NodeContext, prompt: Callable[[NodeContext], str] = prompt) -> Request:
                return Request((*head, Message.user(prompt(ctx))), self.params)

            call = Call(
                node_id, request, needs=needs, then=completion_text, backend=self.backend, part=part
            )
            nodes.append(call)
        steps = tuple(f"step{i}" for i in range(1, last + 1))
        nodes.append(Step("answer", self._assemble, needs=steps))
        return Graph(tuple(nodes), output="answer")

    def _assemble(self, ctx: NodeContext) -> Result:
        records: list[dict[str, Any]] = []
        for i, link in enumerate(self.links, start=1):
            value = ctx[f"step{i}"]
            record: dict[str, Any] = {
                "step": i,
                "kind": link.strategy.name if link.strategy else "prompt",
                "text": _output(value),
            }
            if isinstance(value, Result):
                record["details"] = value.details
            records.append(record)
        final = ctx[f"step{len(self.links)}"]
        if isinstance(final, Result):
            return Result(
                final.text,
                points=final.points,
                skeleton=final.skeleton,
                details={"steps": records},
            )
        return Result(str(final), details={"steps": records})


def _renderer(link: _Link, index: int) -> Callable[[NodeContext], str]:
    template = link.template

    def render(ctx: NodeContext) -> str:
        # Steps run one after another, so every earlier step has finished by now.
        outputs = {f"step{i}": _output(ctx.outcome(f"step{i}").value) for i in range(1, index)}  # type: ignore[union-attr]
        previous = outputs.get(f"step{index - 1}", ctx.question)
        return template.substitute(question=ctx.question, previous=previous, **outputs)

    return render


def _output(value: Any) -> str:
    return value.text if isinstance(value, Result) else str(value)
