"""1,000 questions through the real ``sotflow batch`` command: SoT at concurrency 128
against a loopback server paced like a hosted API, with 10% of requests failing.

The server answers like a model (``sotflow.testing.responders:sot_responder``): time
to first token 0.25 s, 50 tokens/s per request, skeletons of 5-8 points, 30-60 tokens
per point. The questions are those of ``data/router/*.jsonl`` (493), shuffled and
repeated to ``--n`` with unique ids. The CLI runs as a subprocess, exactly as a user
would run it; everything reported is read back from its output file, its stderr and
the server's counters.

``--concurrency`` is the number of questions answered at once; the calls in flight are
capped separately (``--max-calls``, default 8 x concurrency: room for every point of
every question in flight).

In the same run, before the batch, a sample of the same questions (``--unloaded-n``)
goes through ``sotflow batch`` with no faults, all at once, with room for every call:
the median of those SoT latencies is the per-question critical path ``c``. Reference:

- ideal (as the issue states it): ``c x ceil(n / concurrency)``, n questions in waves
  of ``concurrency`` questions, each wave taking one critical path;
- busy share: (total seconds the server spent answering the calls that succeeded) /
  max calls, a floor no schedule can beat under the call cap. Per record that is
  ``calls x ttft + completion_tokens / tps``, the loopback server's exact pacing;
  failed attempts cost the server no pacing time (it fails them at once).

    python benchmarks/batch_1000.py [--n 1000] [--concurrency 128] [--tps 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sotflow.testing import LoopbackServer

ROOT = Path(__file__).resolve().parents[1]
RESPONDER = "sotflow.testing.responders:sot_responder"


def questions(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` questions from data/router, shuffled, repeated as needed, ids unique."""
    pool: list[dict[str, Any]] = []
    for path in sorted((ROOT / "data" / "router").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                pool.append({"source": f"{path.stem}:{row['id']}", "question": row["question"]})
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    round_ = 0
    while len(rows) < n:
        batch = pool[:]
        rng.shuffle(batch)
        rows += [{"id": f"{r['source']}#{round_}", **r} for r in batch[: n - len(rows)]]
        round_ += 1
    return rows


def run_cli(args: list[str], base_url: str) -> tuple[int, str, float]:
    """Run ``python -m sotflow.cli`` from this checkout; (exit code, stderr, wall s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SOTFLOW_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        OPENAI_BASE_URL=base_url,
        OPENAI_API_KEY="bench",
        SOTFLOW_MODEL="loopback",
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sotflow.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return done.returncode, done.stderr, time.monotonic() - start


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The output's records and how many of its lines were not whole JSON objects."""
    records, broken = [], 0
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
        try:
            records.append(json.loads(line))
        except ValueError:
            broken += 1
    if not path.read_text(encoding="utf-8").endswith("\n"):
        broken += 1
    return records, broken


def calls_of(record: dict[str, Any]) -> int:
    """Model calls a successful SoT record needed: the skeleton plus one per point
    (a skeleton with under two points falls back to one direct call instead)."""
    points = record.get("points")
    return 1 + (len(points) if points else 1)


def busy_seconds(record: dict[str, Any], ttft: float, tps: float) -> float:
    """Seconds the paced server spent on a record's successful calls."""
    tokens = record["usage"]["completion_tokens"]
    return calls_of(record) * ttft + (tokens / tps if tps else 0.0)


def main() -> None:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="--n and --tps make the run shorter.",
        formatter_class=Formatter,
    )
    parser.add_argument("--n", type=int, default=1000, help="questions in the batch")
    parser.add_argument("--concurrency", type=int, default=128, help="questions at once")
    parser.add_argument(
        "--max-calls", type=int, default=None, help="calls in flight (default 8 x concurrency)"
    )
    parser.add_argument("--ttft", type=float, default=0.25, help="server: s to the first token")
    parser.add_argument("--tps", type=float, default=50.0, help="server: tokens/s per request")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="server: failing share")
    parser.add_argument("--fault-seed", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0, help="question shuffle")
    parser.add_argument(
        "--unloaded-n", type=int, default=48, help="questions timed unloaded for the critical path"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep inputs and outputs here")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    rows = questions(args.n, args.seed)
    sample = random.Random(args.seed + 1).sample(rows, min(args.unloaded_n, len(rows)))
    scratch: tempfile.TemporaryDirectory[str] | None = None
    if args.keep:
        workdir: Path = args.keep
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        scratch = tempfile.TemporaryDirectory(prefix="sotflow-batch-")
        workdir = Path(scratch.name)
    batch_in, batch_out = workdir / "questions.jsonl", workdir / "answers.jsonl"
    sample_in, sample_out = workdir / "unloaded.jsonl", workdir / "unloaded_answers.jsonl"
    for path, items in ((batch_in, rows), (sample_in, sample)):
        path.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    common = ["--strategy", "sot", "--prefill", "--overwrite"]

    with LoopbackServer(ttft=args.ttft, tps=args.tps, responder=RESPONDER) as server:
        # 1. Unloaded: no faults, and room for every call of every sample question at once.
        code, _, _ = run_cli(
            ["batch", str(sample_in), "-o", str(sample_out), *common, "--quiet",
             "--concurrency", str(len(sample)), "--max-calls", str(16 * len(sample))],
            server.base_url,
        )  # fmt: skip
        unloaded, _ = read_records(sample_out)
        if code != 0 or any(r["error"] for r in unloaded):
            raise SystemExit(f"the unloaded run failed (exit {code}); see {sample_out}")
        unloaded_peak = server.stats()["peak_in_flight"]
        critical = statistics.median(r["latency_s"] for r in unloaded)

        # 2. The batch: faults on, counters zeroed.
        server.configure(fault_rate=args.fault_rate, fault_seed=args.fault_seed)
        server.reset()
        max_calls = args.max_calls or 8 * args.concurrency
        code, stderr, wall = run_cli(
            ["batch", str(batch_in), "-o", str(batch_out), *common,
             "--concurrency", str(args.concurrency), "--max-calls", str(max_calls)],
            server.base_url,
        )  # fmt: skip
        stats = server.stats()

    records, broken = read_records(batch_out)
    ids = Counter(r["id"] for r in records)
    answered = [r for r in records if r["error"] is None and r["answer"]]
    attempts = sum(r["calls"] + r["retries"] for r in records)  # every request sent
    calls = sum(calls_of(r) for r in answered)
    busy = sum(busy_seconds(r, args.ttft, args.tps) for r in answered)
    cli_time = re.search(r"\(of \d+\) in ([\d.]+) s", stderr)
    latency = re.search(r"latency: p50 ([\d.]+) s, p95 ([\d.]+) s", stderr)
    ideal = critical * math.ceil(args.n / args.concurrency)
    bound = busy / max_calls
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "exit_code": code,
        "records": len(records),
        "answered": len(answered),
        "failed": len(records) - len(answered),
        "distinct_ids": len(ids),
        "duplicated_ids": sum(1 for v in ids.values() if v > 1),
        "missing_ids": len({r["id"] for r in rows} - set(ids)),
        "broken_lines": broken,
        "attempts": attempts,
        "calls": calls,
        "recorded_calls": sum(r["calls"] for r in records),
        "retries": sum(r["retries"] for r in records),
        "server_requests": stats["requests"],
        "server_faults": stats["faults"],
        "server_statuses": stats["statuses"],
        "server_peak_in_flight": stats["peak_in_flight"],
        "unloaded_questions": len(unloaded),
        "unloaded_peak_in_flight": unloaded_peak,
        "critical_path_s": critical,
        "wall_s": wall,
        "cli_reported_s": float(cli_time.group(1)) if cli_time else None,
        "p50_s": float(latency.group(1)) if latency else None,
        "p95_s": float(latency.group(2)) if latency else None,
        "ideal_s": ideal,
        "busy_share_s": bound,
        "summary": stderr.strip(),
    }
    w = result
    print(
        f"machine: {w['machine']}; server: ttft {args.ttft} s, {args.tps:g} tokens/s, "
        f"fault rate {args.fault_rate:g} (seed {args.fault_seed}); `sotflow batch --strategy "
        f"sot --concurrency {args.concurrency}` ({max_calls} calls) on {args.n} questions"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| exit code | {code} |")
    print(f"| answered / records / questions | {w['answered']} / {w['records']} / {args.n} |")
    print(f"| ids duplicated / missing / broken lines | {w['duplicated_ids']} / "
          f"{w['missing_ids']} / {broken} |")  # fmt: skip
    print(f"| model calls needed (skeleton + points) | {calls:,} |")
    print(f"| requests recorded (sum of `calls` + `retries`) | {attempts:,} |")
    print(f"| retries (sum of `retries`) | {w['retries']:,} |")
    print(f"| server: requests / injected faults | {stats['requests']:,} / {stats['faults']:,} |")
    print(f"| server: peak calls in flight | {stats['peak_in_flight']} |")
    print(f"| per-question critical path c (median unloaded SoT latency, {len(unloaded)} "
          f"questions) | {critical:.2f} s |")  # fmt: skip
    print(f"| latency under load p50 / p95 (CLI summary) | {w['p50_s']} s / {w['p95_s']} s |")
    print(f"| **wall time** (process start to exit) | **{wall:.1f} s** |")
    print(f"| ideal: c x ceil({args.n}/{args.concurrency}) | {ideal:.1f} s "
          f"(wall / ideal {wall / ideal:.2f}) |")  # fmt: skip
    print(f"| busy share: busy call-seconds / {max_calls} calls | {bound:.1f} s |")
    print(f"| CLI's own time (its summary) | {w['cli_reported_s']} s |")
    if scratch is None:
        print(f"\nfiles: {workdir}")
    else:
        scratch.cleanup()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    complete = w["answered"] == args.n and not (broken or w["duplicated_ids"] or w["missing_ids"])
    if code != 0 or not complete:
        sys.exit(f"the batch did not answer every question exactly once (exit {code})")


if __name__ == "__main__":
    main()
