"""Skeleton-of-Thought through ChatSotflow vs a direct answer, on a server paced like an API.

The same measure as ``benchmarks/sot_speedup.py`` (same questions, same paced loopback
server and responder), taken through LangChain: ``ChatSotflow(strategy="sot")`` against
``ChatSotflow(strategy="direct")`` (one call with the question as it is), both with
``abatch`` over all questions at once. Rounds alternate which side goes first. Per
question and round we keep the wall time of its ``ainvoke`` as LangChain's caller sees it
and the run's own ``latency_s``; reported: the median per-question speed-up (direct /
SoT, medians over rounds), and the SDK's SoT (``Engine.batch``) in the same rounds, to
show what the LangChain layer adds.

    python benchmarks/langchain_sot.py [--n 20] [--rounds 5] [--json results.json]

(default output: benchmarks/results/langchain_sot.json)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sot_speedup import RESPONDER, load  # the SDK benchmark's questions

import sotflow
from sotflow.integrations.langchain import ChatSotflow
from sotflow.testing import LoopbackServer


async def timed(model: ChatSotflow, question: str) -> tuple[float, float, str]:
    start = time.perf_counter()
    reply = await model.ainvoke(question)
    wall = time.perf_counter() - start
    return wall, float(reply.response_metadata["latency_s"]), reply.response_metadata["strategy"]


async def side(model: ChatSotflow, questions: list[str]) -> list[tuple[float, float, str]]:
    results: list[Any] = [None] * len(questions)

    async def one(i: int, q: str) -> None:
        results[i] = await timed(model, q)

    async with anyio.create_task_group() as tg:
        for i, q in enumerate(questions):
            tg.start_soon(one, i, q)
    return results


async def measure(base_url: str, questions: list[str], rounds: int) -> dict[str, Any]:
    common = {"model": "loopback", "base_url": base_url, "api_key": "bench", "prefill": True}
    sot = ChatSotflow(strategy="sot", max_concurrency=512, **common)
    direct = ChatSotflow(strategy="direct", max_tokens=512, max_concurrency=512, **common)
    backend = sotflow.OpenAIBackend(
        model="loopback", base_url=base_url, api_key="bench", max_concurrency=512, prefill=True
    )
    raw: dict[str, dict[str, list[float]]] = {
        q: {k: [] for k in ("sot_wall", "sot_run", "direct_wall", "direct_run", "sdk_sot")}
        for q in questions
    }
    async with sotflow.Engine(backend) as engine:
        for r in range(rounds):
            order = ["sot", "direct"] if r % 2 == 0 else ["direct", "sot"]
            for name in order:
                model = sot if name == "sot" else direct
                for q, (wall, run, strategy) in zip(
                    questions, await side(model, questions), strict=True
                ):
                    assert strategy == name, (q, strategy)
                    raw[q][f"{name}_wall"].append(wall)
                    raw[q][f"{name}_run"].append(run)
            for answer in await engine.batch(sotflow.SkeletonOfThought(), questions):
                assert answer.ok and answer.strategy == "sot", answer.error
                raw[answer.question]["sdk_sot"].append(answer.latency_s)
    await sot.aclose()
    await direct.aclose()
    return raw


def summarise(raw: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    med = statistics.median
    rows = []
    for q, t in raw.items():
        m = {k: med(v) for k, v in t.items()}
        rows.append(
            {
                "question": q,
                **{f"{k}_s": v for k, v in m.items()},
                "speedup": m["direct_wall"] / m["sot_wall"],
                "run_speedup": m["direct_run"] / m["sot_run"],
                "langchain_over_sdk": m["sot_wall"] / m["sdk_sot"],
            }
        )
    return {
        "rows": rows,
        "median_speedup": med(r["speedup"] for r in rows),
        "min_speedup": min(r["speedup"] for r in rows),
        "median_run_speedup": med(r["run_speedup"] for r in rows),
        "median_direct_s": med(r["direct_wall_s"] for r in rows),
        "median_sot_s": med(r["sot_wall_s"] for r in rows),
        "median_langchain_over_sdk": med(r["langchain_over_sdk"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=Path("data/router/vicuna80.jsonl"))
    parser.add_argument("--n", type=int, default=20, help="SoT-suited questions to time")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ttft", type=float, default=0.25)
    parser.add_argument("--tps", type=float, default=50.0)
    parser.add_argument("--json", default="benchmarks/results/langchain_sot.json")
    args = parser.parse_args()
    questions, _ = load(args.questions, args.n, 0)
    with LoopbackServer(ttft=args.ttft, tps=args.tps, responder=RESPONDER) as server:
        raw = anyio.run(measure, server.base_url, questions, args.rounds)
    s = summarise(raw)
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}; server: ttft "
        f"{args.ttft}s, {args.tps:g} tokens/s; {len(questions)} questions x {args.rounds} rounds"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| direct answer through ChatSotflow (median) | {s['median_direct_s']:.2f} s |")
    print(f"| SoT through ChatSotflow (median) | {s['median_sot_s']:.2f} s |")
    print(
        f"| **SoT speed-up through ChatSotflow, median per question** | "
        f"**{s['median_speedup']:.2f}x** (min {s['min_speedup']:.2f}x) |"
    )
    print(f"| same, from the runs' own latency_s | {s['median_run_speedup']:.2f}x |")
    print(
        f"| ChatSotflow SoT / SDK SoT latency, same rounds | {s['median_langchain_over_sdk']:.3f} |"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"summary": s, "raw": raw, "args": str(vars(args))}, indent=2)
        )


if __name__ == "__main__":
    main()
