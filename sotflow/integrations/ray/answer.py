"""Answering on a Ray worker: a callable class for ``Dataset.map_batches``.

Every row is read as ``sotflow batch`` reads a JSONL line (``question`` or ``prompt``,
an optional ``id``, any other fields) and comes back as the record ``sotflow batch``
writes for it, built by the same code (``sotflow.cli.records``): the row's other fields
are kept, and one named like an output field is kept as ``input_<name>``. A row that
cannot be answered, or whose question failed, is a row with its ``error``: never a
failed task, so one bad row does not sink a job of a million.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import numpy as np
import ray

from ...backends.base import Backend
from ...cli.batch import answer_with
from ...cli.records import InputItem, error_record, item_from_object
from ...engine import Engine
from ...errors import ConfigurationError
from ...strategies.base import Strategy
from ...strategies.registry import make_strategy
from .limits import ClusterLimits, LeasedLimiter

__all__ = ["AnswerQuestions"]

StrategySpec = str | Strategy | Callable[[Backend], Strategy]
"""A strategy name (as ``--strategy`` takes), an instance, or a factory given the
worker's backend (for strategies that need one, such as an LLM router's)."""


def _default_backend() -> Backend:
    from ...backends.openai import OpenAIBackend

    return OpenAIBackend()


class AnswerQuestions:
    """Answers each row's question; pass the class to ``ray.data.Dataset.map_batches``.

    >>> answers = questions.map_batches(
    ...     AnswerQuestions,
    ...     fn_constructor_kwargs={"strategy": "sot", "backend": make_backend, "limits": limits},
    ...     compute=ray.data.ActorPoolStrategy(size=4), batch_size=16,
    ... )

    ``backend`` is a picklable callable that builds the backend in the worker (default:
    ``OpenAIBackend()`` from the worker's environment). With ``limits``
    (``ClusterLimits``), the backend's own limits are replaced by a share of the
    cluster-wide ones; give its ``max_concurrency`` room for that share, as it also
    sizes the connection pool. Every batch format works (numpy, pandas, pyarrow); the
    answers come back as columns.
    """

    def __init__(
        self,
        strategy: StrategySpec = "auto",
        *,
        backend: Callable[[], Backend] | None = None,
        limits: ClusterLimits | None = None,
        max_retries: int = 4,
        timeout: float | None = 120.0,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> None:
        built = (backend or _default_backend)()
        if not isinstance(built, Backend):
            raise ConfigurationError(
                f"backend must be a callable that returns a backend (e.g. "
                f"functools.partial(OpenAIBackend, base_url=...)); it returned {built!r}"
            )
        self.limiter: LeasedLimiter | None = None
        if limits is not None:
            self.limiter = limits.limiter()
            built.limiter = self.limiter
        self.backend = built
        self.strategy = _strategy(strategy, built, max_tokens, temperature)
        self.engine = Engine(built, max_retries=max_retries, timeout=timeout)
        self._answer = answer_with(self.engine, self.strategy)
        self._loop: tuple[object, int] | None = None

    async def __call__(self, batch: Any) -> dict[str, list[Any]]:
        rows = _rows(batch)
        records: list[dict[str, Any]] = [{} for _ in rows]

        async def one(index: int) -> None:
            records[index] = await self.answer(_item(rows[index], index + 1))

        async with anyio.create_task_group() as tg:
            for index in range(len(rows)):
                tg.start_soon(one, index)
        return _columns(records)

    async def answer(self, item: InputItem) -> dict[str, Any]:
        """The output record of one item (as ``sotflow batch`` writes it)."""
        if self._loop is None:
            self._loop = (anyio.lowlevel.current_token(), threading.get_ident())
        if item.problem is not None:
            return error_record(item, "InputError", item.problem)
        try:
            return await self._answer(item)
        except Exception as exc:  # a bug must cost one row, not the job
            return error_record(item, type(exc).__name__, str(exc))

    def describe(self) -> dict[str, Any]:
        """Who answers here: backend, model, process, node and lease holder."""
        return {
            "backend": self.backend.name,
            "model": self.backend.model,
            "strategy": getattr(self.strategy, "name", type(self.strategy).__name__),
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "holder": self.limiter.holder if self.limiter is not None else None,
        }

    async def aclose(self) -> None:
        if self.limiter is not None:
            self.limiter.close()
        await self.engine.aclose()

    def __del__(self) -> None:
        # Ray Data drops the instance when its actor ends gracefully: close the backend's
        # connections on the event loop they belong to (Ray Data's, in another thread).
        loop = getattr(self, "_loop", None)
        if loop is None or loop[1] == threading.get_ident():
            return
        with suppress(Exception):
            anyio.from_thread.run(self.aclose, token=loop[0])


def _strategy(
    spec: StrategySpec, backend: Backend, max_tokens: int | None, temperature: float | None
) -> Strategy:
    if isinstance(spec, str):
        return make_strategy(spec, max_tokens=max_tokens, temperature=temperature)
    if isinstance(spec, Strategy):
        return spec
    if callable(spec):
        built = spec(backend)
        if isinstance(built, Strategy):
            return built
        spec = built
    raise ConfigurationError(
        f"strategy must be a name (such as 'sot'), a strategy or a function of the backend "
        f"that returns one; got {spec!r}"
    )


def _item(row: dict[str, Any], number: int) -> InputItem:
    # A dataset has no line numbers: a row without an id keeps none (its record's id is
    # null) rather than a number that would not name it anywhere else.
    if row.get("id") is None:
        row.pop("id", None)
        item = item_from_object(row, number, f"row {number} of its batch (no id)")
        item.id = None
        return item
    item = item_from_object(row, number, f"row id={row['id']!r}")
    item.id = row["id"]
    return item


def _plain(value: Any) -> Any:
    """Numpy values (as Ray Data hands them over) as plain Python; NaN as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _rows(batch: Any) -> list[dict[str, Any]]:
    if hasattr(batch, "to_pylist"):  # pyarrow.Table
        return [_plain(row) for row in batch.to_pylist()]
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas.DataFrame
        return [_plain(row) for row in batch.to_dict("records")]
    if isinstance(batch, Mapping):  # numpy: column name -> array
        columns = {str(name): list(values) for name, values in batch.items()}
        size = len(next(iter(columns.values()), []))
        return [{name: _plain(col[i]) for name, col in columns.items()} for i in range(size)]
    raise ConfigurationError(
        f"AnswerQuestions takes a Ray Data batch (numpy, pandas or pyarrow), got {type(batch)}"
    )


def _columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    # Rows of one batch may differ in their fields (a row that asked by "prompt" has
    # one field fewer): every column is there, None where a row lacks it.
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    return {name: [record.get(name) for record in records] for name in names}
