"""Graphs of model calls and functions: pure description, no I/O.

A strategy turns a question into a ``Graph``. Nodes are

- ``Call``: one model request (built from the outputs it needs), turned into a value by
  ``then``;
- ``Step``: a plain function (sync or async) of the outputs it needs;
- ``Embed``: a whole other strategy run on a question, inside the same run (same
  limits, budget, deadline, events, trace), e.g. the strategy a router picked.

Edges are ``needs``: a node starts the moment every node it needs has finished. A node
may return ``Expand`` to add nodes (fan-out known only at run time: SoT points, the next
tree level, another refinement round) or to cancel nodes that are no longer needed
(best-of-N found a winner). A node with ``settle=True`` runs once its needs have
*settled* (finished, failed or been cancelled) and receives ``Outcome`` objects instead
of plain values, which is how fan-in over partly cancelled work is written.

The run ends when the graph's ``output`` node has an outcome; whatever else still
runs then is cancelled. The output's value is a ``Result`` (or plain text).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .backends.base import Backend
from .errors import GraphError
from .types import Completion, Decision, NodeTrace, Point, Request

if TYPE_CHECKING:
    from .strategies.base import Strategy

__all__ = [
    "Call",
    "Embed",
    "Expand",
    "Graph",
    "Node",
    "NodeContext",
    "Outcome",
    "Part",
    "Result",
    "Step",
    "check_nodes",
]

PartKey = tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Part:
    """Marks a call's text as a piece of the final answer, at sort position ``key``.

    When a run is streamed, the answer is released in key order: the first part
    streams live, later parts are held back until everything before them is out.
    ``prefix`` and ``suffix`` surround the call's text exactly as the strategy
    assembles it, so the streamed pieces add up to ``answer.text``. With ``lead`` set,
    the call's leading whitespace (a model's stray line break after a prefill) is
    replaced by ``lead``: ``part_text`` is the one rule both sides apply.
    """

    key: PartKey
    prefix: str = ""
    suffix: str = ""
    lead: str | None = None

    def text(self, text: str) -> str:
        """The call's text as it appears in the answer (``lead`` applied)."""
        return part_text(text, self.lead)


def part_text(text: str, lead: str | None) -> str:
    """``text`` with its leading whitespace replaced by ``lead`` (if ``lead`` is set);
    text that is only whitespace becomes empty."""
    if lead is None:
        return text
    rest = text.lstrip()
    return lead + rest if rest else ""


class NodeContext(Protocol):
    """What a node's functions can see of the run while it executes."""

    @property
    def question(self) -> str: ...

    @property
    def node_id(self) -> str: ...

    @property
    def inputs(self) -> Mapping[str, Any]: ...

    @property
    def backend(self) -> Backend: ...

    def __getitem__(self, node_id: str) -> Any: ...

    def outcome(self, node_id: str) -> Outcome | None: ...

    def outcomes(self, prefix: str = "") -> dict[str, Outcome]: ...

    def pending(self, prefix: str = "") -> list[str]: ...

    def warn(self, message: str) -> None: ...

    def trace(self, node_id: str) -> NodeTrace | None: ...


RequestBuilder = Callable[[NodeContext], Request]


@dataclass(frozen=True, slots=True)
class Call:
    """One model call. ``then(completion, ctx)`` makes its value (default: the completion)."""

    id: str
    request: Request | RequestBuilder
    needs: tuple[str, ...] = ()
    then: Callable[[Completion, NodeContext], Any] | None = None
    backend: Backend | None = None
    part: Part | None = None
    settle: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Step:
    """A plain function of the outputs it needs; may be sync or async."""

    id: str
    fn: Callable[[NodeContext], Any | Awaitable[Any]]
    needs: tuple[str, ...] = ()
    settle: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Embed:
    """Run ``strategy`` on ``question`` as a sub-graph; its value is that run's ``Result``.

    The sub-graph's node ids are namespaced under ``<id>/``. With ``part`` set, the
    sub-graph's answer parts stream as part of this run's answer, under ``part.key``.
    """

    id: str
    strategy: Strategy
    question: str | Callable[[NodeContext], str]
    needs: tuple[str, ...] = ()
    part: Part | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


Node = Call | Step | Embed


@dataclass(frozen=True, slots=True)
class Expand:
    """Returned by a node: its own value, plus nodes to add and nodes to cancel.

    Ids in ``add`` and ``cancel`` are relative to the returning node's namespace.
    """

    value: Any = None
    add: Sequence[Node] = ()
    cancel: Sequence[str] = ()
    warnings: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a node ended; ``settle`` nodes receive these for their needs."""

    status: Literal["ok", "failed", "cancelled"]
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(slots=True)
class Result:
    """The value of a graph's output node: everything the ``Answer`` is built from."""

    text: str
    strategy: str | None = None
    points: list[Point] | None = None
    skeleton: str | None = None
    decision: Decision | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Graph:
    nodes: tuple[Node, ...]
    output: str

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, tuple):
            object.__setattr__(self, "nodes", tuple(self.nodes))
        check_nodes(self.nodes, known=())
        if not self.nodes:
            raise GraphError("a graph needs at least one node")

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)


def check_nodes(nodes: Sequence[Node], known: Sequence[str] | set[str]) -> None:
    """Reject duplicate ids, needs on unknown nodes and cycles among ``nodes``.

    Needs may only point at nodes already in the run (``known``) or in the same batch,
    so a graph that grows can never grow a cycle through earlier nodes.
    """
    known_ids = set(known)
    batch: dict[str, Node] = {}
    for node in nodes:
        if not isinstance(node, Call | Step | Embed):
            raise GraphError(f"not a graph node: {node!r} (expected Call, Step or Embed)")
        if not node.id or "/" in node.id:
            raise GraphError(f"bad node id {node.id!r}: ids are non-empty and contain no '/'")
        if node.id in batch or node.id in known_ids:
            raise GraphError(f"duplicate node id {node.id!r}")
        if isinstance(node, Call) and not (
            node.backend is None or isinstance(node.backend, Backend)
        ):
            # Caught here, the run fails with this error; later, the engine would try to
            # use (and close) it as a backend.
            raise GraphError(
                f"call {node.id!r} has backend={node.backend!r}, which is not a backend"
            )
        batch[node.id] = node
    inside = False
    for node in nodes:
        for need in node.needs:
            if need in batch:
                inside = True
            elif need not in known_ids:
                raise GraphError(f"node {node.id!r} needs {need!r}, which is not in the graph")
    if not inside:
        return  # no edge inside the batch, so no cycle to look for
    # Depth-first search for a cycle inside the batch (earlier nodes cannot close one).
    state: dict[str, int] = {}

    def visit(nid: str, path: list[str]) -> None:
        state[nid] = 1
        for need in batch[nid].needs:
            if need not in batch:
                continue
            if state.get(need) == 1:
                cycle = " -> ".join([*path[path.index(need) :], need]) if need in path else need
                raise GraphError(f"the graph has a cycle: {cycle}")
            if need not in state:
                visit(need, [*path, need])
        state[nid] = 2

    for nid in batch:
        if nid not in state:
            visit(nid, [nid])
