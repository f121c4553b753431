"""Skeleton-of-Thought vs a direct answer, end to end, on a server paced like a hosted API.

The loopback server answers like a model (``sotflow.testing.responders.sot_responder``):
time to first token 0.25 s, 50 tokens/s per request, direct answers of 300-450 tokens,
skeletons of 5-8 points, 1-2 sentences per point. In the same run we time, per
question: a direct answer, sotflow's SoT, and a bare-SDK SoT (skeleton, then
``gather`` over points with the official client); and "auto" (routed) vs direct on the
questions the default router sends to a direct answer.

Reported: median per-question speed-up (direct latency / SoT latency), SoT's efficiency
against its own critical path (skeleton + slowest point, from the trace), and auto's
latency relative to direct.

    python benchmarks/sot_speedup.py [--questions data/router/vicuna80.jsonl] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

import anyio
import openai

import sotflow
from sotflow.prompts import Prompts
from sotflow.testing import LoopbackServer

RESPONDER = "sotflow.testing.responders:sot_responder"


def load(path: Path, n_sot: int, n_direct: int) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    sot = [r["question"] for r in rows if r.get("sot")][:n_sot]
    rest = [r["question"] for r in rows if not r.get("sot")][: n_direct * 3]
    return sot, rest


async def bare_sdk_sot(client: openai.AsyncOpenAI, question: str, prompts: Prompts) -> float:
    """The straightforward hand-written SoT: one skeleton call, then gather the points."""
    start = time.perf_counter()
    prefill = {"continue_final_message": True, "add_generation_prompt": False}
    skeleton = await client.chat.completions.create(
        model="loopback",
        messages=[
            {"role": "system", "content": prompts.render("skeleton.system")},
            {
                "role": "user",
                "content": prompts.render(
                    "skeleton.user", question=question, min_points=3, max_points=10
                ),
            },
            {"role": "assistant", "content": "1."},
        ],
        max_tokens=200,
        extra_body=prefill,
    )
    text = "1." + (skeleton.choices[0].message.content or "")
    points = re.findall(r"^\s*(\d+)\.\s*(.+)$", text, re.M)
    outline = "\n".join(f"{i}. {t}" for i, t in points)

    async def expand(index: str, title: str) -> None:
        await client.chat.completions.create(
            model="loopback",
            messages=[
                {"role": "system", "content": prompts.render("point.system")},
                {
                    "role": "user",
                    "content": prompts.render(
                        "point.user",
                        question=question,
                        skeleton=outline,
                        written="",
                        index=index,
                        title=title,
                    ),
                },
                {"role": "assistant", "content": f"{index}. {title}:"},
            ],
            max_tokens=128,
            extra_body=prefill,
        )

    async with anyio.create_task_group() as tg:
        for index, title in points:
            tg.start_soon(expand, index, title)
    return time.perf_counter() - start


async def measure(base_url: str, sot_qs: list[str], other_qs: list[str], rounds: int) -> dict:
    backend = sotflow.OpenAIBackend(
        model="loopback", base_url=base_url, api_key="bench", max_concurrency=512, prefill=True
    )
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    prompts = Prompts()
    direct = sotflow.Direct(max_tokens=512)
    sot = sotflow.SkeletonOfThought()
    router = sotflow.RuleRouter()
    auto = sotflow.Routed(router)
    routed_direct = [q for q in other_qs if (await router.decide(q)).strategy == "direct"]
    routed_direct = routed_direct[: max(10, len(sot_qs) // 2)]
    per_q: dict[str, dict[str, list[float]]] = {
        q: {"direct": [], "sot": [], "bare": [], "critical": []} for q in sot_qs
    }
    auto_times: dict[str, dict[str, list[float]]] = {
        q: {"direct": [], "auto": []} for q in routed_direct
    }
    async with sotflow.Engine(backend) as engine:
        # The server is measured once, untimed, before the first SoT run asks for it.
        profile = await backend.profile()
        assert not profile.serialises, profile
        for _ in range(rounds):
            for answer in await engine.batch(direct, sot_qs):
                per_q[answer.question]["direct"].append(answer.latency_s)
            for answer in await engine.batch(sot, sot_qs):
                assert answer.ok and answer.strategy == "sot", answer.error
                per_q[answer.question]["sot"].append(answer.latency_s)
                per_q[answer.question]["critical"].append(answer.trace.critical_path_s("answer"))

            async def bare(q: str) -> None:
                per_q[q]["bare"].append(await bare_sdk_sot(client, q, prompts))

            async with anyio.create_task_group() as tg:
                for q in sot_qs:
                    tg.start_soon(bare, q)
            for answer in await engine.batch(direct, routed_direct):
                auto_times[answer.question]["direct"].append(answer.latency_s)
            for answer in await engine.batch(auto, routed_direct):
                assert answer.ok and answer.strategy == "direct", (answer.strategy, answer.error)
                auto_times[answer.question]["auto"].append(answer.latency_s)
    await client.close()
    return {"per_question": per_q, "auto": auto_times}


def summarise(data: dict) -> dict:
    med = statistics.median
    rows = []
    for q, t in data["per_question"].items():
        d, s, b, c = med(t["direct"]), med(t["sot"]), med(t["bare"]), med(t["critical"])
        rows.append({"question": q, "direct_s": d, "sot_s": s, "bare_sdk_sot_s": b,
                     "critical_path_s": c, "speedup": d / s, "bare_speedup": d / b,
                     "efficiency": c / s})  # fmt: skip
    auto = [med(t["auto"]) / med(t["direct"]) for t in data["auto"].values()]
    return {
        "rows": rows,
        "median_speedup": med(r["speedup"] for r in rows),
        "median_bare_speedup": med(r["bare_speedup"] for r in rows),
        "median_efficiency": med(r["efficiency"] for r in rows),
        "min_efficiency": min(r["efficiency"] for r in rows),
        "median_direct_s": med(r["direct_s"] for r in rows),
        "median_sot_s": med(r["sot_s"] for r in rows),
        "auto_over_direct": med(auto),
        "auto_questions": len(auto),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=Path("data/router/vicuna80.jsonl"))
    parser.add_argument("--n", type=int, default=20, help="SoT-suited questions to time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft", type=float, default=0.25)
    parser.add_argument("--tps", type=float, default=50.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sot_qs, other_qs = load(args.questions, args.n, args.n // 2)
    with LoopbackServer(ttft=args.ttft, tps=args.tps, responder=RESPONDER) as server:
        data = anyio.run(measure, server.base_url, sot_qs, other_qs, args.rounds)
    s = summarise(data)
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}; server: ttft "
        f"{args.ttft}s, {args.tps:g} tokens/s; {len(sot_qs)} questions x {args.rounds} rounds"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| direct answer latency (median) | {s['median_direct_s']:.2f} s |")
    print(f"| sotflow SoT latency (median) | {s['median_sot_s']:.2f} s |")
    print(f"| **SoT speed-up, median per question** | **{s['median_speedup']:.2f}x** |")
    print(f"| bare-SDK SoT speed-up (same run) | {s['median_bare_speedup']:.2f}x |")
    print(f"| SoT efficiency vs its critical path (median / min) | "
          f"{s['median_efficiency']:.3f} / {s['min_efficiency']:.3f} |")  # fmt: skip
    print(f"| auto / direct latency on {s['auto_questions']} direct-routed questions | "
          f"{s['auto_over_direct']:.3f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({"summary": s, "raw": data, "args": str(vars(args))}, indent=2)
        )


if __name__ == "__main__":
    main()
