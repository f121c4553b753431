"""Tree search over reasoning steps: tree-of-thoughts as a step-level beam search.

Level by level: for every kept path, ``proposals`` model calls each propose one next
step; every proposal is scored as soon as it is written (a judge rating the path so far,
or a function of its text); when a level's scores are in, ``L<level>.select`` keeps the
best ``breadth`` paths and adds the next level. Node ids name the level, so the trace
shows the tree: ``L2.4`` is the fifth proposal of level 2, ``L2.4.score`` its score,
``L2.select`` the level's selection (``meta`` holds each proposal's level and parent).

A step is terminal when ``terminal(step)`` is true; by default, when it holds a line
``Answer: ...`` (the proposal prompt asks for one once the steps suffice). The search
stops as soon as the best kept path of a level is terminal. Kept terminal paths that
are not the best are set aside as finished and not expanded; the others go on. At
``depth`` (or when nothing is left to expand) the answer is the best finished path, or,
if no path finished, the best path of the last level (``details["terminal"]`` is then
false and a warning says so). Identical steps proposed for the same parent are kept once.

``answer.text`` is the chosen path, one step per line. ``answer.details``: ``tree``
(every proposal: id, level, parent, step, score, status, kept, terminal), ``path`` (ids
from the root), ``terminal``, ``answer`` (its ``Answer:`` line, if any), ``levels``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..backends.base import check_backend
from ..errors import ConfigurationError, GraphError
from ..graph import Expand, Graph, Node, NodeContext, Outcome, Result, Step
from ..prompts import Prompts
from ..types import Message, Request, SamplingParams
from .answers import extract_answer_line, normalize_answer
from .base import BuildContext
from .scoring import (
    Sample,
    Scorer,
    check_logprobs,
    needs_logprobs,
    resolve_scorer,
    sample_call,
)

if TYPE_CHECKING:
    from ..backends.base import Backend

__all__ = ["TreeSearch"]

# The templates this uses; an override for any other name is refused as a typo.
_PROMPTS = ("tree_propose.system", "tree_propose.user")


@dataclass(frozen=True, slots=True)
class _Path:
    """A node of the tree: one proposed step and the steps that lead to it."""

    id: str
    level: int
    parent: str | None
    steps: tuple[str, ...]
    """The steps from the root, this one's last once it is written."""
    written: bool = False
    score: float | None = None
    status: str = "ok"
    kept: bool = False
    terminal: bool = False

    @property
    def text(self) -> str:
        return "\n".join(self.steps)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "level": self.level,
            "parent": self.parent,
            "step": self.steps[-1] if self.written else None,
            "score": self.score,
            "status": self.status,
            "kept": self.kept,
            "terminal": self.terminal,
        }


_ROOT = _Path("root", 0, None, ())


def _has_answer_line(step: str) -> bool:
    return extract_answer_line(step) is not None


