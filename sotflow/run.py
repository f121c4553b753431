"""One execution of one strategy's graph: nodes start the moment their inputs exist.

``Engine.run`` makes a ``Run`` per question. It owns the run's task group, node states,
token budget, deadline, events and trace; the limits it waits in belong to the
backends and are shared with every other run.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Iterable, Mapping
from contextlib import aclosing, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import tenacity

from .backends.base import DEFAULT_COMPLETION_ESTIMATE, Backend
from .breaker import CallRecord, ConnectionBreaker
from .errors import (
    APIConnectionError,
    APITimeoutError,
    BackendError,
    BudgetExceededError,
    ConfigurationError,
    DeadlineExceededError,
    EndpointUnreachableError,
    GraphError,
    MalformedResponseError,
    ProviderError,
    StreamInterruptedError,
)
from .events import (
    AnswerDelta,
    Event,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    Retrying,
    RunFinished,
    RunStarted,
    StreamReset,
    TextDelta,
)
from .graph import Call, Embed, Expand, Node, Outcome, PartKey, Result, Step, check_nodes
from .reading import AnswerReader, EventSink
from .strategies.base import BuildContext, Strategy
from .types import Answer, Completion, Delta, ErrorInfo, NodeTrace, Request, Trace, Usage

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Run", "validation_error"]

run_ids = itertools.count(1)


class _TokenBudget:
    """Tokens spent by one run (sub-graphs included); no new call once it is spent."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def check(self) -> None:
        if self.limit is not None and self.used >= self.limit:
            raise BudgetExceededError(
                f"the run's token budget of {self.limit} is spent ({self.used} tokens used); "
                "no further model call was started. Raise the budget (budget=...) or ask "
                "for shorter answers (max_tokens=...).",
                budget=self.limit,
                used=self.used,
            )


@dataclass(eq=False, slots=True)
class _NodeState:
    node: Node
    full_id: str
    ns: str
    part_key: PartKey | None
    part_base: PartKey | None
    needs: tuple[str, ...]
    unmet: int
    outcome: Outcome | None = None
    scope: anyio.CancelScope | None = None
    start: float | None = None
    end: float | None = None
    attempts: int = 0
    usage: Usage | None = None
    received: int = 0
    """Characters of text the current attempt has streamed so far."""
    backend: Backend | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> Literal["call", "step", "embed"]:
        node = self.node
        return "call" if isinstance(node, Call) else "step" if isinstance(node, Step) else "embed"


class _Context:
    """The ``NodeContext`` a node's functions receive."""

    __slots__ = ("_inputs", "_run", "_state")

    def __init__(self, run: Run, state: _NodeState) -> None:
        self._run = run
        self._state = state
        self._inputs: dict[str, Any] | None = None

    @property
    def question(self) -> str:
        return self._run.question

    @property
    def node_id(self) -> str:
        return self._state.full_id

    @property
    def backend(self) -> Backend:
        return self._run.engine.backend

    @property
    def inputs(self) -> Mapping[str, Any]:
        if self._inputs is None:
            settle = getattr(self._state.node, "settle", False)
            outcomes = self._run.outcomes
            ns = self._state.ns
            self._inputs = {
                need: (outcomes[ns + need] if settle else outcomes[ns + need].value)
                for need in self._state.node.needs
            }
        return self._inputs

    def __getitem__(self, node_id: str) -> Any:
        return self.inputs[node_id]

    def outcome(self, node_id: str) -> Outcome | None:
        return self._run.outcomes.get(self._state.ns + node_id)

    def outcomes(self, prefix: str = "") -> dict[str, Outcome]:
        start = self._state.ns + prefix
        cut = len(self._state.ns)
        return {k[cut:]: v for k, v in self._run.outcomes.items() if k.startswith(start)}

    def pending(self, prefix: str = "") -> list[str]:
        start = self._state.ns + prefix
        cut = len(self._state.ns)
        return [
            k[cut:]
            for k, s in self._run.states.items()
            if s.outcome is None and k.startswith(start)
        ]

    def warn(self, message: str) -> None:
        self._run.warnings.append(f"{self._state.full_id}: {message}")

    def trace(self, node_id: str) -> NodeTrace | None:
        state = self._run.states.get(self._state.ns + node_id)
        return self._run.node_trace(state) if state is not None else None


