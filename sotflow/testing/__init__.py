"""Testing helpers: a loopback OpenAI-compatible server you can start from a test.

>>> with LoopbackServer(ttft=0.05, tps=200) as server:
...     backend = OpenAIBackend(base_url=server.base_url, api_key="test")
...     server.inject(Fault("status", status=429, retry_after="1"))
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import asdict
from typing import Any

from .server import Fault, ServerConfig

__all__ = ["Fault", "LoopbackServer", "ServerConfig", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MiB (Linux: ``VmHWM``).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that over ``exec``, so a child of a
    big process (a test runner) would report its parent's size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


class LoopbackServer:
    """Runs ``python -m sotflow.testing`` (the loopback server) in a subprocess on 127.0.0.1."""

    def __init__(
        self,
        *,
        ttft: float = 0.0,
        tps: float = 0.0,
        fault_rate: float = 0.0,
        fault_seed: int = 0,
        api_key: str | None = None,
        responder: str | None = None,
        port: int = 0,
    ) -> None:
        self.args = [
            "--port", str(port), "--ttft", str(ttft), "--tps", str(tps),
            "--fault-rate", str(fault_rate), "--fault-seed", str(fault_seed),
        ]  # fmt: skip
        if api_key:
            self.args += ["--api-key", api_key]
        if responder:
            self.args += ["--responder", responder]
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self._stderr: Any = None

    def start(self, timeout_s: float = 20.0) -> LoopbackServer:
        # Kept open for the server's lifetime so a failed start can show its stderr.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sotflow.testing", *self.args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        # Wait for the "listening on" line at most timeout_s (readline alone would block
        # forever on a server that hangs before printing it).
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if "listening on" not in line:
            self.stop()
            self._stderr.seek(0)
            raise RuntimeError(f"the loopback server did not start: {self._stderr.read()[-2000:]}")
        self.base_url = line.strip().rsplit(" ", 1)[-1]
        return self

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _control(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            f"{self.root}/_control/{path}",
            data=data,
            method="POST" if payload is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def inject(self, *faults: Fault | dict[str, Any]) -> None:
        """Queue faults; each applies to the next matching request(s)."""
        items = [asdict(f) if isinstance(f, Fault) else f for f in faults]
        self._control("faults", {"faults": items})

    def configure(self, **settings: Any) -> None:
        self._control("config", settings)

    def stats(self) -> dict[str, Any]:
        return self._control("stats")  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._control("reset", {})

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
