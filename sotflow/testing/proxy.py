"""``sotflow serve`` in a subprocess, for tests and benchmarks that talk to it over HTTP."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys

__all__ = ["ProxyProcess"]


class ProxyProcess:
    """``python -m sotflow.serve --port 0 ARGS`` in a subprocess; ``url`` once it prints
    where it serves. ``capture_stderr=False`` lets its log through (a long, busy run
    would otherwise fill the pipe and stall it)."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, capture_stderr: bool = True
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sotflow.serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stderr else None,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(60)
        line = self.process.stdout.readline() if ready else ""
        if " on http" not in line:
            self.stop()
            raise RuntimeError(f"the proxy did not start: {line!r} {self.stderr()}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read()

    def stop(self) -> str:
        """Stops it; returns everything it wrote to stderr (its log), if captured."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        err = self.process.stderr.read() if self.process.stderr else ""
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return err
