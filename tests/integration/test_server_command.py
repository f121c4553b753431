"""``python -m sotflow.testing``: the loopback server as a command a person runs."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request


def test_python_m_sotflow_testing_starts_the_server_without_warnings() -> None:
    process = subprocess.Popen(
        [sys.executable, "-W", "default", "-m", "sotflow.testing", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        base_url = line.split()[-1]
        with urllib.request.urlopen(f"{base_url}/models", timeout=10) as response:
            assert json.loads(response.read())["data"]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    # `python -m sotflow.testing.server` printed a RuntimeWarning about a double import.
    assert "Warning" not in stderr, stderr
