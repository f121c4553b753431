"""Crashes, Ctrl-C and ``--resume``: every id exactly once, answered, on whole lines."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from sotflow.testing import Fault, LoopbackServer

from .conftest import (
    CLI,
    ROOT,
    Runner,
    Running,
    count_lines,
    read_records,
    wait_for,
    write_jsonl,
)


def questions(n: int) -> list[dict[str, str]]:
    return [{"id": f"q{i:02d}", "question": f"Case {i}: what should one weigh?"} for i in range(n)]


def check_complete(out: Path, ids: list[str]) -> list[dict]:
    records = read_records(out)  # also: no broken line anywhere
    counts = Counter(r["id"] for r in records)
    assert sorted(counts) == sorted(ids), "every id is in the file"
    twice = [k for k, v in counts.items() if v > 1]
    assert not twice, f"ids written twice: {twice}"
    assert all(r["error"] is None and r["answer"] for r in records)
    return records


def test_resume_redoes_failed_records_and_never_writes_an_id_twice(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = questions(5)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    loopback.inject(Fault(kind="status", status=400, match="Case 3:"))
    args = ["batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct"]
    first = cli(*args)
    assert first.code == 1
    assert [r["id"] for r in read_records(out) if r["error"]] == ["q03"]

    loopback.reset()
    again = cli(*args, "--resume")
    assert again.code == 0, again.stderr
    assert "4 answered kept, 1 failed or broken records to redo" in again.stderr
    assert "1 answered, 0 failed, 4 already done (of 5)" in again.stderr
    assert loopback.stats()["requests"] == 1  # only the failed one was asked again
    check_complete(out, [r["id"] for r in rows])

    # Resuming a complete file asks nothing and changes nothing.
    before = out.read_bytes()
    loopback.reset()
    assert cli(*args, "--resume").code == 0
    assert loopback.stats()["requests"] == 0
    assert out.read_bytes() == before


@pytest.mark.slow
def test_kill_9_mid_run_then_resume(
    env: dict[str, str], cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = questions(30)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    # Paced like a slow API: ~0.4 s a question, two at a time, so ~6 s for all 30.
    loopback.configure(ttft=0.05, tps=1000.0)
    args = ["batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct"]
    with Running([*args, "--concurrency", "2"], env) as running:
        wait_for(lambda: count_lines(out) >= 6, timeout=30, what="6 lines written")
        os.kill(running.pid, signal.SIGKILL)
        assert running.wait(timeout=10) == -signal.SIGKILL
    written = read_records(out)  # what a crash leaves is whole lines only
    assert 6 <= len(written) < 30
    kept = out.read_bytes()
    # A crash in the middle of a write leaves half a line; simulate one.
    with out.open("ab") as fh:
        fh.write(b'{"id": "q29", "question": "Case 29: what sh')

    loopback.configure(ttft=0.0, tps=0.0)
    loopback.reset()
    resumed = cli(*args, "--resume")
    assert resumed.code == 0, resumed.stderr
    assert f"{len(written)} answered kept, 1 failed or broken records to redo" in resumed.stderr
    records = check_complete(out, [r["id"] for r in rows])
    # What was answered before the crash is kept byte for byte, and not asked again.
    assert out.read_bytes().startswith(kept)
    assert loopback.stats()["requests"] == 30 - len(written)
    assert len(records) == 30


def resume_command(stderr: str) -> list[str]:
    """The command the CLI printed for resuming, as argv for this checkout's CLI."""
    lines = stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if "continue with:" in line)
    argv = shlex.split(lines[at + 1])
    assert argv[0] == "sotflow"
    assert "--resume" in argv
    return [*CLI, *argv[1:]]


