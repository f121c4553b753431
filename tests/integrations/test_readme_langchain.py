"""The README's LangChain snippets run as written, against the loopback server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sotflow.testing import LoopbackServer

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # the last snippet loads the bundled local model


def langchain_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### LangChain\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def sot_server() -> Iterator[LoopbackServer]:
    with LoopbackServer(responder="sotflow.testing.responders:sot_responder") as server:
        yield server


def test_the_langchain_snippets_run_as_written(sot_server: LoopbackServer) -> None:
    (snippet,) = langchain_snippets()
    env = {
        **os.environ,
        "OPENAI_BASE_URL": sot_server.base_url,
        "OPENAI_API_KEY": "sk-readme",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", snippet],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'name': 'get_weather', 'args': {'location': 'Oslo'}" in done.stdout
    assert "title='stretching' minutes=5" in done.stdout
    for noise in ("Unclosed", "ResourceWarning", "Warning:"):
        assert noise not in done.stderr, done.stderr[-3000:]


def test_the_langchain_example_runs_offline_without_warnings() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-X", "dev", "langchain_pipeline.py"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT / "examples",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "strategy sot" in done.stdout and "'name': 'word_count'" in done.stdout
    assert "2 answers in a batch" in done.stdout
    assert done.stderr == "", done.stderr[-3000:]
