"""The driver's side of a batch on Ray: a pool of answering actors, one question a call.

The driver keeps the input and the output (so "no id twice" is decided in one place,
``sotflow.cli.batch``) and hands each question to the least busy live worker. A worker
that dies takes the questions it was answering with it: each is sent again to a live
worker (``redo`` times at most, then it is written as an error and ``--resume`` tries it
again); the dead worker's leased slots are handed back to the cluster limits at once,
and it is used again once Ray has restarted it and it answers.
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from typing import Any

import anyio
import anyio.abc
import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayTaskError

from ...cli.records import InputItem, error_record
from ...errors import ConfigurationError
from .answer import AnswerQuestions
from .limits import NAMESPACE, ClusterLimits

__all__ = ["WorkerPool"]


class _Worker:
    """An ``AnswerQuestions`` actor that reports a failed start instead of dying of it,
    so the driver can say what to fix (a missing API key) before writing anything."""

    def __init__(self, **settings: Any) -> None:
        self.inner: AnswerQuestions | None = None
        self.error: str | None = None
        try:
            self.inner = AnswerQuestions(**settings)
        except Exception as exc:
            self.error = str(exc) or type(exc).__name__

    def describe(self) -> dict[str, Any]:
        if self.inner is None:
            return {"error": self.error}
        return self.inner.describe()

    async def answer(self, item: InputItem) -> dict[str, Any]:
        if self.inner is None:
            return error_record(item, "ConfigurationError", self.error or "the worker failed")
        return await self.inner.answer(item)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()


_WorkerActor = ray.remote(_Worker)


class WorkerPool:
    """``size`` answering actors spread over the cluster; ``answer`` one item at a time.

    Use it inside ``async with pool:`` (it watches restarted workers from there).
    """

    def __init__(self, workers: list[Any], limits: ClusterLimits | None, *, redo: int = 3):
        self.workers = workers
        self.limits = limits
        self.redo = redo
        self.load = [0] * len(workers)
        self.up = [True] * len(workers)
        self.info: list[dict[str, Any]] = [{} for _ in workers]
        self.lost = 0  # workers that went down (and came back, if Ray restarted them)
        self.redone = 0  # questions sent again because their worker went down
        self._up_changed: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    @classmethod
    def start(
        cls,
        size: int,
        *,
        limits: ClusterLimits | None = None,
        ready_timeout_s: float = 300.0,
        num_cpus: float = 1,
        redo: int = 3,
        **settings: Any,
    ) -> WorkerPool:
        """Start the actors and wait until each has built its backend and strategy.

        ``settings`` are ``AnswerQuestions``' (strategy, backend, max_retries, ...).
        Raises ``ConfigurationError`` with the workers' own message when they cannot
        start, or when the cluster cannot place them within ``ready_timeout_s``.
        """
        prefix = f"sotflow-batch-{uuid.uuid4().hex[:8]}"
        workers = [
            _WorkerActor.options(  # type: ignore[attr-defined]
                name=f"{prefix}-worker-{index}",
                namespace=NAMESPACE,
                num_cpus=num_cpus,
                max_restarts=-1,
                # Our own redo, not Ray's: it skips a worker that is down, and gives up on
                # a question that kills every worker it reaches.
                max_task_retries=0,
                scheduling_strategy="SPREAD",
            ).remote(limits=limits, **settings)
            for index in range(size)
        ]
        pool = cls(workers, limits, redo=redo)
        try:
            pool.info = ray.get([w.describe.remote() for w in workers], timeout=ready_timeout_s)
        except GetTimeoutError:
            pool.close()
            raise ConfigurationError(
                f"the Ray cluster did not start {size} workers within {ready_timeout_s:g} s "
                f"(each needs {num_cpus:g} CPU; the cluster has "
                f"{ray.cluster_resources().get('CPU', 0):g}); ask for fewer (--ray-workers)"
            ) from None
        failed = [info["error"] for info in pool.info if info.get("error")]
        if failed:
            pool.close()
            raise ConfigurationError(f"the Ray workers could not start: {failed[0]}")
        return pool

    async def __aenter__(self) -> WorkerPool:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def answer(self, item: InputItem) -> dict[str, Any]:
        """The record of one item; a dead worker's item is redone on another."""
        deaths: list[str] = []
        while True:
            index = await self._pick()
            if index is None:
                return error_record(
                    item, "WorkerDiedError", "no Ray worker is alive to answer; --resume redoes it"
                )
            self.load[index] += 1
            ref = self.workers[index].answer.remote(item)
            try:
                return await ref  # type: ignore[no-any-return]
            except RayActorError as exc:
                deaths.append(type(exc).__name__)
                self._lost(index, exc)
                if len(deaths) <= self.redo:
                    self.redone += 1
                else:
                    return error_record(
                        item,
                        "WorkerDiedError",
                        f"the Ray worker answering this question died {len(deaths)} times "
                        f"({', '.join(deaths)}); --resume tries it again",
                    )
            except RayTaskError as exc:  # the worker raised: a bug, kept as this item's error
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                return error_record(item, type(cause).__name__, str(cause))
            except BaseException:
                ray.cancel(ref)  # cancelled here (Ctrl-C): stop the run over there too
                raise
            finally:
                self.load[index] -= 1

    async def _pick(self, patience_s: float = 120.0) -> int | None:
        with anyio.move_on_after(patience_s):
            while True:
                live = [i for i, up in enumerate(self.up) if up]
                if live:
                    return min(live, key=lambda i: self.load[i])
                if self._up_changed is None:
                    self._up_changed = anyio.Event()
                await self._up_changed.wait()
        return None

    def _lost(self, index: int, exc: RayActorError) -> None:
        if not self.up[index]:
            return
        self.up[index] = False
        self.lost += 1
        holder = self.info[index].get("holder")
        if isinstance(exc, ActorDiedError) and holder and self.limits is not None:
            # Its process is gone: its leased slots need not wait for the lease to lapse.
            self.limits.forget(holder)
        if self._tg is not None:
            self._tg.start_soon(self._watch, index)

    async def _watch(self, index: int) -> None:
        """Wait until Ray has restarted worker ``index`` and it answers, then use it again."""
        while True:
            try:
                info = await self.workers[index].describe.remote()
            except RayActorError:
                await anyio.sleep(0.5)
                continue
            if info.get("error"):
                return  # restarted, but cannot answer: leave it out
            self.info[index] = info
            self.up[index] = True
            if self._up_changed is not None:
                self._up_changed.set()
                self._up_changed = None
            return

    def describe(self) -> dict[str, Any]:
        """What the workers run on: backend, model, nodes."""
        first = self.info[0] if self.info else {}
        return {
            "backend": first.get("backend"),
            "model": first.get("model"),
            "workers": len(self.workers),
            "nodes": len({info.get("node") for info in self.info}),
            "lost": self.lost,
            "redone": self.redone,
        }

    def close(self, timeout_s: float = 10.0) -> None:
        """Close every worker's connections, then end the actors."""
        refs = [w.aclose.remote() for w in self.workers]
        with suppress(Exception):  # a dead or stuck worker has nothing left to close
            ray.get(refs, timeout=timeout_s)
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