@pytest.mark.slow
def test_ctrl_c_finishes_in_flight_work_and_prints_the_resume_command(
    env: dict[str, str], loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = questions(20)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    loopback.configure(ttft=0.05, tps=1000.0)
    with Running(
        ["batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct",
         "--concurrency", "2"],
        env,
    ) as running:  # fmt: skip
        wait_for(lambda: count_lines(out) >= 3, timeout=30, what="3 lines written")
        running.send_signal(signal.SIGINT)
        code = running.wait(timeout=30)
    stderr = running.stderr
    assert code == 130, stderr
    assert "Traceback" not in stderr
    written = read_records(out)
    assert 3 <= len(written) < 20
    stats = loopback.stats()
    # The two questions in flight were allowed to finish (no cut connections), and
    # every answer the server completed is in the file.
    assert stats["disconnects"] == 0
    assert stats["completed"] == len(written)
    assert f"{20 - len(written)} item(s) not answered yet" in stderr

    command = resume_command(stderr)
    loopback.configure(ttft=0.0, tps=0.0)
    loopback.reset()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    check_complete(out, [r["id"] for r in rows])
    assert loopback.stats()["requests"] == 20 - len(written)


@pytest.mark.slow
def test_second_ctrl_c_cancels_in_flight_work(
    env: dict[str, str], loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = questions(6)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    # The first answers at once; the others would take 30 s each.
    for row in rows[1:]:
        loopback.inject(Fault(kind="delay", delay_s=30.0, match=row["question"]))
    with Running(
        ["batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct",
         "--concurrency", "2", "--grace", "60"],
        env,
    ) as running:  # fmt: skip
        wait_for(lambda: count_lines(out) >= 1, timeout=30, what="the fast answer")
        wait_for(lambda: loopback.stats()["in_flight"] == 2, timeout=10, what="2 calls in flight")
        running.send_signal(signal.SIGINT)
        # Two signals sent back to back may reach the process as one; wait for the first
        # to be taken before sending the second.
        wait_for(lambda: "stopping" in running.stderr, timeout=10, what="the first Ctrl-C")
        second = time.monotonic()
        running.send_signal(signal.SIGINT)
        code = running.wait(timeout=30)
    stderr = running.stderr
    assert code == 130, stderr
    # Cancelled at once by the second Ctrl-C, not after the 60 s grace period.
    assert time.monotonic() - second < 10
    assert [r["id"] for r in read_records(out)] == ["q00"]
    wait_for(lambda: loopback.stats()["in_flight"] == 0, timeout=10, what="calls to be cut")
    assert loopback.stats()["disconnects"] == 2
    assert "5 item(s) not answered yet" in stderr


def test_ctrl_c_with_output_on_stdout_offers_no_resume_command(
    env: dict[str, str], loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = questions(4)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    for row in rows[1:]:
        loopback.inject(Fault(kind="hang", match=row["question"]))
    with Running(
        ["batch", str(source), "-o", "-", "--prefill", "--strategy", "direct", "--grace", "0.1"],
        env,
    ) as running:
        wait_for(lambda: loopback.stats()["in_flight"] == 3, timeout=30, what="3 hung calls")
        running.send_signal(signal.SIGINT)
        code = running.wait(timeout=30)
    stdout, stderr = running.stdout, running.stderr
    assert code == 130, stderr
    assert [json.loads(line)["id"] for line in stdout.splitlines()] == ["q00"]
    assert "3 item(s) not answered yet" in stderr
    assert "continue with:" not in stderr and "sotflow batch" not in stderr  # nothing to rerun
    assert "-o FILE" in stderr


def test_ctrl_c_during_ask_exits_130_without_a_traceback(
    env: dict[str, str], loopback: LoopbackServer
) -> None:
    loopback.inject(Fault(kind="hang"))
    with Running(["ask", "hello?", "--prefill", "--strategy", "direct"], env) as running:
        wait_for(lambda: loopback.stats()["in_flight"] == 1, timeout=30, what="the call")
        running.send_signal(signal.SIGINT)
        code = running.wait(timeout=30)
    stdout, stderr = running.stdout, running.stderr
    assert code == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert stdout == ""
