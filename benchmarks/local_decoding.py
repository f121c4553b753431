"""Greedy decoding speed of LocalBackend's modes vs Hugging Face ``generate``, same run.

Every method decodes the same prompts with the same model object (CPU, float32 by
default); methods are interleaved within each run so machine noise hits all alike, and
each figure is the median over runs. Outputs are compared with ``generate``'s text.

    python benchmarks/local_decoding.py --runs 3 --max-tokens 96 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import anyio
import torch

from sotflow.backends.local import LocalBackend
from sotflow.decoding.batched import DECODE_MODES
from sotflow.decoding.threads import on_model_thread
from sotflow.runtimes.torch.loading import load_model
from sotflow.runtimes.torch.testing import reference_greedy
from sotflow.types import Request

PROMPTS = [
    "Give me three tips for staying healthy.",
    "What are the benefits of reading books?",
    "Explain how a bicycle works.",
    "How can I improve my time management skills?",
    "What should I pack for a weekend camping trip?",
    "Describe the water cycle in simple terms.",
]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default="smollm2", help="alias, HF folder or .gguf (default smollm2)"
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    ap.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    ap.add_argument("--prompts", type=int, default=4, help=f"how many prompts (max {len(PROMPTS)})")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--modes", default=",".join(DECODE_MODES), help="comma-separated decoding modes"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", dest="json_path", default=None, help="also write results here")
    return ap.parse_args()


def hf_generate(
    model: Any, tokenizer: Any, prompt: list[int], max_tokens: int, eos: frozenset[int]
) -> tuple[str, int]:
    return reference_greedy(model, tokenizer, prompt, max_tokens, eos)


async def main() -> None:
    args = parse_args()
    # Every torch call of both sides runs on sotflow's one torch thread: a second thread
    # doing torch work would give OpenMP a second team and slow both (decoding/threads.py).
    if args.threads:
        on_model_thread(torch.set_num_threads, args.threads)
    modes = [m for m in args.modes.split(",") if m]
    loaded = on_model_thread(lambda: load_model(args.model, device=args.device, dtype=args.dtype))
    backend = LocalBackend.from_model(loaded.model, loaded.tokenizer, name=loaded.source.name)
    requests = [
        Request.of(q, max_tokens=args.max_tokens, temperature=0) for q in PROMPTS[: args.prompts]
    ]
    prompts = [backend.encode(r) for r in requests]
    eos = backend._eos
    methods = ["hf_generate", *modes]
    # Warm-up: first calls pay for allocations and kernel selection.
    hf_generate(loaded.model, loaded.tokenizer, prompts[0], 8, eos)
    for mode in modes:
        backend.set_decoding(mode)
        await backend.complete(Request.of(PROMPTS[0], max_tokens=8, temperature=0))
    reference: dict[int, str] = {}
    per_run: dict[str, list[float]] = {m: [] for m in methods}
    identical: dict[str, bool] = {m: True for m in modes}
    step_counts: dict[str, tuple[int, int]] = {}
    for run in range(args.runs):
        tokens = dict.fromkeys(methods, 0)
        seconds = dict.fromkeys(methods, 0.0)
        for p, (request, prompt) in enumerate(zip(requests, prompts, strict=True)):
            # Rotate the order per prompt and run so no method always goes first.
            shift = (run + p) % len(methods)
            for method in methods[shift:] + methods[:shift]:
                start = time.perf_counter()
                if method == "hf_generate":
                    text, n = hf_generate(
                        loaded.model, loaded.tokenizer, prompt, args.max_tokens, eos
                    )
                    reference.setdefault(p, text)
                else:
                    backend.set_decoding(method)
                    completion = await backend.complete(request)
                    text, n = completion.text, completion.usage.completion_tokens
                    stats = backend.decoder.stats
                    made, rows = step_counts.get(method, (0, 0))
                    step_counts[method] = (made + stats.generated_tokens, rows + stats.row_steps)
                seconds[method] += time.perf_counter() - start
                tokens[method] += n
                if method != "hf_generate":
                    identical[method] = identical[method] and text == reference.get(p, text)
        for m in methods:
            per_run[m].append(tokens[m] / seconds[m])
        print(
            f"run {run + 1}/{args.runs}: "
            + ", ".join(f"{m} {per_run[m][-1]:.1f}" for m in methods),
            flush=True,
        )
    results = []
    for m in methods:
        ratios = [a / b for a, b in zip(per_run[m], per_run["hf_generate"], strict=True)]
        results.append(
            {
                "method": m,
                "tokens_per_s_median": round(statistics.median(per_run[m]), 2),
                "ratio_vs_generate_median": round(statistics.median(ratios), 3),
                "tokens_per_step": round(step_counts[m][0] / max(1, step_counts[m][1]), 3)
                if m in step_counts
                else 1.0,
                "identical_to_generate": identical.get(m, True),
                "tokens_per_s_runs": [round(x, 2) for x in per_run[m]],
            }
        )
    print()
    print(
        f"model {args.model}, CPU float32, {torch.get_num_threads()} threads, "
        f"{len(requests)} prompts x {args.max_tokens} tokens, median of {args.runs} runs"
    )
    print()
    print("| method | tokens/s (median) | vs generate | tokens/step | identical |")
    print("|---|---:|---:|---:|:---:|")
    for r in results:
        print(
            f"| {r['method']} | {r['tokens_per_s_median']:.2f} "
            f"| {r['ratio_vs_generate_median']:.2f}x | {r['tokens_per_step']:.2f} "
            f"| {'yes' if r['identical_to_generate'] else 'NO'} |"
        )
    if args.json_path:
        meta = {k: v for k, v in vars(args).items() if k != "json_path"}
        with open(args.json_path, "w") as fh:  # noqa: ASYNC230 - a script's last act
            json.dump(
                {"config": meta, "threads": torch.get_num_threads(), "results": results},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    anyio.run(main)
