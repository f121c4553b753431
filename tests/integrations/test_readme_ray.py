"""The README's Ray snippets run as written, against the loopback server: the Python one
(Ray Data with ``AnswerQuestions`` and cluster-wide limits) and the first command line
(``sotflow batch ... --ray`` starting a local cluster of its own). Each starts its own
Ray, as a reader's would, so neither joins the session's cluster."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sotflow.testing import LoopbackServer

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # two Ray start-ups


def ray_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## On a Ray cluster\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def sot_server() -> Iterator[LoopbackServer]:
    with LoopbackServer(responder="sotflow.testing.responders:sot_responder") as server:
        yield server


@pytest.fixture
def reader_env(sot_server: LoopbackServer) -> dict[str, str]:
    # A reader's shell: an API configured, no Ray cluster to join (a local one starts).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "SOTFLOW_", "RAY_")) and k != "PYTHONPATH"
    }
    env.update(
        OPENAI_BASE_URL=sot_server.base_url,
        OPENAI_API_KEY="sk-readme",
        PYTHONPATH=str(ROOT),
    )
    return env


def test_the_ray_data_snippet_runs_as_written(reader_env: dict[str, str]) -> None:
    (snippet,) = re.findall(r"```python\n(.*?)```", ray_section(), re.S)
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        timeout=300,
        env=reader_env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(done.stdout.splitlines())
    assert len(lines) == 2, done.stdout
    # Each row keeps its own field (team) beside the ones `sotflow batch` adds.
    assert lines[0].startswith("1 ops sot 1.") and lines[1].startswith("2 hr sot 1."), lines


def test_the_first_command_line_runs_as_written(reader_env: dict[str, str], tmp_path: Path) -> None:
    blocks = re.findall(r"```bash\n(.*?)```", ray_section(), re.S)
    command = shlex.split(blocks[0].splitlines()[0], comments=True)
    assert command[:2] == ["sotflow", "batch"] and command[-1] == "--ray", command
    questions = [
        "What are good habits for learning a new language?",
        "Write a haiku about autumn rain.",
    ]
    (tmp_path / "questions.jsonl").write_text(
        "".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in enumerate(questions)),
        encoding="utf-8",
    )
    # The console script of this interpreter, on this checkout (PYTHONPATH).
    runner = [sys.executable, "-m", "sotflow.cli", *command[1:]]
    done = subprocess.run(
        runner, capture_output=True, text=True, timeout=300, env=reader_env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 answered, 0 failed (of 2)" in done.stderr
    assert "ray: 2 workers on 1 node" in done.stderr
    records = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["0", "1"]
    assert all(r["error"] is None and r["answer"] for r in records)
