"""The llama.cpp runtime against llama-cpp-python itself, on the bundled GGUF, same run.

Baselines, the tools a user would pick instead, on the same file and the same prompt
token ids (sotflow's chat template, tokenised once):

- one stream: llama-cpp-python's ``Llama.create_completion`` greedy (its defaults, the
  threads given), against ``LocalBackend`` plain and with its default decoding;
- 8 requests at once: llama.cpp's own batch API used the plain way (each prompt
  prefilled, then one ``llama_batch`` of 8 sequences a step, argmax), against 8
  concurrent ``LocalBackend.complete`` calls;
- local SoT against a direct answer and against ``auto`` (the router), on 6 questions;
- in a fresh process with no cache: load time and peak RSS of loading ``smollm2`` and
  answering one question.

Rounds alternate which side runs first; figures are medians over rounds. The baselines
run on sotflow's model thread, as its own calls do: this llama.cpp is built with
OpenMP, and a second thread calling into it gets a second team of spinning OpenMP
threads that slows both sides (seen here: the same greedy stream at 23-80 tokens/s).

    python benchmarks/llama_cpp_runtime.py --rounds 5 \\
        --json benchmarks/results/llama_cpp_runtime.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

import sotflow
from sotflow.backends.local import LocalBackend
from sotflow.decoding.threads import on_model_thread

PROMPTS = [
    "How can I improve my time management?",
    "Explain how a bicycle works.",
    "What are the benefits of regular exercise?",
    "Give me some tips for learning a new language.",
    "How do I prepare for a job interview?",
    "What should I consider when buying a used car?",
    "How can I reduce stress at work?",
    "Describe the water cycle.",
]
SOT_QUESTIONS = [
    "What are the most effective ways to deal with stress?",
    "How can I improve my time management skills?",
    "What are some tips for staying healthy while working from home?",
    "How can I become a better public speaker?",
    "What are the benefits of reading books regularly?",
    "How do I start saving money on a small income?",
]


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


class OwnBatch:
    """llama.cpp's batch API, the straightforward way: a baseline, not sotflow's code."""

    def __init__(self, path: str, threads: int, n_seq: int) -> None:
        import llama_cpp as L

        self.L = L
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        p = L.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = 4096, 512, 512, n_seq
        p.n_threads = p.n_threads_batch = threads
        p.kv_unified = True
        self.ctx = L.llama_init_from_model(self.model, p)
        self.vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(512, 0, 1)
        self.eog = L.llama_model_get_vocab(self.model)

    def _run(self, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq, out) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
            b.seq_id[i][0] = seq
        assert self.L.llama_decode(self.ctx, b) == 0

    def generate(self, prompts: list[list[int]], n: int) -> int:
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        current = []
        for s, prompt in enumerate(prompts):
            self._run([(t, i, s, i == len(prompt) - 1) for i, t in enumerate(prompt)])
            last = L.llama_get_logits_ith(self.ctx, -1)
            current.append(int(np.ctypeslib.as_array(last, shape=(self.vocab,)).argmax()))
        live = list(range(len(prompts)))
        pos = [len(p) for p in prompts]
        produced = [1] * len(prompts)
        while live:
            self._run([(current[s], pos[s], s, True) for s in live])
            for i, s in enumerate(live):
                row = np.ctypeslib.as_array(
                    L.llama_get_logits_ith(self.ctx, i), shape=(self.vocab,)
                )
                current[s] = int(row.argmax())
                pos[s] += 1
                produced[s] += 1
            live = [
                s
                for s in live
                if produced[s] < n and not L.llama_vocab_is_eog(self.eog, current[s])
            ]
        return sum(produced)


async def one_stream(backend: LocalBackend, llm: Any, args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, list[float]] = {"llama-cpp-python": [], "plain": [], "default": []}
    default_mode = backend.default_mode()
    for r in range(args.rounds):
        order = ["llama-cpp-python", "plain", "default"]
        if r % 2:
            order.reverse()
        for who in order:
            tokens, seconds = 0, 0.0
            for prompt in PROMPTS[: args.prompts]:
                request = sotflow.Request.of(prompt, max_tokens=args.max_tokens, temperature=0)
                ids = backend.encode(request)
                began = time.perf_counter()
                if who == "llama-cpp-python":
                    out = on_model_thread(
                        functools.partial(
                            llm.create_completion,
                            ids,
                            max_tokens=args.max_tokens,
                            temperature=0.0,
                        )
                    )
                    tokens += out["usage"]["completion_tokens"]
                else:
                    backend.set_decoding("plain" if who == "plain" else default_mode)
                    c = await backend.complete(request)
                    tokens += c.usage.completion_tokens
                seconds += time.perf_counter() - began
            rows[who].append(tokens / seconds)
    base = median(rows["llama-cpp-python"])
    return {
        "tokens_per_s": {k: median(v) for k, v in rows.items()},
        "ratio_plain": round(median(rows["plain"]) / base, 3),
        "ratio_default": round(median(rows["default"]) / base, 3),
        "default_mode": default_mode,
    }


async def eight_at_once(
    backend: LocalBackend, own: OwnBatch, args: argparse.Namespace
) -> dict[str, Any]:
    requests = [sotflow.Request.of(p, max_tokens=args.max_tokens, temperature=0) for p in PROMPTS]
    prompts = [backend.encode(r) for r in requests]
    backend.set_decoding(None)
    ours, theirs = [], []
    for r in range(args.rounds):
        for who in ["own", "ours"] if r % 2 == 0 else ["ours", "own"]:
            began = time.perf_counter()
            if who == "own":
                tokens = on_model_thread(own.generate, prompts, args.max_tokens)
                theirs.append(tokens / (time.perf_counter() - began))
            else:
                totals: list[int] = []

                async def one(request: sotflow.Request, totals: list[int] = totals) -> None:
                    totals.append((await backend.complete(request)).usage.completion_tokens)

                async with anyio.create_task_group() as tg:
                    for request in requests:
                        tg.start_soon(one, request)
                ours.append(sum(totals) / (time.perf_counter() - began))
    return {
        "tokens_per_s": {"llama.cpp batch": median(theirs), "sotflow": median(ours)},
        "ratio": round(median(ours) / median(theirs), 3),
    }


async def sot_vs_direct(backend: LocalBackend, args: argparse.Namespace) -> dict[str, Any]:
    backend.set_decoding(None)
    direct = sotflow.Direct(max_tokens=args.direct_max_tokens, temperature=0)
    sot = sotflow.SkeletonOfThought(temperature=0)
    strategies = {
        "direct": direct,
        "sot": sot,
        # The same two to choose from: auto against direct measures the choice alone.
        "auto": sotflow.Routed(strategies={"direct": direct, "sot": sot}),
    }
    per: dict[str, list[float]] = {k: [] for k in strategies}
    chosen: list[str] = []
    async with sotflow.Engine(backend, timeout=None) as engine:
        for i, question in enumerate(SOT_QUESTIONS[: args.sot_questions]):
            order = list(strategies)
            if i % 2:
                order.reverse()
            for name in order:
                answer = await engine.run(strategies[name], question)
                per[name].append(answer.latency_s)
                if name == "auto":
                    chosen.append(answer.strategy)
    direct_s = median(per["direct"])
    return {
        "latency_s": {k: median(v) for k, v in per.items()},
        "sot_speedup": round(direct_s / median(per["sot"]), 3),
        "auto_over_direct": round(median(per["auto"]) / direct_s, 3),
        "auto_chose": chosen,
    }


FRESH = """
import json, sys, time
began = time.perf_counter()
import anyio, sotflow
b = sotflow.LocalBackend("smollm2")
loaded = time.perf_counter() - began
import sotflow.testing  # for peak_rss_mb, after the clock: not part of a user's load
c = anyio.run(b.complete, sotflow.Request.of("How can I sleep better?", max_tokens=64))
print(json.dumps({"load_s": round(loaded, 3), "runtime": b.stats["runtime"],
  "torch_loaded": "torch" in sys.modules,
  "peak_rss_mb": sotflow.testing.peak_rss_mb()}))
