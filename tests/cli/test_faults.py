"""``sotflow batch`` against a server that fails: retries, error records, fatal errors."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sotflow.testing import Fault, LoopbackServer

from .conftest import RESPONDER, Runner, clean_env, read_records, write_jsonl

QUESTIONS = [f"Item {i}: what should a careful person check first?" for i in range(6)]


def batch_direct(cli: Runner, source: Path, out: Path, *extra: str) -> list[dict]:
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct", *extra)
    assert result.code == 0, result.stderr
    return read_records(out)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="status", status=429, retry_after="0.2", times=2),
        Fault(kind="status", status=500, times=2),
        Fault(kind="drop", times=2),
        Fault(kind="malformed", times=2),
    ],
    ids=["429", "500", "drop", "malformed"],
)
def test_retried_faults_succeed_and_record_retries(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path, fault: Fault
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in QUESTIONS])
    fault.match = "Item 2:"
    loopback.inject(fault)
    records = {r["id"]: r for r in batch_direct(cli, source, tmp_path / "out.jsonl")}
    assert len(records) == 6
    assert all(r["error"] is None and r["answer"] for r in records.values())
    # Two failed attempts, then the third answered; nobody else was retried.
    assert (records["3"]["calls"], records["3"]["retries"]) == (1, 2)
    assert [(r["calls"], r["retries"]) for i, r in records.items() if i != "3"] == [(1, 0)] * 5
    stats = loopback.stats()
    assert stats["faults"] == 2
    assert stats["requests"] == 6 + 2


def test_max_retries_is_honoured(cli: Runner, loopback: LoopbackServer, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in QUESTIONS[:2]])
    loopback.inject(Fault(kind="status", status=500, match="Item 1:", times=5))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct"]
    result = cli(*args, "--max-retries", "1")
    assert result.code == 1, result.stderr
    by_id = {r["id"]: r for r in read_records(out)}
    assert by_id["2"]["error"]["type"] == "ServerError"
    assert (by_id["2"]["calls"], by_id["2"]["retries"]) == (1, 1)  # the try and one retry
    assert by_id["1"]["error"] is None
    assert loopback.stats()["requests"] == 3


def test_attempt_timeout_is_retried(cli: Runner, loopback: LoopbackServer, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in QUESTIONS[:3]])
    loopback.inject(Fault(kind="hang", match="Item 1:"))
    records = batch_direct(cli, source, tmp_path / "out.jsonl", "--timeout", "0.5")
    by_id = {r["id"]: r for r in records}
    assert all(r["error"] is None for r in records)
    assert (by_id["2"]["calls"], by_id["2"]["retries"]) == (1, 1)
    assert by_id["2"]["latency_s"] >= 0.5


def test_retries_in_sot_are_counted_per_call(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": QUESTIONS[0]}])
    # Fail the skeleton call twice (only its prompt asks for an outline's first points).
    loopback.inject(Fault(kind="status", status=503, retry_after_ms="50", times=2))
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--strategy", "sot")
    assert result.code == 0, result.stderr
    (record,) = read_records(out)
    assert record["error"] is None and record["strategy"] == "sot"
    # One call for the skeleton and one per point; the skeleton's two retries apart.
    assert record["calls"] == 1 + len(record["points"])
    assert record["retries"] == 2


@pytest.mark.parametrize("strategy", ["direct", "sot"])
def test_non_retryable_400_fails_only_that_item(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path, strategy: str
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in QUESTIONS])
    # For SoT this fails the skeleton call (the first request carrying the question).
    loopback.inject(Fault(kind="status", status=400, match="Item 4:", times=5))
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--strategy", strategy)
    assert result.code == 1, result.stderr
    records = {r["id"]: r for r in read_records(out)}
    assert len(records) == 6
    failed = records.pop("5")
    assert failed["error"]["type"] == "BadRequestError"
    assert "400" in failed["error"]["message"]
    assert (failed["calls"], failed["retries"]) == (1, 0)  # a 400 is not retried
    assert failed["answer"] is None and failed["points"] is None
    assert failed["question"] == QUESTIONS[4]
    assert failed["strategy"] == strategy
    assert all(r["error"] is None and r["answer"] for r in records.values())
    assert "5 answered, 1 failed" in result.stderr
    sent = sum(r["calls"] + r["retries"] for r in records.values())
    assert loopback.stats()["requests"] == 1 + sent


@pytest.fixture(scope="module")
def guarded() -> Iterator[LoopbackServer]:
    """A server that wants a key the CLI will not have."""
    with LoopbackServer(api_key="the-right-key", responder=RESPONDER) as server:
        yield server


@pytest.mark.parametrize("strategy", ["direct", "sot", "auto"])
def test_a_bad_api_key_stops_early_with_exit_2(
    cli: Runner, guarded: LoopbackServer, tmp_path: Path, strategy: str
) -> None:
    questions = [f"What are the best tips, part {i}?" for i in range(40)]
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in questions])
    out = tmp_path / "out.jsonl"
    guarded.reset()
    env = clean_env(
        OPENAI_BASE_URL=guarded.base_url, OPENAI_API_KEY="a-wrong-key", SOTFLOW_MODEL="m"
    )
    result = cli(
        "batch", str(source), "-o", str(out), "--prefill", "--strategy", strategy,
        "--concurrency", "2", env_override=env,
    )  # fmt: skip
    requests = guarded.stats()["requests"]
    assert result.code == 2, result.stderr
    assert "stopped early" in result.stderr
    assert "401" in result.stderr and "OPENAI_API_KEY" in result.stderr
    assert "a-wrong-key" not in result.stderr  # never echo a secret
    # It stopped launching: a couple of calls, not forty identical failures.
    assert requests <= 4
    records = read_records(out)
    assert 1 <= len(records) <= 4
    assert all(r["error"]["type"] == "AuthenticationError" for r in records)
    assert "--resume" in result.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on exit: nothing listens there


def test_a_dead_endpoint_stops_the_batch_and_resume_finishes_it(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = [{"id": f"q{i}", "question": f"Item {i}: what are the first things to check?"}
            for i in range(40)]  # fmt: skip
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    args = ["batch", str(source), "-o", str(out), "--prefill", "--concurrency", "4"]
    env = clean_env(OPENAI_BASE_URL=dead, OPENAI_API_KEY="a-secret-key", SOTFLOW_MODEL="m")
    result = cli(*args, env_override=env)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr and "a-secret-key" not in result.stderr
    assert "OPENAI_BASE_URL" in result.stderr and "--base-url" in result.stderr
    assert dead in result.stderr
    assert "--resume" in result.stderr
    tried = read_records(out)
    # It gave up on the questions in flight (4 at a time), not on all forty one by one.
    assert 1 <= len(tried) <= 8
    assert all(r["error"]["type"] in ("EndpointUnreachableError", "APIConnectionError")
               for r in tried)  # fmt: skip
    assert any(r["error"]["type"] == "EndpointUnreachableError" for r in tried)

    # The same command against a live server: every question once, all answered.
    live = clean_env(OPENAI_BASE_URL=loopback.base_url, OPENAI_API_KEY="k", SOTFLOW_MODEL="m")
    result = cli(*args, "--resume", env_override=live)
    assert result.code == 0, result.stderr
    records = read_records(out)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
    assert all(r["error"] is None for r in records)


def test_a_dead_endpoint_with_retries_off_stops_after_a_few_questions(
    cli: Runner, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in QUESTIONS * 5])
    out = tmp_path / "out.jsonl"
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    result = cli(
        "batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct",
        "--concurrency", "1", "--max-retries", "0",
        env_override=clean_env(OPENAI_BASE_URL=dead, SOTFLOW_MODEL="m"),
    )  # fmt: skip
    assert result.code == 2, result.stderr
    types = [r["error"]["type"] for r in read_records(out)]
    # One question at a time, no retries: three refusals, then the fourth gives up.
    assert types == ["APIConnectionError"] * 3 + ["EndpointUnreachableError"]
