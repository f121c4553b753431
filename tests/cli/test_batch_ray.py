"""``sotflow batch --ray`` end to end: the CLI in a subprocess joins the session's local Ray
cluster, its workers answer against the loopback server. The same JSONL contract as the
single-process batch (compared record by record), the call cap across workers, resume,
a worker killed mid-run, and the usage errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sotflow.testing import Fault, LoopbackServer

from .conftest import (
    DIRECT_QUESTIONS,
    SOT_QUESTIONS,
    Runner,
    Running,
    clean_env,
    count_lines,
    read_records,
    wait_for,
    write_jsonl,
)


def rows(n: int) -> list[dict[str, Any]]:
    questions = [*SOT_QUESTIONS, *DIRECT_QUESTIONS]
    return [{"id": f"q{i:02d}", "question": questions[i % 6], "n": i} for i in range(n)]


def check_once_each(out: Path, ids: list[str]) -> list[dict[str, Any]]:
    records = read_records(out)
    counts = Counter(r["id"] for r in records)
    assert sorted(counts) == sorted(ids), "every id is in the file"
    assert not [k for k, v in counts.items() if v > 1], "an id written twice"
    return records


@pytest.mark.slow
def test_the_same_records_in_input_order_with_the_cap_across_workers(
    cli: Runner, loopback: LoopbackServer, ray_cluster: str, tmp_path: Path
) -> None:
    lines = [json.dumps(row) for row in rows(10)]
    lines.insert(3, "{not json")
    lines.insert(7, json.dumps({"id": "blank", "question": ""}))
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")

    alone = cli("batch", str(source), "-o", str(tmp_path / "alone.jsonl"), "--prefill")
    assert alone.code == 1, alone.stderr  # the two bad lines

    loopback.reset()
    loopback.configure(ttft=0.1)  # calls overlap, so the cap is what holds them back
    out = tmp_path / "ray.jsonl"
    result = cli(
        "batch", str(source), "-o", str(out), "--prefill", "--ordered",
        "--ray", ray_cluster, "--ray-workers", "2", "--max-calls", "3",
        timeout=240,
    )  # fmt: skip
    assert result.code == 1, result.stderr
    assert loopback.stats()["peak_in_flight"] == 3  # two workers, one cap of 3
    assert "10 answered, 2 failed (of 12)" in result.stderr
    assert "ray: 2 workers on 1 node" in result.stderr

    records = read_records(out)
    ids = [r["id"] for r in records]
    assert ids == ["q00", "q01", "q02", "4", "q03", "q04", "q05", "blank", "q06", "q07", "q08",
                   "q09"]  # fmt: skip
    bad = {r["id"]: r["error"] for r in records if r["error"]}
    assert bad["4"]["type"] == "InputError" and "line 4: not valid JSON" in bad["4"]["message"]
    assert bad["blank"]["type"] == "InputError"
    # Record for record what the single-process batch wrote, but for the timing.
    expected = {r["id"]: r for r in read_records(tmp_path / "alone.jsonl")}
    for record in records:
        mine, theirs = dict(record), dict(expected[record["id"]])
        assert mine.pop("latency_s") >= 0 and theirs.pop("latency_s") >= 0
        assert mine == theirs


@pytest.mark.slow
def test_resume_on_ray_keeps_what_is_done_and_redoes_the_rest(
    cli: Runner, loopback: LoopbackServer, ray_cluster: str, tmp_path: Path
) -> None:
    all_rows = rows(8)
    source = write_jsonl(tmp_path / "in.jsonl", all_rows)
    out = tmp_path / "out.jsonl"
    loopback.inject(Fault(kind="status", status=400, match=DIRECT_QUESTIONS[1], times=10))
    first = cli("batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct")
    assert first.code == 1
    failed = [r["id"] for r in read_records(out) if r["error"]]
    assert failed == ["q05"]
    with out.open("a", encoding="utf-8") as fh:
        fh.write('{"id": "q07", "answer": "half a li')  # a crash mid-line
    kept = [line for line in out.read_text().splitlines() if '"error": null' in line]

    loopback.reset()
    again = cli(
        "batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct",
        "--resume", "--ray", ray_cluster, "--ray-workers", "2",
        timeout=240,
    )  # fmt: skip
    assert again.code == 0, again.stderr
    assert "1 answered, 0 failed, 7 already done (of 8)" in again.stderr
    records = check_once_each(out, [r["id"] for r in all_rows])
    assert all(r["error"] is None for r in records)
    assert out.read_text().splitlines()[: len(kept)] == kept  # untouched, in place


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing_and_writes_nothing_twice(
    env: dict[str, str], loopback: LoopbackServer, ray_cluster: str, tmp_path: Path
) -> None:
    import ray

    all_rows = rows(40)
    source = write_jsonl(tmp_path / "in.jsonl", all_rows)
    out = tmp_path / "out.jsonl"
    loopback.configure(ttft=0.3)  # long enough to kill a worker with calls in flight
    args = ["batch", str(source), "-o", str(out), "--prefill", "--concurrency", "8",
            "--ray", ray_cluster, "--ray-workers", "2"]  # fmt: skip
    with Running(args, env) as running:
        wait_for(lambda: count_lines(out) >= 5, timeout=180, what="the first answers")
        names = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("sotflow-batch-")]  # fmt: skip
        assert len(names) == 2
        worker = ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])
        victim = ray.get(worker.describe.remote())["pid"]
        busy = loopback.stats()["in_flight"]
        os.kill(victim, signal.SIGKILL)
        code = running.wait(timeout=240)
    assert code == 0, running.stderr
    assert busy > 0
    records = check_once_each(out, [r["id"] for r in all_rows])
    assert all(r["error"] is None and r["answer"] for r in records)
    assert "40 answered, 0 failed (of 40)" in running.stderr
    assert "1 lost" in running.stderr and "questions redone" in running.stderr


@pytest.mark.slow
def test_usage_errors_leave_the_output_alone(cli: Runner, ray_cluster: str, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(2))
    out = tmp_path / "out.jsonl"
    lone = cli("batch", str(source), "-o", str(out), "--ray-workers", "2")
    assert lone.code == 2 and "--ray-workers needs --ray" in lone.stderr

    nobody = cli("batch", str(source), "-o", str(out), "--ray=127.0.0.1:1")
    assert nobody.code == 2
    assert "no Ray cluster answers at '127.0.0.1:1'" in nobody.stderr

    # No API configured on the driver: the workers say so, before anything is written.
    bare = clean_env()
    result = cli(
        "batch", str(source), "-o", str(out), "--backend", "openai", "--ray", ray_cluster,
        env_override=bare, timeout=240,
    )  # fmt: skip
    assert result.code == 2, result.stderr
    assert "the Ray workers could not start" in result.stderr
    assert "OPENAI_BASE_URL" in result.stderr
    assert not out.exists()


def test_without_ray_the_flag_says_how_to_install(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(1))
    code = (
        "import sys; sys.modules['ray'] = None; from sotflow.cli import main; "
        f"main(['batch', {str(source)!r}, '-o', {str(tmp_path / 'out.jsonl')!r}, '--ray'])"
    )
    env = clean_env(OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_API_KEY="k")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--ray needs Ray: pip install 'sotflow[ray]'" in done.stderr


@pytest.mark.anyio
async def test_an_id_is_written_once_whoever_answers(tmp_path: Path) -> None:
    """The driver's guard: an answerer that hands back an id already written (a redone
    item's stale answer, say) does not get it written twice."""
    from sotflow.cli.batch import run_batch
    from sotflow.cli.records import InputItem, OutputWriter, error_record
    from sotflow.cli.report import BatchStats

    items = [InputItem("a", 1, "q1"), InputItem("b", 2, "q2"), InputItem("c", 3, "q3")]

    async def answer(item: InputItem) -> dict[str, Any]:
        same = items[0] if item.id == "b" else item
        return error_record(same, "Test", "answered")

    writer = OutputWriter(str(tmp_path / "out.jsonl"), append=False)
    for ordered in (False, True):
        outcome = await run_batch(
            items, answer=answer, writer=writer, stats=BatchStats(total=3),
            concurrency=2, ordered=ordered,
        )  # fmt: skip
        assert outcome.unfinished == 0
    writer.close()
    written = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().split("\n")
               if line]  # fmt: skip
    assert sorted(written) == ["a", "a", "c", "c"]  # once per run, never twice in one
