"""End-to-end fixtures: the real ``sotflow`` CLI in a subprocess, a real HTTP server.

Every test runs ``python -m sotflow.cli`` with ``PYTHONPATH`` set to this checkout (so
the code under test is this one, not whatever the venv's editable install points at)
against one loopback OpenAI-compatible server for the whole session; the server's
faults, counters and pacing are reset before each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from sotflow.testing import LoopbackServer

ROOT = Path(__file__).resolve().parents[2]
RESPONDER = "sotflow.testing.responders:sot_responder"
CLI = (sys.executable, "-m", "sotflow.cli")

# Questions the rule router sends to SoT ("list-noun" and friends) and to a direct
# answer; `test_route_*` checks that the router still agrees, so a change of rules
# shows up there first instead of as a puzzling strategy mix elsewhere.
SOT_QUESTIONS = (
    "What are some good ways to save money on groceries without eating badly?",
    "What habits help people keep their houseplants alive?",
    "What are good ways to meet people after moving to a new city?",
    "What are good habits for learning a new language?",
)
DIRECT_QUESTIONS = (
    "What can parents do to limit their kids' screen time without constant fights?",
    "Write a haiku about autumn rain.",
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run: this checkout first, no inherited model settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "SOTFLOW_")) and k != "PYTHONPATH"
    }
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    # Not a terminal anyway (pipes), but make sure rich does not force colour codes.
    env.pop("FORCE_COLOR", None)
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(responder=RESPONDER) as srv:
        yield srv


@pytest.fixture
def loopback(server: LoopbackServer) -> LoopbackServer:
    """The session's server with no pacing, faults or counts left from earlier tests."""
    server.configure(ttft=0.0, tps=0.0, fault_rate=0.0, fault_seed=0)
    server.reset()
    return server


@pytest.fixture
def env(loopback: LoopbackServer) -> dict[str, str]:
    # These tests are about the commands' mechanics on a server that runs calls side by
    # side: its profile is assumed, not measured (7 probe calls would join every count).
    # Measuring it is tested in tests/integration/test_server_profile.py.
    return clean_env(
        OPENAI_BASE_URL=loopback.base_url,
        OPENAI_API_KEY="test-key",
        SOTFLOW_MODEL="loopback",
        SOTFLOW_SERVER_PROFILE="assume",
    )


Runner = Callable[..., Result]


@pytest.fixture
def cli(env: dict[str, str]) -> Runner:
    """Run the CLI to completion: ``cli("batch", "in.jsonl", "-o", "out.jsonl")``."""

    def run(
        *args: str,
        stdin: str | None = None,
        env_override: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Result:
        done = subprocess.run(
            [*CLI, *args],
            cwd=ROOT,
            env=env_override if env_override is not None else env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    return run


class Running:
    """The CLI started in the background, for tests that signal or kill it mid-run.

    Its stdout and stderr are drained by threads as they come, so a test can wait for
    a line to appear (and the process never blocks on a full pipe).
    """

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [*CLI, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._drains = [
            threading.Thread(target=_drain, args=(self.process.stdout, self._out), daemon=True),
            threading.Thread(target=_drain, args=(self.process.stderr, self._err), daemon=True),
        ]
        for thread in self._drains:
            thread.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        for thread in self._drains:
            thread.join(timeout=5)
        return code

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait(timeout=10)


def _drain(stream: IO[str] | None, sink: list[str]) -> None:
    assert stream is not None
    for line in stream:
        sink.append(line)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every line of an output file, each required to be whole JSON."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "the last line is not whole"
    return [json.loads(line) for line in text.splitlines()]


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
