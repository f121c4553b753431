"""Every example runs offline (a scripted stand-in or the loopback server) and prints
what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("best_of_n.py", "best of 4: 'Back in the saddle by tonight.'"),
        ("self_consistency.py", "answer: 27"),
        ("refine.py", "stopped: accepted"),
        ("tree_search.py", "answer: 2 * (3 + 4) = 14"),
        ("chain.py", "step 2 (refine)"),
        ("rejection.py", "accepted sample 3 of 4"),
        pytest.param("quickstart.py", "'What is 17 * 23?' -> direct", marks=pytest.mark.slow),
        # langchain_pipeline.py: tests/integrations/test_readme_langchain.py, warnings too.
    ],
)
def test_example_runs_offline(name: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    root = str(EXAMPLES.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["SOTFLOW_EXAMPLES_TPS"] = "1000"  # what the examples print, not the wait for it
    done = subprocess.run(
        [sys.executable, name], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout
