"""Shared fixtures: the anyio backend and one loopback server for the whole session."""

from __future__ import annotations

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
