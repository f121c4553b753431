"""Meta-generation strategies vs one direct call, end to end, on a server paced like an API.

The loopback server answers like a model solving word problems
(``sotflow.testing.strategy_responders.strategy_responder``): time to first token
0.25 s, 50 tokens/s per request, solutions of about 150 tokens (log-normal, +-25%) that
end "The answer is N." and are right 60% of the time, short judge scores, critiques and
tree-search steps.
Each round times a direct answer to every question, then every strategy on the same
questions (questions run at once, strategies one after another), so each strategy is
compared with direct calls measured in the same run.

Reported per strategy: median latency, median latency relative to the same question's
direct call, mean tokens (prompt + completion of the calls that finished; a cancelled
call is not billed here), tokens relative to direct, and how often the final answer is
the right one. Then what self-consistency's early stopping saves.

    python benchmarks/strategies.py [--rounds 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

import sotflow
from sotflow.strategies import (
    BestOfN,
    Chain,
    Judge,
    Refine,
    RejectionSampling,
    SelfConsistency,
    TreeSearch,
)
from sotflow.strategies.answers import make_extractor, normalize_answer
from sotflow.testing import LoopbackServer
from sotflow.testing.strategy_responders import right_answer

RESPONDER = "sotflow.testing.strategy_responders:strategy_responder"

QUESTIONS = [
    "A train covers 84 km in 1.5 hours. At the same speed, how far does it go in 4 hours?",
    "A shop sells pens at 3 for 2 euros. How many pens can you buy with 18 euros?",
    "Tom is twice as old as Ann; in 6 years their ages will add up to 45. How old is Ann?",
    "A tank fills in 6 hours with one pipe and in 3 hours with another. How long with both?",
    "Out of 240 students, 35% walk to school and a quarter of the rest cycle. How many cycle?",
    "A rectangle's perimeter is 54 cm and its length is twice its width. What is its area?",
]


Make = Callable[[str], sotflow.Strategy]


def strategies(seed: int) -> dict[str, Make]:
    """Each strategy as a function of the question (the verifier knows what is right)."""

    def checked(question: str) -> sotflow.Strategy:
        right = str(right_answer(question))
        return RejectionSampling(lambda text: picked(text) == right, 12, batch=4, seed=seed)

    chain = Chain(
        "Question: $question\n\nRestate the problem in one sentence, listing its quantities.",
        "Question: $question\n\nRestated:\n$previous\n\nSolve it step by step.",
    )
    fixed: dict[str, sotflow.Strategy] = {
        "self-consistency n=8": SelfConsistency(8, seed=seed),
        "self-consistency n=8, no early stop": SelfConsistency(8, early_stop=False, seed=seed),
        "best-of-n n=4, judge": BestOfN(4, Judge(), seed=seed),
        "best-of-n n=4, judge, threshold 8": BestOfN(4, Judge(), threshold=8, seed=seed),
        "refine, up to 2 rounds": Refine(2),
        "tree search b=2 d=3 k=3, judge": TreeSearch(2, 3, proposals=3),
        "chain of 2 prompts": chain,
    }
    makes: dict[str, Make] = {name: (lambda q, s=s: s) for name, s in fixed.items()}
    makes["rejection, batch 4, up to 12"] = checked
    return makes


def picked(text: str) -> str | None:
    found = make_extractor("auto")(text)
    return normalize_answer(found) if found is not None else None


async def run_all(engine: sotflow.Engine, make: Make) -> list[sotflow.Answer]:
    """Every question at once, each with its own strategy object."""
    answers: list[sotflow.Answer | None] = [None] * len(QUESTIONS)

    async def one(index: int, question: str) -> None:
        answers[index] = await engine.run(make(question), question, return_errors=True)

    async with anyio.create_task_group() as tg:
        for index, question in enumerate(QUESTIONS):
            tg.start_soon(one, index, question)
    return [a for a in answers if a is not None]


async def measure(base_url: str, rounds: int) -> dict[str, list[dict[str, Any]]]:
    backend = sotflow.OpenAIBackend(
        model="loopback", base_url=base_url, api_key="bench", max_concurrency=512, prefill=True
    )
    rows: dict[str, list[dict[str, Any]]] = {}

    def record(name: str, answer: sotflow.Answer, direct: sotflow.Answer) -> None:
        assert answer.ok, (name, answer.error)
        final = answer.details.get("answer") or picked(answer.text)
        rows.setdefault(name, []).append(
            {
                "question": answer.question,
                "latency_s": answer.latency_s,
                "tokens": answer.usage.total_tokens,
                "completion_tokens": answer.usage.completion_tokens,
                "calls": sum(1 for n in answer.trace.calls if n.status == "ok")
                if answer.trace
                else 0,
                "right": final is not None
                and normalize_answer(final) == str(right_answer(answer.question)),
                "direct_latency_s": direct.latency_s,
                "direct_tokens": direct.usage.total_tokens,
            }
        )

    async with sotflow.Engine(backend) as engine:
        for round_ in range(rounds):
            seed = 1000 * (round_ + 1)
            baseline = sotflow.Direct(seed=seed)
            direct = await run_all(engine, lambda q, b=baseline: b)
            by_question = {a.question: a for a in direct}
            for answer in direct:
                record("direct (baseline)", answer, answer)
            for name, make in strategies(seed).items():
                for answer in await run_all(engine, make):
                    record(name, answer, by_question[answer.question])
    return rows


def summarise(rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    med = statistics.median
    out = []
    for name, items in rows.items():
        out.append(
            {
                "strategy": name,
                "latency_s": med(r["latency_s"] for r in items),
                "latency_vs_direct": med(r["latency_s"] / r["direct_latency_s"] for r in items),
                "tokens": statistics.mean(r["tokens"] for r in items),
                "tokens_vs_direct": statistics.mean(r["tokens"] for r in items)
                / statistics.mean(r["direct_tokens"] for r in items),
                "calls": statistics.mean(r["calls"] for r in items),
                "right": sum(r["right"] for r in items) / len(items),
                "runs": len(items),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft", type=float, default=0.25)
    parser.add_argument("--tps", type=float, default=50.0)
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    with LoopbackServer(ttft=args.ttft, tps=args.tps, responder=RESPONDER) as server:
        rows = anyio.run(measure, server.base_url, args.rounds)
    table = summarise(rows)
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}; server: ttft "
        f"{args.ttft}s, {args.tps:g} tokens/s; {len(QUESTIONS)} questions x {args.rounds} "
        "rounds; latency: median, x direct: median per-question ratio to a direct call "
        "of the same round"
    )
    print()
    print("| strategy | latency | x direct | tokens | x direct | calls finished | right answer |")
    print("|---|---|---|---|---|---|---|")
    for s in table:
        print(
            f"| {s['strategy']} | {s['latency_s']:.2f} s | {s['latency_vs_direct']:.2f}x | "
            f"{s['tokens']:.0f} | {s['tokens_vs_direct']:.1f}x | {s['calls']:.1f} | "
            f"{s['right']:.0%} |"
        )
    by_name = {s["strategy"]: s for s in table}
    early, full = by_name["self-consistency n=8"], by_name["self-consistency n=8, no early stop"]
    print()
    print("| self-consistency n=8 | latency | x direct | tokens | calls finished |")
    print("|---|---|---|---|---|")
    for label, s in (("early stop", early), ("no early stop", full)):
        print(
            f"| {label} | {s['latency_s']:.2f} s | {s['latency_vs_direct']:.2f}x | "
            f"{s['tokens']:.0f} | {s['calls']:.1f} |"
        )
    print(
        f"| **early stop saves** | **{1 - early['latency_s'] / full['latency_s']:.0%}** | | "
        f"**{1 - early['tokens'] / full['tokens']:.0%}** | |"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"summary": table, "raw": rows, "args": vars(args)}, indent=2)
        )


if __name__ == "__main__":
    main()
