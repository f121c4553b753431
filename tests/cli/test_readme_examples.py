"""The README's examples run as written: every ```python block, and its shell commands.

Each runs in its own process, from a scratch copy of the repository root's
``examples/`` (so the paths in the README resolve and the files it writes land in a
temporary folder), with ``OPENAI_BASE_URL`` pointing at the session's loopback server:
the SDK and the CLI find it the way they would find any API.

The two install/test commands are checked by ``tests/test_readme.py`` (they are what CI
runs); the blocks named in ``NOT_RUN`` are not run here, each for the reason given, and
the sections in ``RUN_ELSEWHERE`` have a test of their own that runs their blocks and
checks what they print (run here too, they would only cost the suite a second time).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sotflow.testing import LoopbackServer

from .conftest import ROOT, clean_env, read_records

README = (ROOT / "README.md").read_text(encoding="utf-8")

# Blocks whose first line starts like this are not run here, and why.
NOT_RUN = {
    "pip install torch": "the install command: CI runs it (tests/test_readme.py)",
    "python -m pytest": "the test command: this very suite",
    "sotflow serve --upstream": "proxies a real API (api.openai.com); tests/test_proxy.py runs "
    "the command in front of the loopback server",
    "sotflow train-heads": "trains on the reader's own model folder (path/to/model); "
    "tests/cli/test_train_heads.py runs the command on a tiny model",
}


# Sections whose ```python blocks another test runs as written, and which test.
RUN_ELSEWHERE = {
    "LangChain": "tests/integrations/test_readme_langchain.py",
    "On a Ray cluster": "tests/integrations/test_readme_ray.py",
}
# Sections whose shell commands need what only their own test sets up (a Ray cluster).
SHELL_RUN_ELSEWHERE = {"On a Ray cluster": "tests/integrations/test_readme_ray.py"}


def blocks(language: str) -> list[tuple[str, str]]:
    """(heading, code) of every fenced block in ``language``, in README order."""
    found = []
    heading = ""
    for match in re.finditer(r"^(#+ [^\n]+)$|^```(\w+)\n(.*?)^```", README, re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        elif match.group(2) == language:
            found.append((heading, match.group(3)))
    return found


def block_id(heading: str, code: str) -> str:
    return f"{heading}: {code.strip().splitlines()[0][:40]}"


PYTHON = [(heading, code) for heading, code in blocks("python") if heading not in RUN_ELSEWHERE]
SHELL = [
    (heading, code)
    for heading, code in blocks("bash")
    if not any(code.lstrip().startswith(prefix) for prefix in NOT_RUN)
    and heading not in SHELL_RUN_ELSEWHERE
]


def test_sections_run_elsewhere_still_exist_and_have_their_test() -> None:
    sections = {heading for heading, _ in blocks("bash")}
    for heading, test in SHELL_RUN_ELSEWHERE.items():
        assert heading in sections, f"no shell block under {heading!r} any more"
        assert (ROOT / test).is_file(), test


def test_every_python_block_is_run_here_or_by_its_sections_own_test() -> None:
    sections = {heading for heading, _ in blocks("python")}
    assert PYTHON and sections - set(RUN_ELSEWHERE), "some blocks are run here"
    for heading, test in RUN_ELSEWHERE.items():
        assert heading in sections, f"no python block under {heading!r} any more"
        assert f"# {heading}\\n" in (ROOT / test).read_text(encoding="utf-8"), test


def needs_a_local_model(code: str) -> bool:
    return "LocalBackend(" in code


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A stand-in for the repository root: the examples the README names, nothing else."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


def run(
    args: list[str], workdir: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("heading", "code"),
    [
        pytest.param(
            h, c, id=block_id(h, c), marks=[pytest.mark.slow] if needs_a_local_model(c) else []
        )
        for h, c in PYTHON
    ],
)
def test_python_block_runs(
    heading: str, code: str, loopback: LoopbackServer, workdir: Path
) -> None:
    env = clean_env(OPENAI_BASE_URL=loopback.base_url, OPENAI_API_KEY="sk-readme")
    done = run([sys.executable, "-c", code], workdir, env, timeout=600)
    assert done.returncode == 0, f"{heading}:\n{done.stdout}\n{done.stderr}"
    if not needs_a_local_model(code):
        assert loopback.stats()["requests"] > 0, "it talked to the configured API"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize(
    ("heading", "code"), [pytest.param(h, c, id=block_id(h, c)) for h, c in SHELL]
)
def test_shell_block_runs(heading: str, code: str, loopback: LoopbackServer, workdir: Path) -> None:
    lines = [line for line in code.strip().splitlines() if line.strip()]
    env = clean_env(OPENAI_BASE_URL=loopback.base_url)
    background = [line for line in lines if line.rstrip().endswith("&")]
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for line in background:
            # A server the block starts for itself: on a free port, not the README's
            # 8000 (another program may hold it), and waited for, so that the commands
            # after it do not race its start.
            port = free_port()
            lines = [other.replace("8000", str(port)) for other in lines if other != line]
            command = line.rstrip().rstrip("&").replace("8000", str(port))
            # Paced like a hosted API in the README, to show SoT's speed-up; here the
            # simulated tokens come 40x faster, or the suite would wait a minute for them.
            command = command.replace("--tps 50", "--tps 2000")
            servers.append(
                subprocess.Popen(
                    ["bash", "-c", f"exec {command}"],
                    cwd=workdir,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_for_port(port)
        script = "set -euo pipefail\n" + "\n".join(lines)
        done = run(["bash", "-c", script], workdir, env, timeout=300)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
    assert done.returncode == 0, f"{heading}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    for line in lines:
        match = re.search(r"sotflow batch (\S+) -o (\S+)", line)
        if match:  # every question of the input has its record
            written = read_records(workdir / match.group(2))
            asked = (workdir / match.group(1)).read_text(encoding="utf-8").splitlines()
            assert len(written) == len([q for q in asked if q.strip()])
            assert all(record["error"] is None for record in written)
