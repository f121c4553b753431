"""What ``sotflow batch`` tells a person on stderr: summary, cost, progress bar, --quiet."""

from __future__ import annotations

import json
import os
import pty
import re
import statistics
import subprocess
from pathlib import Path

import pytest

from sotflow.testing import Fault, LoopbackServer

from .conftest import CLI, DIRECT_QUESTIONS, ROOT, SOT_QUESTIONS, Runner, read_records, write_jsonl


@pytest.fixture
def source(tmp_path: Path) -> Path:
    questions = [*SOT_QUESTIONS, *DIRECT_QUESTIONS]
    return write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in questions])


def summary_numbers(stderr: str) -> dict[str, str]:
    found = {}
    patterns = {
        "counts": r"sotflow: (\d+) answered, (\d+) failed \(of (\d+)\) in [\d.]+ s",
        "mix": r"answered by: (.+)",
        "failures": r"failed with: (.+)",
        "calls": r"model calls: ([\d,]+) \(([\d,]+) retries\)",
        "tokens": r"tokens: ([\d,]+) \(prompt ([\d,]+), completion ([\d,]+)\)",
        "latency": r"latency: p50 ([\d.]+) s, p95 ([\d.]+) s",
        "cost": r"cost: (.+)",
    }
    for name, pattern in patterns.items():
        match = re.search(pattern, stderr)
        assert match is not None, f"no {name} line in:\n{stderr}"
        found[name] = match.groups()
    return found  # type: ignore[return-value]


def test_summary_matches_the_records(
    cli: Runner, loopback: LoopbackServer, source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    loopback.inject(Fault(kind="status", status=400, match=DIRECT_QUESTIONS[1]))
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--model", "gpt-4o-mini")
    assert result.code == 1
    records = read_records(out)
    found = summary_numbers(result.stderr)
    assert found["counts"] == ("5", "1", "6")
    # The strategy that really answered, most used first; the failed item is counted
    # apart, by its error, not among the strategies.
    assert found["mix"] == ("sot 4, direct 1",)
    assert found["failures"] == ("BadRequestError 1",)
    failed = next(r for r in records if r["error"])
    assert failed["strategy"] == "direct"  # its record still names what ran (not "auto")
    calls = sum(r["calls"] for r in records)
    retries = sum(r["retries"] for r in records)
    assert found["calls"] == (f"{calls:,}", f"{retries:,}")
    prompt = sum(r["usage"]["prompt_tokens"] for r in records)
    completion = sum(r["usage"]["completion_tokens"] for r in records)
    assert found["tokens"] == (f"{prompt + completion:,}", f"{prompt:,}", f"{completion:,}")
    latencies = [r["latency_s"] for r in records if r["error"] is None]
    p50, p95 = (float(x) for x in found["latency"])
    assert p50 == pytest.approx(statistics.median(latencies), abs=0.006)
    assert min(latencies) - 0.006 <= p50 <= p95 <= max(latencies) + 0.006
    # gpt-4o-mini has a published price, but only on OpenAI's own endpoint: this server
    # is not it, and what it charges is unknown.
    (cost_line,) = found["cost"]
    assert cost_line.startswith("unknown (no known price for 'gpt-4o-mini' at 127.0.0.1:")
    assert "--price-in and --price-out" in cost_line
    # Prices given for the run apply anywhere.
    result = cli(
        "batch", str(source), "-o", str(out), "--prefill", "--model", "gpt-4o-mini",
        "--overwrite", "--price-in", "0.15", "--price-out", "0.6",
    )  # fmt: skip
    records = read_records(out)
    prompt = sum(r["usage"]["prompt_tokens"] for r in records)
    completion = sum(r["usage"]["completion_tokens"] for r in records)
    cost = (prompt * 0.15 + completion * 0.60) / 1e6
    assert result.code == 0, result.stderr  # the fault was spent on the first run
    match = re.search(r"cost: (.+)", result.stderr)
    assert match is not None, result.stderr
    cost_line = match.group(1)
    assert cost_line.startswith(f"${cost:,.4f} (gpt-4o-mini at $0.15 / $0.6 per million")
    half = cli("batch", str(source), "-o", str(out), "--overwrite", "--price-in", "1")
    assert half.code == 2 and "--price-out" in half.stderr


def test_prices_file_overrides_and_extends_the_table(
    cli: Runner, source: Path, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"loopback": [2.0, 8.0], "gpt-4o-mini": [100, 100]}))
    out = tmp_path / "out.jsonl"
    base = ["batch", str(source), "-o", str(out), "--prefill"]

    result = cli(*base)  # SOTFLOW_MODEL=loopback: no price known
    assert result.code == 0, result.stderr
    assert "cost: unknown (no known price for 'loopback' at 127.0.0.1:" in result.stderr

    result = cli(*base, "--overwrite", "--prices", str(prices))
    assert result.code == 0, result.stderr
    records = read_records(out)
    prompt = sum(r["usage"]["prompt_tokens"] for r in records)
    completion = sum(r["usage"]["completion_tokens"] for r in records)
    expected = (prompt * 2.0 + completion * 8.0) / 1e6
    assert f"cost: ${expected:,.4f} (loopback at $2 / $8 per million" in result.stderr

    result = cli(*base, "--overwrite", "--prices", str(prices), "--model", "gpt-4o-mini")
    assert result.code == 0, result.stderr
    assert "(gpt-4o-mini at $100 / $100 per million" in result.stderr

    prices.write_text('{"loopback": "cheap"}')
    result = cli(*base, "--overwrite", "--prices", str(prices))
    assert result.code == 2
    assert "could not read prices" in result.stderr


