"""How well each router picks SoT, on labelled questions, and how long it takes.

    python benchmarks/router_eval.py                      # test.jsonl and vicuna80.jsonl
    python benchmarks/router_eval.py data/router/train.jsonl --json results.json

For every file and router: binary accuracy, precision, recall and F1 of the ``"sot"``
decision against the ``sot`` field, three-class accuracy against ``label3``/``label``,
and routing time per question, both for the whole file in one ``decide_many`` call
("batch"; the median of ``--repeat`` runs) and for one ``decide`` call at a time
("single"; the median over the questions). Routers are
deterministic, so the scores are the same on every run; only the times vary. The
embedding router is skipped, with the reason, when its dependencies are missing; its
model is loaded before timing starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run from a checkout without installing: benchmarks/ sits beside sotflow/.
    sys.path.insert(0, str(ROOT))

from sotflow.backends.openai import OpenAIBackend  # noqa: E402
from sotflow.errors import ConfigurationError  # noqa: E402
from sotflow.routing import (  # noqa: E402
    EmbeddingRouter,
    KeywordBaseline,
    LLMRouter,
    Router,
    RuleRouter,
    decide_many,
)
from sotflow.routing.evaluate import Labelled, read_labelled, score_decisions  # noqa: E402

DEFAULT_FILES = (ROOT / "data/router/test.jsonl", ROOT / "data/router/vicuna80.jsonl")


def build_routers(names: Sequence[str]) -> tuple[list[Router], dict[str, str]]:
    routers: list[Router] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "rules":
            routers.append(RuleRouter())
        elif name == "keyword":
            routers.append(KeywordBaseline())
        elif name == "llm":
            if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
                skipped[name] = "set OPENAI_API_KEY or OPENAI_BASE_URL (and SOTFLOW_MODEL)"
                continue
            routers.append(LLMRouter(OpenAIBackend()))
        elif name == "embedding":
            try:
                router = EmbeddingRouter()
                router.encoder.load()
            except ConfigurationError as exc:
                skipped[name] = str(exc)
                continue
            routers.append(router)
    return routers, skipped


async def measure(router: Router, rows: Sequence[Labelled], repeat: int) -> dict[str, Any]:
    questions = [r.question for r in rows]
    batch_s = []
    for _ in range(repeat):
        start = time.perf_counter()
        decisions = await decide_many(router, questions)
        batch_s.append(time.perf_counter() - start)
    single = []
    # A model-backed router pays for every call: time it on the batch only.
    for q in questions if router.name != "llm" else ():
        start = time.perf_counter()
        await router.decide(q)
        single.append(time.perf_counter() - start)
    scores = score_decisions(decisions, rows)
    return {
        **scores.as_dict(),
        "batch_us_per_question": statistics.median(batch_s) / len(rows) * 1e6,
        "single_us_median": statistics.median(single) * 1e6 if single else float("nan"),
        "errors": [
            {"id": r.id, "label": r.label, "decision": d.strategy, "reason": d.reason}
            for r, d in zip(rows, decisions, strict=True)
            if (d.strategy == "sot") != r.sot
        ],
    }


def _time(us: float) -> str:
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.1f} ms"


def markdown(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = []
    for path, by_router in results.items():
        n = next(iter(by_router.values()))["n"] if by_router else 0
        lines += [
            f"### {path} ({n} questions)",
            "",
            "| router | accuracy | precision | recall | F1 | 3-class accuracy "
            "| time/question (batch) | time/question (single, median) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in by_router.items():
            lines.append(
                f"| {name} | {r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} "
                f"| {r['f1']:.3f} | {r['accuracy3']:.3f} | {_time(r['batch_us_per_question'])} "
                f"| {_time(r['single_us_median'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, default=list(DEFAULT_FILES))
    parser.add_argument(
        "--routers",
        default="rules,keyword,embedding",
        help="comma-separated: rules, keyword, embedding, llm (default: the first three; llm "
        "asks the model configured by OPENAI_BASE_URL / OPENAI_API_KEY / SOTFLOW_MODEL)",
    )
    parser.add_argument("--json", type=Path, help="also write the results, with errors, here")
    parser.add_argument("--errors", action="store_true", help="list each misrouted question")
    parser.add_argument(
        "--repeat", type=int, default=3, help="batch timings to take the median of (default 3)"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.routers.split(",") if n.strip()]
    unknown = set(names) - {"rules", "keyword", "embedding", "llm"}
    if unknown:
        parser.error(f"unknown routers: {', '.join(sorted(unknown))}")
    try:
        datasets = {_show(p): read_labelled(p) for p in args.files}
    except ConfigurationError as exc:
        parser.error(str(exc))
    routers, skipped = build_routers(names)

    async def run_all() -> dict[str, dict[str, dict[str, Any]]]:
        try:
            return {
                path: {router.name: await measure(router, rows, args.repeat) for router in routers}
                for path, rows in datasets.items()
            }
        finally:
            for router in routers:
                if isinstance(router, LLMRouter):
                    await router.backend.aclose()

    results = anyio.run(run_all)
    print(markdown(results))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if args.errors:
        for path, by_router in results.items():
            for name, r in by_router.items():
                for e in r["errors"]:
                    print(
                        f"{path} {name} {e['id']}: {e['label']} -> {e['decision']} ({e['reason']})"
                    )
    if args.json:
        payload = {
            "results": results,
            "skipped": skipped,
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0


def _show(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


if __name__ == "__main__":
    sys.exit(main())