class TreeSearch:
    """Propose ``proposals`` next steps per kept path, score them, keep ``breadth``."""

    name = "tree-search"

    def __init__(
        self,
        breadth: int = 2,
        depth: int = 3,
        *,
        proposals: int = 3,
        scorer: Scorer = "judge",
        terminal: Callable[[str], bool] | None = None,
        max_tokens: int | None = 160,
        temperature: float | None = 0.7,
        system: str | None = None,
        backend: Backend | None = None,
        prompts: Prompts | Mapping[str, str] | None = None,
        prompt_dir: str | os.PathLike[str] | None = None,
        **params: Any,
    ) -> None:
        for name, value in (("breadth", breadth), ("depth", depth), ("proposals", proposals)):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        self.breadth = breadth
        self.depth = depth
        self.proposals = proposals
        self.scorer = resolve_scorer(scorer, what="scorer", judge_template="tree_judge")
        self.terminal = terminal or _has_answer_line
        self.system = system
        check_backend(backend, "backend")
        self.backend = backend
        self.prompts = Prompts.of(
            prompts,
            prompt_dir,
            uses=_PROMPTS,
            owner="TreeSearch (its judge takes its own: Judge(prompts=...))",
        )
        self.params = SamplingParams.of(
            type(self).__name__, max_tokens=max_tokens, temperature=temperature, **params
        )
        if needs_logprobs(self.scorer):
            self.params = self.params.replace(logprobs=True)

    def __repr__(self) -> str:
        return (
            f"TreeSearch(breadth={self.breadth}, depth={self.depth}, "
            f"proposals={self.proposals}, scorer={self.scorer!r})"
        )

    def build(self, question: str, ctx: BuildContext) -> Graph:
        if needs_logprobs(self.scorer):
            check_logprobs(self.backend or ctx.backend, "scorer")
        return Graph(tuple(self._level(1, [_ROOT], (), ())), output="answer")

    # -- one level ---------------------------------------------------------------------

    def _level(
        self,
        level: int,
        parents: list[_Path],
        explored: tuple[_Path, ...],
        finished: tuple[_Path, ...],
    ) -> list[Node]:
        """The proposals and scores for every parent, and the level's selection."""
        nodes: list[Node] = []
        children: list[_Path] = []
        system = self.prompts.render("tree_propose.system")
        for parent in parents:
            for _ in range(self.proposals):
                child = _Path(f"L{level}.{len(children)}", level, parent.id, parent.steps)
                children.append(child)
                steps = "\n".join(parent.steps) or "(none yet)"

                def request(ctx: NodeContext, steps: str = steps) -> Request:
                    user = self.prompts.render("tree_propose.user", question=ctx.question,
                                               steps=steps)  # fmt: skip
                    return Request((Message.system(system), Message.user(user)), self.params)

                meta = {"level": level, "parent": parent.id}
                nodes.append(
                    sample_call(child.id, request, index=len(children), backend=self.backend,
                                meta=meta)
                )  # fmt: skip
                nodes.append(
                    self.scorer.node(
                        f"{child.id}.score",
                        child.id,
                        text=lambda ctx, c=child: "\n".join((*c.steps, _step(ctx[c.id]))),
                        meta=meta,
                    )
                )
        select = self._select(level, children, explored, finished)
        needs = tuple(f"{c.id}.score" for c in children)
        nodes.append(Step(f"L{level}.select", select, needs=needs, settle=True))
        return nodes

    def _select(
        self,
        level: int,
        children: list[_Path],
        explored: tuple[_Path, ...],
        finished: tuple[_Path, ...],
    ) -> Callable[[NodeContext], Expand]:
        def select(ctx: NodeContext) -> Expand:
            scored: list[_Path] = []
            failed: list[_Path] = []
            first_error: BaseException | None = None
            for child in children:
                proposal = ctx.outcome(child.id) or Outcome("cancelled")
                score: Outcome = ctx[f"{child.id}.score"]
                if proposal.ok:
                    step = _step(proposal.value)
                    child = replace(child, steps=(*child.steps, step), written=True,
                                    terminal=bool(self.terminal(step)))  # fmt: skip
                if score.ok:
                    scored.append(replace(child, score=score.value))
                else:
                    failed.append(replace(child, status=score.status))
                    if score.error is not None:
                        first_error = first_error or score.error
                        ctx.warn(f"{child.id} dropped: {type(score.error).__name__}: {score.error}")
            ranked = _dedupe(sorted(scored, key=lambda p: -(p.score or 0.0)))
            kept_ids = {p.id for p in ranked[: self.breadth]}
            level_paths = [replace(p, kept=p.id in kept_ids) for p in scored] + failed
            tree = (*explored, *sorted(level_paths, key=lambda p: _order(p.id)))
            kept = [replace(p, kept=True) for p in ranked[: self.breadth]]
            if kept and kept[0].terminal:
                return Expand(value=kept[0].id, add=[self._answer(kept[0], tree, level)])
            done = (*finished, *(p for p in kept if p.terminal))
            going = [p for p in kept if not p.terminal]
            if level < self.depth and going:
                return Expand(
                    value=[p.id for p in kept], add=self._level(level + 1, going, tree, done)
                )
            candidates = list(done) or going
            if not candidates:
                if first_error is not None:
                    raise first_error
                raise GraphError(f"tree search level {level} produced no scored step")
            best = min(candidates, key=lambda p: (-(p.score or 0.0), p.level, _order(p.id)))
            warnings = []
            if not best.terminal:
                warnings.append(
                    f"no path reached a final answer within depth {self.depth}; "
                    "answered with the best partial path"
                )
            return Expand(
                value=[p.id for p in kept],
                add=[self._answer(best, tree, level)],
                warnings=warnings,
            )

        return select

    def _answer(self, best: _Path, tree: tuple[_Path, ...], levels: int) -> Step:
        by_id = {p.id: p for p in tree}
        path: list[str] = []
        node: _Path | None = best
        while node is not None and node.id != "root":
            path.append(node.id)
            node = by_id.get(node.parent) if node.parent else None
        answer = extract_answer_line(best.steps[-1]) if best.steps else None

        def result(ctx: NodeContext) -> Result:
            return Result(
                best.text,
                details={
                    "tree": [p.record() for p in tree],
                    "path": path[::-1],
                    "score": best.score,
                    "terminal": best.terminal,
                    "answer": answer.strip() if answer else None,
                    "levels": levels,
                },
            )

        return Step("answer", result)


def _step(sample: Sample) -> str:
    return sample.text.strip()


def _order(node_id: str) -> tuple[int, int]:
    level, index = node_id[1:].split(".")[:2]
    return int(level), int(index)


def _dedupe(ranked: list[_Path]) -> list[_Path]:
    """Keep one of each step proposed twice for the same parent (the first in rank)."""
    seen: set[tuple[str | None, str]] = set()
    kept: list[_Path] = []
    for path in ranked:
        key = (path.parent, normalize_answer(path.steps[-1]))
        if key not in seen:
            seen.add(key)
            kept.append(path)
    return kept