def test_quiet_prints_nothing_on_stderr(cli: Runner, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--quiet")
    assert result.code == 0
    assert result.stderr == ""
    assert len(read_records(out)) == 6
    # --quiet does not hide a failure's exit code.
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--quiet", "--resume")
    assert result.code == 0 and result.stderr == ""


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; return its code and what it showed."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [*CLI, *args],
            cwd=ROOT,
            env={**env, "TERM": "xterm", "COLUMNS": "120"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        shown = bytearray()
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            shown += chunk
        return process.wait(timeout=60), shown.decode("utf-8", "replace")
    finally:
        os.close(leader)


def test_progress_bar_only_on_a_terminal(
    cli: Runner, env: dict[str, str], loopback: LoopbackServer, source: Path, tmp_path: Path
) -> None:
    base = ["batch", str(source), "--prefill"]
    code, shown = run_on_a_terminal([*base, "-o", str(tmp_path / "tty.jsonl")], env)
    assert code == 0, shown
    assert "answering" in shown and "/6" in shown
    assert "6 answered, 0 failed" in shown  # the summary follows the bar

    code, shown = run_on_a_terminal([*base, "-o", str(tmp_path / "quiet.jsonl"), "--quiet"], env)
    assert code == 0
    assert shown == ""

    piped = cli(*base, "-o", str(tmp_path / "piped.jsonl"))
    assert piped.code == 0
    assert "answering" not in piped.stderr and "\x1b[" not in piped.stderr
    assert "6 answered, 0 failed" in piped.stderr


def test_a_local_model_costs_nothing_and_an_unknown_api_model_says_how_to_price_it() -> None:
    from sotflow.cli.report import BatchStats

    stats = BatchStats(total=1)
    stats.add({"error": None, "latency_s": 1.0, "strategy": "sot",
               "usage": {"prompt_tokens": 10, "completion_tokens": 20}})  # fmt: skip
    assert stats.summary("smollm2", {}, local=True).endswith(
        "no API charge (a model on this machine)"
    )
    assert "--prices FILE" in stats.summary("my-model", {})
    # 10 prompt tokens at $1,000 and 20 completion tokens at $2,000 per million: $0.05.
    priced = stats.summary("m", {"m": (1000.0, 2000.0)})
    assert "cost: $0.0500 (m at $1000 / $2000" in priced


def test_published_prices_apply_on_their_providers_endpoint_only_and_estimates_say_so() -> None:
    from sotflow.cli.report import BatchStats

    stats = BatchStats(total=1)
    stats.add({"usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0}})
    openai_url = "https://api.openai.com/v1"
    assert "cost: $0.1500 (gpt-4o-mini" in stats.summary("gpt-4o-mini", {}, base_url=openai_url)
    elsewhere = stats.summary("gpt-4o-mini", {}, base_url="http://127.0.0.1:8080/v1")
    assert "cost: unknown (no known price for 'gpt-4o-mini' at 127.0.0.1:8080)" in elsewhere
    assert "estimated" not in elsewhere
    stats.add({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "estimated": True}})
    estimated = stats.summary("gpt-4o-mini", {}, base_url=openai_url)
    assert "estimated: the server reported no usage" in estimated
    assert "cost: about $" in estimated
