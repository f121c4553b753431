"""Skeleton-of-Thought: outline first, then every point expanded at once.

The graph: one ``skeleton`` call; when it returns, its ``then`` parses the outline and
adds one call per point plus an ``answer`` step that assembles them in order. Every
point call is an answer part, so a streamed run releases point 1 live and later points
as soon as everything before them is out. Latency is the skeleton plus the slowest
point, instead of the whole answer token by token.

With ``dependencies=True`` (strategy ``"sot-dag"``) the skeleton may mark which points
need which; a point then starts as soon as the points it needs are written, and sees
their text. A skeleton with fewer than two points falls back to a direct answer.

When the answer counts as failed: when the skeleton call failed, or when more than half
of the points failed (after their retries). Otherwise a failed point is left out, and
the answer is written with the points that exist and a warning naming the missing one.

Before the skeleton is sent, the server's profile is asked for (measured once per
backend, see ``ServerProfile``): where the server runs one call at a time the points
would be written one after another, and the run's warnings say that SoT will be slower
than a direct answer there (``Routed`` answers directly on such a server).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..backends.base import SERIAL_GAIN, ServerProfile, check_backend
from ..errors import BackendError, ConfigurationError, NoAnswerError
from ..graph import Call, Expand, Graph, NodeContext, Outcome, Part, Result, Step, part_text
from ..prompts import Prompts
from ..types import Completion, Message, Point, Request, SamplingParams
from .base import BuildContext
from .outline import Outline, OutlinePoint, parse_outline

if TYPE_CHECKING:
    from ..backends.base import Backend

__all__ = ["SkeletonOfThought", "server_profile", "slow_server_warning", "why_sot_is_slow"]

# A point reads "i. Title - text": the text follows the dash after one space, whatever
# whitespace (a stray line break) the model put first, and a point that came back empty
# reads "i. Title", without a dangling dash.
_LEAD = " - "

# The templates this uses; an override for any other name is refused as a typo.
_PROMPTS = (
    "skeleton.system",
    "skeleton.user",
    "skeleton_dag.user",
    "point.system",
    "point.user",
    "point_written",
)


class SkeletonOfThought:
    """Skeleton-of-Thought (Ning et al., 2023), with an optional dependency-aware mode."""

    def __init__(
        self,
        *,
        max_points: int = 10,
        min_points: int = 3,
        point_max_tokens: int = 128,
        skeleton_max_tokens: int = 200,
        fallback_max_tokens: int = 512,
        temperature: float | None = None,
        expand_backend: Backend | None = None,
        dependencies: bool = False,
        prompts: Prompts | Mapping[str, str] | None = None,
        prompt_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not 2 <= max_points <= 50:
            raise ConfigurationError(f"max_points must be between 2 and 50, got {max_points}")
        if not 1 <= min_points <= max_points:
            raise ConfigurationError(
                f"min_points must be between 1 and max_points, got {min_points}"
            )
        self.name = "sot-dag" if dependencies else "sot"
        self.max_points = max_points
        self.min_points = min_points
        self.dependencies = dependencies
        check_backend(expand_backend, "expand_backend")
        self.expand_backend = expand_backend
        self.prompts = Prompts.of(prompts, prompt_dir, uses=_PROMPTS, owner="SkeletonOfThought")
        self.skeleton_params = SamplingParams(
            max_tokens=skeleton_max_tokens, temperature=temperature
        )
        self.point_params = SamplingParams(max_tokens=point_max_tokens, temperature=temperature)
        self.fallback_params = SamplingParams(
            max_tokens=fallback_max_tokens, temperature=temperature
        )

    def __repr__(self) -> str:
        return (
            f"SkeletonOfThought(max_points={self.max_points}, "
            f"dependencies={self.dependencies}, expand_backend={self.expand_backend!r})"
        )

    # -- the graph ---------------------------------------------------------------------

    def skeleton_request(self, question: str) -> Request:
        """The skeleton call this strategy sends for ``question`` (prompts, prefill)."""
        template = "skeleton_dag.user" if self.dependencies else "skeleton.user"
        user = self.prompts.render(
            template, question=question, min_points=self.min_points, max_points=self.max_points
        )
        return Request(
            (Message.system(self.prompts.render("skeleton.system")), Message.user(user)),
            # Points past max_points are never used; stop before writing them (small
            # models otherwise repeat a last line until max_tokens).
            self.skeleton_params.replace(stop=(f"\n{self.max_points + 1}.",)),
            prefill="1.",
        )

    def build(self, question: str, ctx: BuildContext) -> Graph:
        request = self.skeleton_request(question)
        expand_backend = self.expand_backend

        async def skeleton(ctx: NodeContext) -> Request:
            # Asked first so that the skeleton is sent knowing whether the server
            # continues a prefill; measured once per backend, then cached.
            points_backend = expand_backend or ctx.backend
            profile = await server_profile(points_backend)
            if expand_backend is not None:
                await server_profile(ctx.backend)
            if profile is not None and not profile.sot_pays:
                ctx.warn(slow_server_warning(profile, self.name))
            return request

        return Graph((Call("skeleton", skeleton, then=self._plan),), output="answer")

    def parse(self, text: str) -> tuple[str, Outline]:
        """The skeleton call's text (what followed the ``1.`` prefill) as the whole
        skeleton and its outline, as this strategy reads it."""
        raw = "1." + text
        return raw, parse_outline(raw, max_points=self.max_points, dependencies=self.dependencies)

    def _plan(self, completion: Completion, ctx: NodeContext) -> Expand:
        raw, outline = self.parse(completion.text)
        if len(outline.points) < 2:
            reason = (
                "the skeleton had no points"
                if not outline.points
                else "the skeleton had only one point"
            )
            return Expand(
                value=outline,
                add=[self._fallback(ctx.question, raw, reason, outline)],
                warnings=[*outline.warnings, f"{reason}; answered directly instead"],
            )
        last = len(outline.points)
        nodes: list[Call | Step] = [
            Call(
                f"p{p.index}",
                self._point_request(p, outline),
                needs=("skeleton", *(f"p{n}" for n in p.needs)),
                then=_text,
                backend=self.expand_backend,
                part=Part((p.index,), _heading(p), "" if p.index == last else "\n", _LEAD),
                meta={"title": p.title, "needs": list(p.needs)},
            )
            for p in outline.points
        ]
        point_ids = tuple(f"p{p.index}" for p in outline.points)
        # settle: the answer is assembled from the points that exist, not sunk by one.
        nodes.append(Step("answer", self._assembler(outline, raw), needs=point_ids, settle=True))
        return Expand(value=outline, add=nodes, warnings=outline.warnings)

    def _point_request(self, point: OutlinePoint, outline: Outline) -> Any:
        skeleton = outline.render()
        titles = {p.index: p.title for p in outline.points}
        system = Message.system(self.prompts.render("point.system"))

        def build(ctx: NodeContext) -> Request:
            written = ""
            if point.needs:
                texts = "\n".join(
                    f"{n}. {titles[n]}: {str(ctx[f'p{n}']).strip()}" for n in point.needs
                )
                written = self.prompts.render("point_written", index=point.index, texts=texts)
            user = self.prompts.render(
                "point.user",
                question=ctx.question,
                skeleton=skeleton,
                written=written,
                index=point.index,
                title=point.title,
            )
            # A blank line (a second paragraph) or the next point's number ends this one.
            stop = ("\n\n", f"\n{point.index + 1}.")
            return Request(
                (system, Message.user(user)),
                self.point_params.replace(stop=stop),
                prefill=_prefill(point),
            )

        return build

    def _assembler(self, outline: Outline, raw: str) -> Any:
        last = len(outline.points)

        def assemble(ctx: NodeContext) -> Result:
            points: list[Point] = []
            pieces: list[str] = []
            failed: list[tuple[OutlinePoint, Outcome]] = []
            for p in outline.points:
                node = f"p{p.index}"
                outcome: Outcome = ctx[node]
                if not outcome.ok:
                    failed.append((p, outcome))
                    continue
                text = str(outcome.value)
                trace = ctx.trace(node)
                points.append(
                    Point(
                        index=p.index,
                        title=p.title,
                        text=text.strip(),
                        needs=list(p.needs),
                        start_s=trace.start_s if trace else None,
                        end_s=trace.end_s if trace else None,
                        usage=trace.usage if trace else None,
                    )
                )
                shown = part_text(text, _LEAD)
                pieces.append(_heading(p) + shown + ("" if p.index == last else "\n"))
            _check_failed(failed, len(outline.points), ctx)
            details: dict[str, Any] = {"outline_warnings": list(outline.warnings)}
            if failed:
                details["failed_points"] = [p.index for p, _ in failed]
            if self.dependencies:
                details["dependencies"] = {p.index: list(p.needs) for p in outline.points}
            return Result("".join(pieces), points=points, skeleton=raw, details=details)

        return assemble

    def _fallback(self, question: str, raw: str, reason: str, outline: Outline) -> Call:
        request = Request((Message.user(question),), self.fallback_params)

        def direct(completion: Completion, ctx: NodeContext) -> Result:
            return Result(
                completion.text,
                strategy="direct",
                skeleton=raw,
                details={"fallback": reason, "outline_warnings": list(outline.warnings)},
            )

        return Call("answer", request, then=direct, part=Part((0,)), meta={"fallback": reason})


def _check_failed(failed: list[tuple[OutlinePoint, Outcome]], total: int, ctx: NodeContext) -> None:
    """Warn about each missing point; fail the answer when more than half are missing."""
    for point, outcome in failed:
        error = outcome.error
        why = f"{type(error).__name__}: {error}" if error is not None else "it was cancelled"
        ctx.warn(
            f"point {point.index} ({point.title!r}) failed after its retries ({why}); "
            "the answer was written without it"
        )
    if 2 * len(failed) <= total:
        return
    first = next((o.error for _, o in failed if o.error is not None), None)
    if isinstance(first, Exception):
        # The first point's own error, so its kind (an auth error, a quota) still shows.
        raise first
    raise NoAnswerError(f"{len(failed)} of {total} points failed, more than half; no answer")


async def server_profile(backend: Backend) -> ServerProfile | None:
    """The backend's server profile, or ``None`` if it could not be learned (the calls
    that follow will meet the same problem and report it with their retries)."""
    try:
        return await backend.profile()
    except BackendError:
        return None


def why_sot_is_slow(profile: ServerProfile, needed: float | None = None) -> str:
    """Why SoT's points cannot beat a direct answer on this backend: it runs calls one
    at a time, or its parallel gain is below ``needed`` (default: the profile's own
    ``sot_min_gain``)."""
    gain = profile.parallel_gain
    if profile.serialises:
        return (
            f"the backend runs (nearly) one call at a time (parallel gain {gain:.2f}x, "
            f"{profile.source}), so the points are written about one after another after "
            "the skeleton"
        )
    needed = needed if needed is not None else profile.sot_min_gain or SERIAL_GAIN
    return (
        f"the backend's parallel gain {gain:.2f}x ({profile.source}) is less than the "
        f"{needed:.2f}x SoT needs here to pay for its skeleton and its extra tokens"
    )


def slow_server_warning(profile: ServerProfile, strategy: str) -> str:
    return (
        f"{strategy} will be slower than a direct answer here: {why_sot_is_slow(profile)}; "
        "use --strategy auto (or direct) here"
    )


def _heading(point: OutlinePoint) -> str:
    return f"{point.index}. {point.title}"


def _prefill(point: OutlinePoint) -> str:
    # "i. Title -" rather than "i. Title:": after a colon small models often start a new
    # paragraph (a blank line first, which the stop below reads as the end of an empty
    # point); after a dash they continue on the line. Measured on SmolLM2 over 7
    # points: colon 4/7 opened with a newline, 2 empty; dash 7/7 on the line.
    return f"{point.index}. {point.title} -"


def _text(completion: Completion, ctx: NodeContext) -> str:
    return completion.text
