"""Skeleton-of-Thought vs a direct answer on the local model, end to end, same run.

Both run through ``sotflow.Engine(LocalBackend(...))``. SoT's point expansions arrive
together and are decoded as one batch that shares the question + skeleton prefix; the
direct answer is decoded alone. Reported per question: latency of each, the speed-up
(direct / SoT), and the completion tokens each produced (SoT answers can be shorter or
longer than direct ones, so tokens/s is shown too).

    python benchmarks/local_sot.py --questions 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import anyio

import sotflow
from sotflow.backends.local import LocalBackend

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[1] / "data" / "router" / "vicuna80.jsonl"
FALLBACK = [
    "What are the most effective ways to deal with stress?",
    "How can I improve my time management skills?",
    "What are the main differences between Python and JavaScript?",
]


def questions(path: Path, n: int) -> list[str]:
    if not path.is_file():
        return FALLBACK[:n]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows if r.get("sot")][:n]


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    ap.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    ap.add_argument("--questions", type=int, default=3)
    ap.add_argument("--data", type=Path, default=DEFAULT_QUESTIONS)
    ap.add_argument("--direct-max-tokens", type=int, default=256)
    ap.add_argument("--point-max-tokens", type=int, default=48)
    ap.add_argument("--decoding", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runtime", default="auto", help="auto (default), llama.cpp or torch")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()
    backend = LocalBackend(
        args.model,
        runtime=args.runtime,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        decoding=args.decoding,
        max_batch_size=16,
    )
    sot = sotflow.SkeletonOfThought(point_max_tokens=args.point_max_tokens, skeleton_max_tokens=96)
    direct = sotflow.Direct(max_tokens=args.direct_max_tokens)
    rows = []
    async with sotflow.Engine(backend) as engine:
        await engine.run(direct, "Hello")  # warm-up
        for i, question in enumerate(questions(args.data, args.questions)):
            order = [("direct", direct), ("sot", sot)]
            if i % 2:
                order.reverse()
            timing = {}
            for name, strategy in order:
                start = time.perf_counter()
                answer = await engine.run(strategy, question)
                timing[name] = (time.perf_counter() - start, answer)
            (d_s, d_answer), (s_s, s_answer) = timing["direct"], timing["sot"]
            rows.append(
                {
                    "question": question,
                    "direct_s": round(d_s, 2),
                    "sot_s": round(s_s, 2),
                    "speedup": round(d_s / s_s, 3),
                    "direct_tokens": d_answer.usage.completion_tokens,
                    "sot_tokens": s_answer.usage.completion_tokens,
                    "sot_points": len(s_answer.points or []),
                    "sot_strategy": s_answer.strategy,
                }
            )
            print(
                f"{i + 1}: direct {d_s:.1f}s, SoT {s_s:.1f}s ({rows[-1]['sot_points']} points)",
                flush=True,
            )
    print()
    print(f"model {args.model}, {backend.loaded.note}, decoding {backend.decoder.config.mode}")
    print()
    print("| question | direct s (tokens) | SoT s (tokens, points) | speed-up |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['question'][:50]} | {r['direct_s']:.1f} ({r['direct_tokens']}) "
            f"| {r['sot_s']:.1f} ({r['sot_tokens']}, {r['sot_points']}) | {r['speedup']:.2f}x |"
        )
    median = statistics.median(r["speedup"] for r in rows)
    print(f"\nmedian speed-up: {median:.2f}x")
    if args.json_path:
        with open(args.json_path, "w") as fh:  # noqa: ASYNC230 - a script's last act
            json.dump(
                {
                    "config": {k: str(v) for k, v in vars(args).items()},
                    "median_speedup": median,
                    "rows": rows,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    anyio.run(main)