class Run:
    """One execution of one strategy on one question."""

    def __init__(
        self,
        engine: Engine,
        strategy: Strategy,
        question: str,
        *,
        run_id: str,
        deadline: float | None,
        budget: int | None,
        sink: EventSink | None,
    ) -> None:
        self.engine = engine
        self.strategy = strategy
        self.question = question
        self.run_id = run_id
        self.deadline = deadline
        self.budget = _TokenBudget(budget)
        self.sink = sink
        self.reader = AnswerReader(run_id, sink) if sink is not None else None
        self.states: dict[str, _NodeState] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.dependents: dict[str, list[_NodeState]] = {}
        self.forwards: dict[str, _NodeState] = {}
        self.started: list[_NodeState] = []
        self.warnings: list[str] = []
        self.usage = Usage()
        self.active = 0
        self.output: str = ""
        self.output_outcome: Outcome | None = None
        self.failure: BaseException | None = None
        self.error: BaseException | None = None
        self.t0 = 0.0
        self.tg: anyio.abc.TaskGroup | None = None
        self.done = anyio.Event()
        self.priority = 0.0

    # -- bookkeeping ---------------------------------------------------------------

    def now(self) -> float:
        return anyio.current_time() - self.t0

    def emit(self, event: Event) -> None:
        if self.sink is not None:
            self.sink(event)

    def check(self, nodes: list[Node], ns: str) -> None:
        """Raise ``GraphError`` if ``nodes`` cannot join the run in namespace ``ns``."""
        cut = len(ns)
        known = {k[cut:] for k in self.states if k.startswith(ns) and "/" not in k[cut:]}
        check_nodes(nodes, known)

    def add(self, nodes: Iterable[Node], ns: str, part_base: PartKey | None) -> None:
        nodes = list(nodes)
        self.check(nodes, ns)
        new: list[_NodeState] = []
        for node in nodes:
            full_needs = tuple(ns + need for need in node.needs)
            part = getattr(node, "part", None)
            part_key = None
            if part is not None and part_base is not None:
                part_key = (*part_base, *part.key)
            state = _NodeState(
                node=node,
                full_id=ns + node.id,
                ns=ns,
                part_key=part_key,
                part_base=part_base,
                needs=full_needs,
                unmet=0,
            )
            self.states[state.full_id] = state
            new.append(state)
            if isinstance(node, Call) and part_key is not None and self.reader is not None:
                assert part is not None
                self.reader.add(state.full_id, part_key, part.prefix, part.suffix, part.lead)
        for state in new:
            for need in state.needs:
                self.dependents.setdefault(need, []).append(state)
                if need not in self.outcomes:
                    state.unmet += 1
        for state in new:
            if state.outcome is None and state.unmet == 0:
                self.ready(state)

    def ready(self, state: _NodeState) -> None:
        """All needs have settled: start the node, or pass a failure on to it."""
        node = state.node
        if not getattr(node, "settle", False):
            for need in state.needs:
                outcome = self.outcomes[need]
                if outcome.status != "ok":
                    self.finish(state, Outcome(outcome.status, error=outcome.error))
                    return
        assert self.tg is not None
        self.active += 1
        self.tg.start_soon(self.execute, state)

    def finish(self, state: _NodeState, outcome: Outcome) -> None:
        if state.outcome is not None:
            return
        state.outcome = outcome
        state.end = self.now()
        self.outcomes[state.full_id] = outcome
        kind = state.kind
        if self.sink is not None:
            if outcome.status == "ok":
                duration = state.end - (state.start if state.start is not None else state.end)
                self.emit(NodeFinished(self.run_id, state.full_id, kind, duration, state.usage))
            else:
                error = outcome.error or anyio.get_cancelled_exc_class()()
                self.emit(
                    NodeFailed(
                        self.run_id,
                        state.full_id,
                        kind,
                        ErrorInfo.of(error),
                        cancelled=outcome.status == "cancelled",
                    )
                )
            if self.reader is not None and state.part_key is not None and kind == "call":
                self.reader.finish(state.full_id, outcome.status == "ok")
        forward = self.forwards.pop(state.full_id, None)
        if forward is not None:
            self.finish(forward, outcome)
        if state.full_id == self.output:
            self.output_outcome = outcome
            self.done.set()
            return
        for dependent in self.dependents.get(state.full_id, ()):
            if dependent.outcome is None:
                dependent.unmet -= 1
                if dependent.unmet == 0:
                    self.ready(dependent)

    def cancel(self, full_id: str) -> None:
        state = self.states.get(full_id)
        if state is None or state.outcome is not None:
            return
        scope = state.scope
        self.finish(state, Outcome("cancelled"))
        if scope is not None:
            scope.cancel()
        # Cancel whatever an embedded sub-graph still runs.
        prefix = full_id + "/"
        for sub_id, sub in list(self.states.items()):
            if sub_id.startswith(prefix) and sub.outcome is None:
                self.cancel(sub_id)

    def check_stalled(self) -> None:
        if self.active == 0 and not self.done.is_set():
            cause = self.unhandled_failure()
            if cause is not None:
                # A growing graph stalls when the node that would have grown it failed
                # (a skeleton call with a bad key, a refinement over budget): that
                # failure is the run's error, not the stall it caused.
                self.failure = cause
            elif self.output not in self.states:
                message = f"the graph finished without ever adding its output node {self.output!r}"
                self.failure = GraphError(message)
            else:
                message = f"the graph stalled before its output node {self.output!r} could run"
                self.failure = GraphError(message)
            self.done.set()

    def unhandled_failure(self) -> BaseException | None:
        """The first error that no ``settle`` node took in (those are handled)."""
        for full_id, outcome in self.outcomes.items():
            if outcome.status != "failed" or outcome.error is None:
                continue
            takers = self.dependents.get(full_id, ())
            if not any(getattr(d.node, "settle", False) for d in takers):
                return outcome.error
        return None

    # -- execution -----------------------------------------------------------------

    async def execute(self, state: _NodeState) -> None:
        node = state.node
        try:
            with anyio.CancelScope() as scope:
                state.scope = scope
                state.start = self.now()
                self.started.append(state)
                if self.sink is not None:
                    self.emit(NodeStarted(self.run_id, state.full_id, state.kind))
                ctx = _Context(self, state)
                try:
                    if isinstance(node, Call):
                        value = await self.call(state, node, ctx)
                    elif isinstance(node, Step):
                        value = node.fn(ctx)
                        if inspect.isawaitable(value):
                            value = await value
                    else:
                        self.embed(state, node, ctx)
                        return
                    self.complete(state, value)
                except Exception as exc:
                    self.finish(state, Outcome("failed", error=exc))
        finally:
            self.active -= 1
            self.check_stalled()

    def complete(self, state: _NodeState, value: Any) -> None:
        if state.outcome is not None:
            return  # cancelled while it ran; its value is no longer wanted
        if isinstance(value, Expand):
            self.warnings.extend(f"{state.full_id}: {w}" for w in value.warnings)
            added = list(value.add)
            if added:
                self.check(added, state.ns)  # a bad expansion fails this node, not the run later
            # Finish first, so events read "skeleton finished" before its points start.
            self.finish(state, Outcome("ok", value.value))
            if added:
                self.add(added, state.ns, state.part_base)
            for node_id in value.cancel:
                self.cancel(state.ns + node_id)
        else:
            self.finish(state, Outcome("ok", value))

    def embed(self, state: _NodeState, node: Embed, ctx: _Context) -> None:
        question = node.question if isinstance(node.question, str) else node.question(ctx)
        graph = node.strategy.build(question, BuildContext(self.engine.backend))
        ns = f"{state.full_id}/"
        base = state.part_key if node.part is not None else None
        self.forwards[ns + graph.output] = state
        state.meta["strategy"] = node.strategy.name
        self.add(graph.nodes, ns, base)

    async def call(self, state: _NodeState, node: Call, ctx: _Context) -> Any:
        backend = node.backend or self.engine.backend
        self.engine._used_backends[id(backend)] = backend
        state.backend = backend
        request = node.request if isinstance(node.request, Request) else node.request(ctx)
        if inspect.isawaitable(request):
            # A builder may first ask the backend something (e.g. its server's profile).
            request = await request
        estimate = backend.estimate_tokens(request)
        stream = self.sink is not None
        policy = self.engine.retry
        record = CallRecord()
        state.attempts = 1
        try:
            # Most calls succeed first time; the retry machinery only starts on a failure.
            completion = await self.attempt(state, backend, request, estimate, stream, record)
        except BackendError as first:
            if not first.retryable or policy.max_retries == 0:
                raise
            completion = await self.retry_call(
                state, backend, request, estimate, stream, first, record
            )
        self.charge(state, completion.usage)
        if node.then is None:
            return completion
        return node.then(completion, ctx)

    def charge(self, state: _NodeState, usage: Usage) -> None:
        """Count ``usage`` for the node, the run and its budget (attempts add up)."""
        state.usage = usage if state.usage is None else state.usage + usage
        self.usage = self.usage + usage
        self.budget.used += usage.total_tokens

    def charge_partial(self, state: _NodeState, prompt_tokens: int) -> int:
        """Charge an attempt that streamed text and then failed or was cancelled.

        Providers bill the tokens they sent before the stream ended; none are reported,
        so they are estimated (about 4 characters a token) and marked so.
        """
        if not state.received:
            return 0
        usage = Usage.of(prompt_tokens, max(1, state.received // 4), estimated=True)
        state.received = 0
        self.charge(state, usage)
        return usage.total_tokens

    async def retry_call(
        self,
        state: _NodeState,
        backend: Backend,
        request: Request,
        estimate: int,
        stream: bool,
        first: BackendError,
        record: CallRecord,
    ) -> Completion:
        """Retry a failed first attempt under the engine's policy (tenacity drives it)."""

        def before_sleep(retry_state: tenacity.RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            wait = retry_state.upcoming_sleep
            if self.sink is not None and exc is not None:
                self.emit(
                    Retrying(self.run_id, state.full_id, state.attempts, wait, ErrorInfo.of(exc))
                )

        # The failed first attempt is replayed as tenacity's attempt 1, so waits and the
        # attempt count follow the policy exactly as if tenacity had made it.
        replay: list[BaseException] = [first]
        completion: Completion | None = None
        async for attempt in self.engine.retry.retrying(before_sleep):
            with attempt:
                if replay:
                    raise replay.pop()
                state.attempts += 1
                completion = await self.attempt(state, backend, request, estimate, stream, record)
        assert completion is not None
        return completion

    async def attempt(
        self,
        state: _NodeState,
        backend: Backend,
        request: Request,
        estimate: int,
        stream: bool,
        record: CallRecord,
    ) -> Completion:
        timeout = self.engine.timeout
        breaker: ConnectionBreaker | None = getattr(backend.limiter, "breaker", None)
        if breaker is not None:
            breaker.check()  # a dead endpoint: fail now, not after queueing for a slot
        params = request.params
        # A failed call is charged its prompt only, not the completion it never produced.
        prompt_only = max(
            0, estimate - params.n * (params.max_tokens or DEFAULT_COMPLETION_ESTIMATE)
        )
        async with backend.limiter.slot(estimate, self.priority) as ticket:
            # Checked once the slot is ours: calls queued behind the cap while others
            # spent the budget, or while the endpoint was given up, must not start (and
            # are charged nothing).
            try:
                self.budget.check()
                if breaker is not None:
                    breaker.check()
            except (BudgetExceededError, EndpointUnreachableError):
                ticket.settle(0)
                raise
            try:
                with anyio.fail_after(timeout) if timeout is not None else nullcontext():
                    if stream:
                        completion = await self.stream_attempt(state, backend, request)
                    else:
                        completion = await backend.complete(request)
            except TimeoutError as exc:
                ticket.settle(self.charge_partial(state, prompt_only) or prompt_only)
                if isinstance(exc, BackendError):
                    raise
                raise APITimeoutError(
                    f"{backend.name} call {state.full_id!r} got no complete response within "
                    f"{timeout:g}s; raise the per-attempt timeout (timeout=...) if the model "
                    "is slow."
                ) from exc
            except BaseException as exc:
                ticket.settle(self.charge_partial(state, prompt_only) or prompt_only)
                if breaker is not None:
                    given_up = self.observe(breaker, exc, state, record)
                    if given_up is not None:
                        raise given_up from exc
                raise
            state.received = 0
            ticket.settle(completion.usage.total_tokens)
            if breaker is not None:
                breaker.answered(record)
            return completion

    def observe(
        self, breaker: ConnectionBreaker, exc: BaseException, state: _NodeState, record: CallRecord
    ) -> EndpointUnreachableError | None:
        """Tell the backend's breaker how an attempt failed; the error to raise instead
        when this failure makes it give up on the endpoint."""
        if isinstance(exc, StreamInterruptedError | ProviderError | MalformedResponseError):
            breaker.answered(record)  # the server was there and said something
        elif isinstance(exc, APIConnectionError) and not isinstance(exc, EndpointUnreachableError):
            last = state.attempts > self.engine.retry.max_retries
            return breaker.failed(exc, record, last_attempt=last)
        return None

    async def stream_attempt(
        self, state: _NodeState, backend: Backend, request: Request
    ) -> Completion:
        completion: Completion | None = None
        streamed = False
        reader = self.reader if state.part_key is not None else None
        run_id, node_id, sink = self.run_id, state.full_id, self.sink
        assert sink is not None
        try:
            async with aclosing(backend.stream(request)) as items:
                async for item in items:
                    if type(item) is Delta:
                        if item.text:
                            streamed = True
                            state.received += len(item.text)
                            sink(TextDelta(run_id, node_id, item.text, item.index, item.logprobs))
                            if reader is not None and item.index == 0:
                                reader.delta(node_id, item.text)
                    else:
                        completion = item  # type: ignore[assignment]
        except BaseException:
            # Also on cancellation: an attempt timeout is a cancellation that the retry
            # turns into a fresh attempt, whose text must not follow the stale text.
            if streamed:
                sink(StreamReset(run_id, node_id))
                if reader is not None:
                    reader.reset(node_id)
            raise
        if completion is None:
            if streamed:
                sink(StreamReset(run_id, node_id))
                if reader is not None:
                    reader.reset(node_id)
            raise StreamInterruptedError(
                f"the {backend.name} stream for {node_id!r} ended without a final completion"
            )
        return completion

    async def execute_run(self) -> Answer:
        self.t0 = anyio.current_time()
        # Runs that started earlier get freed call slots first (see Limiter.slot).
        self.priority = self.t0
        started_at = time.time()
        self.emit(RunStarted(self.run_id, self.question, self.strategy.name))
        error: BaseException | None = None
        try:
            with anyio.fail_after(self.deadline) if self.deadline is not None else nullcontext():
                graph = self.strategy.build(self.question, BuildContext(self.engine.backend))
                self.output = graph.output
                async with anyio.create_task_group() as tg:
                    self.tg = tg
                    self.add(graph.nodes, "", ())
                    self.check_stalled()
                    await self.done.wait()
                    tg.cancel_scope.cancel()
        except TimeoutError as exc:
            error = DeadlineExceededError(
                f"the run did not finish within its deadline of {self.deadline:g}s; everything "
                "in flight was cancelled. Raise deadline=... or ask for less work."
            )
            error.__cause__ = exc
        except Exception as exc:
            error = exc
        if error is None:
            error = self.failure
        outcome = self.output_outcome
        if error is None and outcome is not None and outcome.status != "ok":
            error = outcome.error or GraphError(f"the output node {self.output!r} was cancelled")
        # Whatever never got to finish ends as cancelled in the trace.
        for state in self.states.values():
            if state.outcome is None:
                state.outcome = Outcome("cancelled")
                state.end = self.now() if state.start is not None else None
        answer = self.answer(error, started_at)
        self.emit(RunFinished(self.run_id, answer))
        self.error = error
        return answer

    def answer(self, error: BaseException | None, started_at: float) -> Answer:
        duration = self.now()
        value = self.output_outcome.value if self.output_outcome and error is None else None
        result = (
            value if isinstance(value, Result) else Result(text="" if value is None else str(value))
        )
        if self.reader is not None and not self.reader.any_parts and result.text:
            # Strategies without streamed parts deliver their answer whole, at the end.
            self.emit(AnswerDelta(self.run_id, result.text))
        trace = Trace(
            run_id=self.run_id,
            strategy=self.strategy.name,
            started_at=started_at,
            duration_s=duration,
            nodes=[self.node_trace(s) for s in self.ordered_states()],
            warnings=list(self.warnings),
        )
        return Answer(
            question=self.question,
            text=result.text,
            strategy=result.strategy or self.strategy.name,
            usage=self.usage,
            latency_s=duration,
            trace=trace,
            error=ErrorInfo.of(error) if error is not None else None,
            points=result.points,
            skeleton=result.skeleton,
            decision=result.decision,
            details=result.details,
        )

    def ordered_states(self) -> list[_NodeState]:
        seen = {id(s) for s in self.started}
        return self.started + [s for s in self.states.values() if id(s) not in seen]

    def node_trace(self, state: _NodeState) -> NodeTrace:
        outcome = state.outcome
        backend = state.backend
        meta = {**state.node.meta, **state.meta} if (state.node.meta or state.meta) else {}
        return NodeTrace(
            id=state.full_id,
            kind=state.kind,
            status=outcome.status if outcome is not None else "cancelled",
            needs=list(state.needs),
            start_s=state.start,
            end_s=state.end,
            backend=backend.name if backend is not None else None,
            model=backend.model if backend is not None else None,
            usage=state.usage,
            attempts=state.attempts,
            error=ErrorInfo.of(outcome.error) if outcome and outcome.error else None,
            meta=meta,
        )


def validation_error(strategy: Any, question: Any) -> ConfigurationError | None:
    # Duck-typed on purpose: a runtime Protocol check costs more than a whole small run.
    if isinstance(strategy, type):
        # The class passes the duck test when its name is a class attribute (Direct).
        return ConfigurationError(
            f"expected a strategy instance, got the class {strategy.__name__}; "
            f"pass {strategy.__name__}(...)"
        )
    if not callable(getattr(strategy, "build", None)) or not hasattr(strategy, "name"):
        return ConfigurationError(
            "expected a strategy (Direct(), SkeletonOfThought(), ...), "
            f"got {type(strategy).__name__}"
        )
    if not isinstance(question, str):
        return ConfigurationError(f"a question must be a string, got {type(question).__name__}")
    if not question.strip():
        return ConfigurationError("the question is empty; give the model something to answer")
    return None
