"""``sotflow batch --ray [ADDRESS]``: the same batch, its questions answered on a Ray cluster.

Only *who answers* changes. The driver (this process) reads the input, writes the
output, orders it, resumes it and prints the summary with the very code of the
single-process batch (``run_batch``); a pool of Ray workers answers the questions, one
call per question, under limits that hold across the whole cluster (``--max-calls``,
``--rpm`` and ``--tpm`` are the cluster's, leased out by one actor). With no ADDRESS a
local cluster is started (or the one in ``RAY_ADDRESS``, as under ``ray job submit``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend
from ..errors import ConfigurationError
from .batch import Answerer
from .options import make_backend

__all__ = ["RayAnswering"]

# What a worker needs from the driver's environment to configure its backend the same.
FORWARDED_ENV = ("OPENAI_", "SOTFLOW_")


@dataclass(frozen=True)
class WorkerBackend:
    """Builds, in a worker, the backend the driver's arguments describe.

    The driver's settings travel with it (a worker on another machine does not share
    its environment); the key is in them, so it is never shown.
    """

    args: argparse.Namespace
    env: dict[str, str] = field(repr=False)

    def __call__(self) -> Backend:
        # The driver's settings decide, as in a single-process batch: none of the
        # worker machine's own.
        for name in [n for n in os.environ if n.startswith(FORWARDED_ENV)]:
            del os.environ[name]
        os.environ.update(self.env)
        return make_backend(self.args)


@dataclass(frozen=True)
class WorkerStrategy:
    args: argparse.Namespace

    def __call__(self, backend: Backend) -> Any:
        from . import _strategy

        return _strategy(self.args, backend)


@contextmanager
def _quiet_ray(verbose: bool) -> Iterator[None]:
    # Ray announces itself while it starts (the local instance, its token auth) on the
    # driver's log; the batch's stderr is for the batch. Errors still show.
    if not verbose:
        logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _refuse_unreachable(address: str, timeout_s: float = 5.0) -> None:
    # Ray itself retries an address nobody listens on for minutes before it gives up.
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself: let it say what is wrong
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigurationError(
            f"no Ray cluster answers at {address!r} ({exc}). Give the address of a running "
            "cluster (`ray start --head` prints it), or drop it to start a local one"
        ) from None


def connect(address: str, *, workers: int, verbose: bool = False) -> bool:
    """Join the cluster at ``address`` ("local": ``RAY_ADDRESS``, else a new local one).

    Returns whether this call initialised Ray (and so should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    target = (os.environ.get("RAY_ADDRESS") or "local") if address == "local" else address
    quiet: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.WARNING,
        "log_to_driver": verbose,
    }
    if target != "local":
        _refuse_unreachable(target)
    try:
        with _quiet_ray(verbose):
            if target == "local":
                ray.init(
                    address="local",
                    num_cpus=max(workers, os.cpu_count() or 1),
                    include_dashboard=False,
                    **quiet,
                )
            else:
                ray.init(address=target, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigurationError(
            f"could not join the Ray cluster at {target!r}: {exc}. Give the address of a "
            "running cluster (`ray start --head` prints it), or none for a local one"
        ) from exc
    return True


class RayAnswering:
    """A batch's answering on Ray: the cluster, the shared limits, the worker pool.

    Built before the output is touched, so that a cluster that cannot be reached or
    workers that cannot start are a usage error with nothing written; then used as
    ``async with answering as answer:`` around ``run_batch``.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        try:
            import ray

            from ..integrations.ray import ClusterLimits, WorkerPool
        except ImportError as exc:
            raise ConfigurationError(
                f"--ray needs Ray: pip install 'sotflow[ray]' ({exc})"
            ) from exc
        self._ray = ray
        started = time.monotonic()
        requested = args.ray_workers
        self._owns_ray = connect(args.ray, workers=requested or 2, verbose=False)
        self.limits: Any = None
        self.pool: Any = None
        try:
            alive = sum(1 for node in ray.nodes() if node.get("Alive"))
            size = requested or max(2, alive)
            self.limits = ClusterLimits.start(
                max_concurrency=args.max_calls or 8 * args.concurrency,
                rpm=args.rpm,
                tpm=args.tpm,
            )
            env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
            self.pool = WorkerPool.start(
                size,
                limits=self.limits,
                strategy=WorkerStrategy(args),
                backend=WorkerBackend(args, env),
                max_retries=args.max_retries,
                timeout=args.timeout,
            )
        except BaseException:
            self.close()
            raise
        self.ready_s = time.monotonic() - started
        info = self.pool.describe()
        self.model: str = info["model"] or ""
        self.local = info["backend"] == "local"
        self._report = ""

    def report(self) -> str:
        """One line for the summary: where it ran, and what Ray had to redo."""
        return self._report or self._describe()

    def _describe(self) -> str:
        info = self.pool.describe()
        line = (
            f"ray: {info['workers']} workers on {info['nodes']} node"
            f"{'s' if info['nodes'] != 1 else ''} (ready in {self.ready_s:.1f} s)"
        )
        if info["lost"]:
            line += f"; {info['lost']} lost, {info['redone']} questions redone on another"
        return line

    async def __aenter__(self) -> Answerer:
        await self.pool.__aenter__()
        return self.pool.answer  # type: ignore[no-any-return]

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.pool.__aexit__(*exc_info)

    def close(self) -> None:
        """End the workers and the limits, and the cluster if this batch started it."""
        if self.pool is not None:
            self._report = self._describe()
            self.pool.close()
            self.pool = None
        if self.limits is not None:
            self.limits.stop()
            self.limits = None
        if self._owns_ray:
            self._owns_ray = False
            self._ray.shutdown()