"""


def fresh_process() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "SOTFLOW_CACHE_DIR": cache}  # nothing measured or cached yet
        out = subprocess.run(
            [sys.executable, "-c", FRESH], capture_output=True, text=True, env=env, check=True
        )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main_job() -> dict[str, Any]:
    """The README's main job: the three example questions on the local model."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as out:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        began = time.perf_counter()
        subprocess.run(
            [
                sys.executable, "-m", "sotflow.cli", "batch",
                str(root / "examples" / "questions.jsonl"),
                "-o", str(Path(out) / "answers.jsonl"), "--overwrite", "--max-tokens", "128",
            ],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
        return {"seconds": round(time.perf_counter() - began, 2)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    backend = LocalBackend("smollm2", threads=args.threads, max_batch_size=16)
    path = str(backend.loaded.source.path)  # type: ignore[union-attr]
    llm = llama_cpp.Llama(path, n_ctx=4096, n_threads=args.threads, verbose=False)
    own = OwnBatch(path, args.threads, len(PROMPTS))
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads},
        "block_costs": backend.costs.as_dict(),
        "one_stream": await one_stream(backend, llm, args),
        "eight_at_once": await eight_at_once(backend, own, args),
        "sot": await sot_vs_direct(backend, args),
        "fresh_process": fresh_process(),
        "main_job": main_job(),
        "settings": {k: v for k, v in vars(args).items() if k != "json_path"},
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per one-stream round")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sot-questions", type=int, default=6)
    ap.add_argument("--direct-max-tokens", type=int, default=256)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()
    result = anyio.run(run, args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")


if __name__ == "__main__":
    main()
