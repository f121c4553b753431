"""Shared fixtures: the anyio backend, one loopback server and (for the tests that ask
for it) one local Ray cluster for the whole session."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from sotflow.testing import LoopbackServer

#: A key the loopback server never requires; tests check it never leaks.
SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def _loopback_process() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


@pytest.fixture
def server(_loopback_process: LoopbackServer) -> LoopbackServer:
    """The session's loopback server, with faults, counters and pacing reset."""
    srv = _loopback_process
    # A previous test may have cancelled calls whose handlers the server has not torn
    # down yet; wait for them so this test's peak/in-flight counts start from zero.
    deadline = time.monotonic() + 10
    while srv.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.configure(ttft=0.0, tps=0.0, fault_rate=0.0, api_key=None)
    srv.reset()
    return srv


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster of 2 CPUs, started once (it takes seconds) and shut down at the
    end; this process is its driver. Yields the address ``sotflow batch --ray`` joins."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
