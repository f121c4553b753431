"""benchmarks/batch_1000.py runs end to end (small and fast here) and reports honestly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, clean_env


@pytest.mark.slow
def test_batch_benchmark_small_run(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "batch_1000.py"), "--n", "40",
         "--concurrency", "16", "--max-calls", "24", "--ttft", "0.01", "--tps", "2000",
         "--unloaded-n", "4",
         "--fault-rate", "0.1", "--keep", str(tmp_path / "files"), "--json", str(results)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| **wall time** (process start to exit) |" in done.stdout
    data = json.loads(results.read_text())
    assert data["answered"] == data["records"] == data["distinct_ids"] == 40
    assert data["duplicated_ids"] == data["missing_ids"] == data["broken_lines"] == 0
    # Every HTTP request is one recorded attempt, and every injected fault one retry.
    assert data["server_requests"] == data["attempts"]
    assert data["server_faults"] > 0
    assert data["retries"] == data["server_faults"]
    # Each record's `calls` is its skeleton and points, retries counted apart.
    assert data["recorded_calls"] == data["calls"]
    assert data["server_peak_in_flight"] <= 24  # the call cap, across 16 questions' points
    assert data["critical_path_s"] > 0 and data["wall_s"] > data["busy_share_s"] > 0
    answers = (tmp_path / "files" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == 40 and all(json.loads(a)["strategy"] == "sot" for a in answers)
