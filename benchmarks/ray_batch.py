"""``sotflow batch --ray`` against the single-process batch, at the same caps, on one machine.

The questions of ``data/router`` (as ``batch_1000.py`` draws them) plus bad input lines
(one in 100: not JSON, no question, an empty question) go through the real CLI, in
alternating rounds: ``--ray`` with ``--workers`` Ray workers joining one local cluster
that this script starts (and drives, to find a worker to kill), then the
single-process batch, ``--rounds`` times. A last Ray round kills one worker
(SIGKILL) when ``--kill-at`` of the records are written. Every round runs SoT
(``--strategy sot``) at the same ``--concurrency``, ``--max-calls`` and ``--rpm``,
against the loopback server answering like a model with ``--fault-rate`` of its
replies failing (429, 5xx, broken streams, malformed bodies).

Checked in every round, from the output file and the server's own counters: every
question written exactly once (0 lost, 0 duplicated; a question whose retries the
faults outlasted is written with its error, counted and shown as failed), every bad
line an error record,
the server's peak of calls in flight at most ``--max-calls``, and the requests that
reached the server in every 60 s window at most ``--rpm`` (+5%: the server's request
counter is sampled every 50 ms, so a window is known to within a sample).

Throughput is answered questions per second of wall time (process start to exit; a Ray
round's includes starting its workers, which its summary line reports), and also per
second of answering alone (wall time less that start).

    python benchmarks/ray_batch.py [--questions 2000] [--workers 4] [--rounds 2] [--json out]
    python benchmarks/ray_batch.py --questions 200 --rpm 3000   # a quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_1000 import questions, read_records

from sotflow.testing import LoopbackServer

ROOT = Path(__file__).resolve().parents[1]
RESPONDER = "sotflow.testing.responders:sot_responder"
BAD_LINES = ("{not json", json.dumps({"id": "{n}", "note": "no question"}),
             json.dumps({"id": "{n}", "question": "   "}))  # fmt: skip


def write_input(path: Path, n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` questions with a bad line after every 100th; (question ids, bad line ids)."""
    good, bad, lines = [], [], []
    for number, row in enumerate(questions(n, seed), start=1):
        lines.append(json.dumps(row))
        good.append(row["id"])
        if number % 100 == 0:
            kind = BAD_LINES[len(bad) % len(BAD_LINES)]
            bad_id = f"bad-{len(bad)}"
            # A line that is not JSON has no id of its own: its record's id is its line.
            lines.append(kind.replace("{n}", bad_id))
            bad.append(bad_id if "{n}" in kind else str(len(lines)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return good, bad


class RequestClock:
    """Samples the server's request counter, to find the busiest window of requests."""

    def __init__(self, server: LoopbackServer, every_s: float = 0.05) -> None:
        self.server = server
        self.every_s = every_s
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            stats = self.server.stats()
            self.samples.append((time.monotonic(), stats["requests"], stats["in_flight"]))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RequestClock:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def busiest(self, window_s: float) -> int:
        """The most requests seen in any ``window_s`` seconds."""
        best, j = 0, 0
        for t, count, _ in self.samples:
            # The latest sample at least window_s before t: its count is an upper
            # bound on the requests before the window, so this never undercounts.
            while j + 1 < len(self.samples) and self.samples[j + 1][0] <= t - window_s:
                j += 1
            start_t, start_count, _ = self.samples[j]
            if start_t > t - window_s:  # the run is shorter than a window so far
                start_count = 0
            best = max(best, count - start_count)
        return best


def run_round(
    mode: str, args: argparse.Namespace, server: LoopbackServer, address: str,
    source: Path, out: Path, good: list[str], bad: list[str], kill: bool = False,
) -> dict[str, Any]:  # fmt: skip
    command = [
        sys.executable, "-m", "sotflow.cli", "batch", str(source), "-o", str(out),
        "--overwrite", "--prefill", "--strategy", "sot",
        "--concurrency", str(args.concurrency), "--max-calls", str(args.max_calls),
        "--rpm", str(args.rpm),
    ]  # fmt: skip
    if mode == "ray":
        command += ["--ray", address, "--ray-workers", str(args.workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SOTFLOW_"))}
    env.update(PYTHONPATH=str(ROOT), OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="bench",
               SOTFLOW_MODEL="loopback")  # fmt: skip
    server.reset()
    killed: dict[str, Any] = {}
    with RequestClock(server) as clock:
        start = time.monotonic()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        if kill:
            killed = kill_a_worker(out, int(args.kill_at * len(good)), process)
        _, stderr = process.communicate()
        wall = time.monotonic() - start
    stats = server.stats()
    records, broken = read_records(out)
    ids = Counter(str(r["id"]) for r in records)
    answered = {str(r["id"]) for r in records if r["error"] is None and r["answer"]}
    # A question written with its error is kept, not lost (--resume redoes it): counted
    # apart, with what failed it, since 10% faults can outlast a question's retries.
    failed = Counter(
        f"{r['error']['type']}: {r['error'].get('message', '')[:120]}"
        for r in records
        if r["error"] is not None and str(r["id"]) in set(good)
    )
    bad_records = {str(r["id"]): r["error"] for r in records if str(r["id"]) in set(bad)}
    busiest = clock.busiest(60.0)
    ready = re.search(r"ready in ([\d.]+) s", stderr)
    start_s = float(ready.group(1)) if ready else 0.0
    return {
        "mode": mode + (" (a worker killed)" if kill else ""),
        "exit_code": process.returncode,
        "wall_s": wall,
        "start_s": start_s,
        "answered": len(answered),
        "lost": len(set(good) - set(ids)),
        "failed": sum(failed.values()),
        "failures": dict(failed),
        "duplicated": sum(1 for v in ids.values() if v > 1),
        "broken_lines": broken,
        "bad_lines": len(bad),
        "bad_lines_as_errors": sum(
            1 for i in bad if (bad_records.get(i) or {}).get("type") == "InputError"
        ),
        "server_requests": stats["requests"],
        "server_faults": stats["faults"],
        "peak_in_flight": stats["peak_in_flight"],
        "busiest_60s_requests": busiest,
        "qps_wall": len(answered) / wall,
        "qps_answering": len(answered) / max(1e-9, wall - start_s),
        "killed": killed,
        "summary": stderr.strip()[-1500:],
    }


def kill_a_worker(out: Path, after: int, process: Any) -> dict[str, Any]:
    """SIGKILL one of the batch's Ray workers once ``after`` records are written."""
    while process.poll() is None:
        try:
            written = out.read_bytes().count(b"\n")
        except FileNotFoundError:
            written = 0
        if written >= after:
            break
        time.sleep(0.05)
    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("sotflow-batch-")]  # fmt: skip
    if not names or process.poll() is not None:
        return {"error": "the batch ended before a worker could be killed"}
    worker = ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])
    pid = ray.get(worker.describe.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    return {"worker": names[0]["name"], "pid": pid, "after_records": written}


def main() -> None:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4, help="Ray workers")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode, alternating")
    parser.add_argument("--concurrency", type=int, default=64, help="questions at once")
    parser.add_argument("--max-calls", type=int, default=256, help="the cap on calls in flight")
    parser.add_argument("--rpm", type=int, default=12000, help="the requests-per-minute cap")
    parser.add_argument("--ttft", type=float, default=0.25, help="server: s to the first token")
    parser.add_argument("--tps", type=float, default=50.0, help="server: tokens/s per request")
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--fault-seed", type=int, default=7)
    parser.add_argument("--kill-at", type=float, default=0.3, help="share written before the kill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory(prefix="sotflow-ray-")
    workdir = Path(scratch.name)
    source = workdir / "questions.jsonl"
    good, bad = write_input(source, args.questions, args.seed)
    ray.init(
        address="local",
        num_cpus=max(args.workers, os.cpu_count() or 1),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    address = ray.get_runtime_context().gcs_address
    rounds: list[dict[str, Any]] = []
    pacing = {"ttft": args.ttft, "tps": args.tps, "responder": RESPONDER}
    faults = {"fault_rate": args.fault_rate, "fault_seed": args.fault_seed}
    with LoopbackServer(**pacing, **faults) as server:
        plan = [mode for _ in range(args.rounds) for mode in ("ray", "single")]
        for index, mode in enumerate(plan):
            out = workdir / f"answers-{index}-{mode}.jsonl"
            rounds.append(run_round(mode, args, server, address, source, out, good, bad))
            print(f"round {index + 1}/{len(plan) + 1}: {mode} {rounds[-1]['wall_s']:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
        out = workdir / "answers-kill.jsonl"
        rounds.append(run_round("ray", args, server, address, source, out, good, bad, kill=True))
    ray.shutdown()
    scratch.cleanup()

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds if r["mode"] == mode)

    ratio_wall = median("ray", "qps_wall") / median("single", "qps_wall")
    ratio_answering = median("ray", "qps_answering") / median("single", "qps_answering")
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, Ray {ray.__version__}",
        "rounds": rounds,
        "ray_vs_single_wall": ratio_wall,
        "ray_vs_single_answering": ratio_answering,
    }
    print(
        f"machine: {result['machine']}; server: ttft {args.ttft} s, {args.tps:g} tokens/s, "
        f"fault rate {args.fault_rate:g}; {args.questions} questions + {len(bad)} bad lines, "
        f"`--strategy sot --concurrency {args.concurrency} --max-calls {args.max_calls} "
        f"--rpm {args.rpm}`, Ray rounds with {args.workers} workers"
    )
    print("| round | exit | answered | failed | lost / duplicated | bad lines as errors "
          "| peak in flight | busiest 60 s (requests) | wall s | worker start s "
          "| questions/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rounds:
        print(
            f"| {r['mode']} | {r['exit_code']} | {r['answered']} | {r['failed']} | {r['lost']} / "
            f"{r['duplicated']} | {r['bad_lines_as_errors']}/{r['bad_lines']} | "
            f"{r['peak_in_flight']} | {r['busiest_60s_requests']:,} | "
            f"{r['wall_s']:.1f} | {r['start_s']:.1f} | "
            f"{r['qps_wall']:.1f} |"
        )
    print(f"\nray / single, questions per second (medians): {ratio_wall:.2f}x of wall time, "
          f"{ratio_answering:.2f}x of answering time")  # fmt: skip
    for r in rounds:
        for what, count in r["failures"].items():
            print(f"{r['mode']}: {count} question(s) failed with {what}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    problems = [
        f"{r['mode']}: {what}"
        for r in rounds
        for what, bad_ in (
            ("lost questions", r["lost"]),
            ("duplicated ids", r["duplicated"]),
            ("broken lines", r["broken_lines"]),
            ("bad lines without an error record", r["bad_lines"] - r["bad_lines_as_errors"]),
            ("peak in flight above the cap", r["peak_in_flight"] > args.max_calls),
            ("a 60 s window above the rpm cap +5%", r["busiest_60s_requests"] > 1.05 * args.rpm),
            ("no worker was killed", r["mode"].endswith("killed)") and "pid" not in r["killed"]),
        )
        if bad_
    ]
    if problems:
        sys.exit("failed: " + "; ".join(problems))


if __name__ == "__main__":
    main()
