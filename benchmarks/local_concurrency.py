"""Throughput of LocalBackend: 8 requests at once (one continuous batch) vs one by one.

Two workloads, each timed both ways in the same run, median over runs:
``independent`` (8 different questions) and ``sot-points`` (8 point expansions that
share a system prompt, question and skeleton: the shared prefix is computed once).
Greedy outputs of the batched run are checked against the one-by-one run.

    python benchmarks/local_concurrency.py --runs 2 --max-tokens 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import anyio

from sotflow.backends.local import LocalBackend
from sotflow.types import Request

QUESTIONS = [
    "Give me three tips for staying healthy.",
    "What are the benefits of reading books?",
    "Explain how a bicycle works.",
    "How can I improve my time management skills?",
    "What should I pack for a weekend camping trip?",
    "Describe the water cycle in simple terms.",
    "Why do leaves change colour in autumn?",
    "How does a refrigerator keep food cold?",
]
SKELETON = [
    "Sleep well",
    "Exercise daily",
    "Eat vegetables",
    "Drink water",
    "Manage stress",
    "See friends",
    "Limit screens",
    "Get check-ups",
]


def workload(name: str, max_tokens: int) -> list[Request]:
    if name == "independent":
        return [Request.of(q, max_tokens=max_tokens, temperature=0) for q in QUESTIONS]
    outline = "\n".join(f"{i}. {t}" for i, t in enumerate(SKELETON, 1))
    return [
        Request.of(
            "Question: How can I live a healthier life?\n"
            f"Skeleton of the answer:\n{outline}\n"
            f"Write only point {i}, in one or two sentences.",
            system="You are a helpful assistant who writes concise answers.",
            prefill=f"{i}. {title}",
            max_tokens=max_tokens,
            temperature=0,
        )
        for i, title in enumerate(SKELETON, 1)
    ]


async def one_by_one(
    backend: LocalBackend, requests: list[Request]
) -> tuple[float, int, list[str]]:
    start = time.perf_counter()
    texts, tokens = [], 0
    for r in requests:
        c = await backend.complete(r)
        texts.append(c.text)
        tokens += c.usage.completion_tokens
    return time.perf_counter() - start, tokens, texts


async def together(backend: LocalBackend, requests: list[Request]) -> tuple[float, int, list[str]]:
    out: dict[int, Any] = {}

    async def one(i: int) -> None:
        out[i] = await backend.complete(requests[i])

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    elapsed = time.perf_counter() - start
    texts = [out[i].text for i in range(len(requests))]
    return elapsed, sum(out[i].usage.completion_tokens for i in range(len(requests))), texts


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    ap.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--decoding", default=None, help="decoding mode (default: the backend's)")
    ap.add_argument("--workloads", default="independent,sot-points")
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
        max_batch_size=8,
    )
    await backend.complete(Request.of("Hello", max_tokens=4))  # warm-up
    results = []
    for name in [w for w in args.workloads.split(",") if w]:
        requests = workload(name, args.max_tokens)
        seq_tps, batch_tps, ratios, same, stats = [], [], [], True, {}
        for run in range(args.runs):
            order = [one_by_one, together] if run % 2 == 0 else [together, one_by_one]
            measured = {}
            for fn in order:
                backend.reset_stats()
                measured[fn.__name__] = await fn(backend, requests)
                if fn is together:
                    stats = backend.stats
            (s_t, s_n, s_texts), (b_t, b_n, b_texts) = measured["one_by_one"], measured["together"]
            seq_tps.append(s_n / s_t)
            batch_tps.append(b_n / b_t)
            ratios.append((b_n / b_t) / (s_n / s_t))
            same = same and s_texts == b_texts
            print(
                f"{name} run {run + 1}: one-by-one {s_n / s_t:.1f} tok/s, "
                f"together {b_n / b_t:.1f} tok/s",
                flush=True,
            )
        results.append(
            {
                "workload": name,
                "one_by_one_tokens_per_s": round(statistics.median(seq_tps), 2),
                "together_tokens_per_s": round(statistics.median(batch_tps), 2),
                "ratio_median": round(statistics.median(ratios), 3),
                "identical_outputs": same,
                "max_batch": stats.get("max_batch"),
                "shared_prefix_tokens": stats.get("shared_prefix_tokens"),
                "prefill_tokens": stats.get("prefill_tokens"),
            }
        )
    print()
    print(
        f"model {args.model}, {backend.loaded.note}, decoding "
        f"{backend.decoder.config.mode}, 8 requests x {args.max_tokens} tokens, "
        f"median of {args.runs} runs"
    )
    print()
    print(
        "| workload | one by one (tok/s) | 8 together (tok/s) | speed-up | identical "
        "| prefill computed / shared |"
    )
    print("|---|---:|---:|---:|:---:|---:|")
    for r in results:
        print(
            f"| {r['workload']} | {r['one_by_one_tokens_per_s']:.2f} "
            f"| {r['together_tokens_per_s']:.2f} "
            f"| {r['ratio_median']:.2f}x | {'yes' if r['identical_outputs'] else 'NO'} "
            f"| {r['prefill_tokens']} / {r['shared_prefix_tokens']} |"
        )
    if args.json_path:
        with open(args.json_path, "w") as fh:  # noqa: ASYNC230 - a script's last act
            json.dump({"config": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    anyio.run(main)
