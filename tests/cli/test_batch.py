"""``sotflow batch`` end to end: inputs, the output records, strategies, order, limits."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sotflow.testing import Fault, LoopbackServer

from .conftest import (
    DIRECT_QUESTIONS,
    SOT_QUESTIONS,
    Runner,
    Running,
    count_lines,
    read_records,
    wait_for,
    write_jsonl,
)

DAG_QUESTION = "Compare renting and buying a home, then recommend one for a young family."
OUTPUT_FIELDS = (
    "id", "question", "strategy", "answer", "points", "usage", "latency_s", "calls", "retries",
    "error", "warnings",
)  # fmt: skip


def check_answered(record: dict[str, Any]) -> None:
    """Every output field is there with the right type, for an answered item."""
    for name in OUTPUT_FIELDS:
        assert name in record, f"{name!r} missing from {record}"
    assert isinstance(record["id"], str)  # strings throughout, whatever the input gave
    assert isinstance(record["question"], str) and record["question"]
    assert record["strategy"] in ("sot", "sot-dag", "direct")
    assert isinstance(record["answer"], str) and record["answer"].strip()
    usage = dict(record["usage"])
    # The loopback server reports usage, streamed or not: nothing is estimated.
    assert usage.pop("estimated") is False
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all(isinstance(v, int) and v > 0 for v in usage.values())
    assert record["warnings"] == []
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert isinstance(record["latency_s"], float) and record["latency_s"] > 0
    assert isinstance(record["calls"], int) and record["calls"] >= 1
    assert record["retries"] == 0  # no faults here
    assert record["error"] is None
    if record["strategy"] == "direct":
        assert record["points"] is None
    else:
        points = record["points"]
        assert isinstance(points, list) and len(points) >= 2
        for point in points:
            assert set(point) == {"title", "text"}
            assert isinstance(point["title"], str) and point["title"]
            assert isinstance(point["text"], str) and point["text"]
            # The assembled answer is made of the points, in order.
            assert point["text"] in record["answer"]
        # One skeleton call plus one call per point.
        assert record["calls"] == len(points) + 1


def test_jsonl_happy_path_every_field_and_carried_fields(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = [
        {"id": "a", "question": SOT_QUESTIONS[0], "category": "advice", "answer": "gold"},
        {"id": 7, "prompt": SOT_QUESTIONS[1], "meta": {"source": "x", "n": [1, 2]}},
        {"question": DIRECT_QUESTIONS[1], "input_note": "kept as is"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--strategy", "sot")
    assert result.code == 0, result.stderr
    records = {r["id"]: r for r in read_records(out)}
    assert set(records) == {"a", "7", "3"}  # a number as text; no id: the line number
    for record in records.values():
        check_answered(record)
        assert record["strategy"] == "sot"
    # Carried fields; one that clashes with an output field is kept as input_<name>.
    assert records["a"]["category"] == "advice"
    assert records["a"]["input_answer"] == "gold"
    assert records["a"]["answer"] != "gold"
    assert records["7"]["question"] == SOT_QUESTIONS[1]  # 'prompt' read as the question
    assert records["7"]["meta"] == {"source": "x", "n": [1, 2]}
    assert records["3"]["input_note"] == "kept as is"
    assert loopback.stats()["completed"] == sum(len(r["points"]) + 1 for r in records.values())


def test_text_file_and_stdin(cli: Runner, tmp_path: Path) -> None:
    lines = [SOT_QUESTIONS[0], "", DIRECT_QUESTIONS[1], SOT_QUESTIONS[2]]
    text = tmp_path / "questions.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "from_txt.jsonl"
    result = cli("batch", str(text), "-o", str(out), "--prefill", "--quiet")
    assert result.code == 0, result.stderr
    by_id = {r["id"]: r for r in read_records(out)}
    # Ids are line numbers; the blank line is skipped but still counted.
    assert {i: r["question"] for i, r in by_id.items()} == {
        "1": lines[0],
        "3": lines[2],
        "4": lines[3],
    }
    for record in by_id.values():
        check_answered(record)

    # stdin, JSONL and plain text, output to stdout.
    jsonl = "".join(json.dumps({"id": f"s{i}", "question": q}) + "\n" for i, q in enumerate(lines))
    result = cli("batch", "-", "-o", "-", "--prefill", "--quiet", stdin=jsonl)
    assert result.code == 1, result.stderr  # the blank question is an error record
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == ["s0", "s1", "s2", "s3"]
    (blank,) = [r for r in records if r["error"]]
    assert blank["id"] == "s1" and "line 2" in blank["error"]["message"]
    for record in records:
        if record is not blank:
            check_answered(record)

    result = cli("batch", "-", "-o", "-", "--prefill", "--quiet", stdin="\n".join(lines))
    assert result.code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == ["1", "3", "4"]


def test_stdin_with_a_byte_order_mark_and_crlf_is_still_jsonl(cli: Runner) -> None:
    rows = [{"id": "x", "question": SOT_QUESTIONS[0]}, {"id": "y", "question": DIRECT_QUESTIONS[1]}]
    text = "\ufeff" + "".join(json.dumps(r) + "\r\n" for r in rows)
    result = cli("batch", "-", "-o", "-", "--prefill", "--quiet", stdin=text)
    assert result.code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["id"]: r["question"] for r in records} == {r["id"]: r["question"] for r in rows}


@pytest.mark.parametrize("strategy", ["direct", "sot", "sot-dag"])
def test_fixed_strategy_is_used_for_every_item(cli: Runner, tmp_path: Path, strategy: str) -> None:
    questions = [*SOT_QUESTIONS[:2], DIRECT_QUESTIONS[1], DAG_QUESTION]
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in questions])
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--strategy", strategy)
    assert result.code == 0, result.stderr
    records = read_records(out)
    assert len(records) == 4
    for record in records:
        check_answered(record)
        assert record["strategy"] == strategy


def test_auto_routes_each_question(cli: Runner, tmp_path: Path) -> None:
    questions = [*SOT_QUESTIONS[:2], *DIRECT_QUESTIONS, DAG_QUESTION]
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in questions])
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill")  # default: auto
    assert result.code == 0, result.stderr
    used = {r["question"]: r["strategy"] for r in read_records(out)}
    # What `sotflow route` says each question gets is what batch used.
    routed = cli("route", str(source))
    assert routed.code == 0, routed.stderr
    decided = {json.loads(line)["question"]: json.loads(line)["strategy"] for line in
               routed.stdout.splitlines()}  # fmt: skip
    assert used == decided
    assert set(used.values()) == {"sot", "direct", "sot-dag"}


def test_ordered_keeps_input_order_unordered_writes_as_finished(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    questions = [f"Question number {i}: what is worth knowing?" for i in range(8)]
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in questions])
    # The first item answers a second late, so it finishes last.
    slow = Fault(kind="delay", delay_s=1.0, match="Question number 0:")

    loopback.inject(slow)
    out = tmp_path / "unordered.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct")
    assert result.code == 0, result.stderr
    ids = [r["id"] for r in read_records(out)]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 9)]
    assert ids[-1] == "1", "without --ordered, items are written as they finish"

    loopback.inject(slow)
    out = tmp_path / "ordered.jsonl"
    result = cli(
        "batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct", "--ordered"
    )
    assert result.code == 0, result.stderr
    assert [r["id"] for r in read_records(out)] == [str(i) for i in range(1, 9)]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_is_the_number_of_questions_answered_at_once(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path, concurrency: int
) -> None:
    # Paced so that calls overlap for real; a direct answer is one call per question.
    loopback.configure(ttft=0.05, tps=2000.0)
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in SOT_QUESTIONS])
    out = tmp_path / "out.jsonl"
    result = cli(
        "batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct",
        "--concurrency", str(concurrency),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert len(read_records(out)) == 4
    # A cap, not serialisation: with room for 3 questions, 3 did overlap.
    assert loopback.stats()["peak_in_flight"] == concurrency


@pytest.mark.parametrize("max_calls", [1, 3])
def test_max_calls_caps_model_calls_in_flight_across_fanned_out_questions(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path, max_calls: int
) -> None:
    # SoT fans every question out to its points; the call cap holds across all of them.
    loopback.configure(ttft=0.02, tps=2000.0)
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in SOT_QUESTIONS])
    out = tmp_path / "out.jsonl"
    result = cli(
        "batch", str(source), "-o", str(out), "--prefill", "--strategy", "sot",
        "--concurrency", "4", "--max-calls", str(max_calls),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert len(read_records(out)) == 4
    assert loopback.stats()["peak_in_flight"] == max_calls


def test_sot_questions_fan_out_beyond_the_question_count_by_default(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    loopback.configure(ttft=0.05, tps=2000.0)
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": SOT_QUESTIONS[0]}])
    out = tmp_path / "out.jsonl"
    result = cli(
        "batch", str(source), "-o", str(out), "--prefill", "--strategy", "sot",
        "--concurrency", "1",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    (record,) = read_records(out)
    # One question, all of its points written at once.
    assert loopback.stats()["peak_in_flight"] == len(record["points"]) >= 5


def test_ordered_buffer_is_bounded(
    env: dict[str, str], loopback: LoopbackServer, tmp_path: Path
) -> None:
    # The first item is held back 2 s; the other 99 answer at once. In order mode they
    # wait for it in a buffer of max(64, 4 x concurrency) items, so no more than 64
    # items may be started until the first is written.
    rows = [{"question": f"Ordered {i}: what matters?"} for i in range(100)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    loopback.inject(Fault(kind="delay", delay_s=2.0, match="Ordered 0:"))
    with Running(
        ["batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct",
         "--ordered", "--concurrency", "4", "--quiet"],
        env,
    ) as running:  # fmt: skip
        wait_for(lambda: loopback.stats()["requests"] >= 64, timeout=30, what="64 requests")
        # Until the first item is written, the count must stay at the bound.
        while count_lines(out) == 0 and running.process.poll() is None:
            assert loopback.stats()["requests"] <= 64
            time.sleep(0.02)
        assert running.wait(timeout=60) == 0, running.stderr
    assert [r["id"] for r in read_records(out)] == [str(i) for i in range(1, 101)]


def test_max_tokens_caps_a_direct_answer(cli: Runner, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": DIRECT_QUESTIONS[1]}])
    out = tmp_path / "out.jsonl"
    args = ["batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct"]
    result = cli(*args, "--max-tokens", "20", "--temperature", "0.2")
    assert result.code == 0, result.stderr
    (record,) = read_records(out)
    # The responder writes 300-450 words; the server stops at max_tokens.
    assert record["usage"]["completion_tokens"] == 20
    assert len(record["answer"].split()) == 20
