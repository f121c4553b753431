"""``sotflow train-heads``: self-distil Medusa/Cerberus draft heads for a local model.

    sotflow train-heads --model smollm2 --questions data/router/train.jsonl \\
        --kind medusa -o heads.safetensors --corpus corpus.jsonl

The model answers every question greedily, directly and with Skeleton-of-Thought (the
skeleton and every point: the prompts the heads will meet), through a ``LocalBackend``;
every sequence that leaves the decoder is recorded. ``--corpus`` keeps that recording
(JSONL, one ``{"tokens", "prompt_len"}`` a line) and reuses it when the file exists, so
heads of another kind or size train without answering again. The heads file records
the data, the settings and the held-out accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from ..errors import ConfigurationError
from .options import positive_float, positive_int
from .records import read_items

__all__ = ["main", "read_corpus"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="sotflow train-heads",
        description="Train draft heads (Medusa/Cerberus) on a local model's own answers.",
    )
    ap.add_argument("--model", default="smollm2", help="alias, HF folder or .gguf")
    ap.add_argument("--questions", help="JSONL ('question' or 'prompt') or .txt, one a line")
    ap.add_argument("-o", "--output", required=True, help="the heads file to write")
    ap.add_argument(
        "--kind",
        choices=("medusa", "cerberus"),
        default="medusa",
        help="medusa: independent heads; cerberus: each head also reads the one before "
        "(default medusa)",
    )
    ap.add_argument("--heads", type=positive_int, default=3, help="number of heads (default 3)")
    ap.add_argument("--corpus", help="JSONL corpus: read if it exists, else record and write")
    ap.add_argument("--limit", type=positive_int, help="use only the first N questions")
    ap.add_argument("--no-sot", action="store_true", help="direct answers only, no SoT prompts")
    ap.add_argument(
        "--direct-max-tokens",
        type=positive_int,
        default=320,
        help="cap on each recorded direct answer's tokens (default 320)",
    )
    ap.add_argument(
        "--epochs", type=positive_int, default=6, help="passes over the corpus (default 6)"
    )
    ap.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 0.001)")
    ap.add_argument(
        "--batch-size",
        type=positive_int,
        default=512,
        help="training positions per optimiser step (default 512)",
    )
    ap.add_argument(
        "--max-vocab",
        type=positive_int,
        default=8192,
        help="the heads predict only the corpus's N most frequent tokens (default 8192)",
    )
    ap.add_argument("--top-k", type=positive_int, default=4, help="children per tree node")
    ap.add_argument("--no-token", action="store_true", help="heads read the hidden state only")
    ap.add_argument(
        "--seed", type=int, default=0, help="random seed of the split and training (default 0)"
    )
    ap.add_argument("--report", help="also write the training report here (JSON)")
    ap.add_argument(
        "--runtime",
        choices=("auto", "llama.cpp", "torch"),
        default="auto",
        help="the runtime whose hidden states the heads learn from (the one that will use them)",
    )
    ap.add_argument("--device", default="auto", help="cpu, cuda, ... (default auto)")
    ap.add_argument(
        "--dtype",
        default=None,
        help="float32, bfloat16, float16 (default: chosen for the device)",
    )
    return ap


def _say(text: str) -> None:
    print(f"sotflow: {text}", file=sys.stderr, flush=True)


def read_corpus(path: Path) -> tuple[list[tuple[list[int], int]], dict[str, Any]]:
    """The corpus's sequences and the record of where they came from (its first line)."""
    items = []
    record: dict[str, Any] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if number == 1 and isinstance(row, dict) and "record" in row:
                record = dict(row["record"])
                continue
            items.append(([int(t) for t in row["tokens"]], int(row["prompt_len"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"{path}: line {number} is not a corpus record ({exc}); "
                "delete the file to record a new corpus"
            ) from exc
    return items, record


def _write_corpus(path: Path, items: list[tuple[list[int], int]], record: dict[str, Any]) -> None:
    lines = [json.dumps({"record": record})]
    lines += [json.dumps({"tokens": t, "prompt_len": n}) for t, n in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _record_corpus(backend: Any, questions: list[str], args: argparse.Namespace) -> list[Any]:
    from ..engine import Engine
    from ..strategies.direct import Direct
    from ..strategies.skeleton import SkeletonOfThought

    recorded: list[tuple[list[int], int]] = []
    backend.decoder.on_leave = lambda tokens, n: recorded.append((list(tokens), n))
    strategies: list[Any] = [Direct(max_tokens=args.direct_max_tokens, temperature=0)]
    if not args.no_sot:
        # A skeleton that does not parse falls back to a direct answer: capped alike.
        strategies.append(
            SkeletonOfThought(temperature=0, fallback_max_tokens=args.direct_max_tokens)
        )

    async def run() -> None:
        # No per-attempt timeout: on a CPU a batch of long answers can take minutes, and
        # a retried answer would only be recorded twice.
        async with Engine(backend, timeout=None) as engine:
            for strategy in strategies:
                began = time.perf_counter()
                answers = await engine.batch(strategy, questions, concurrency=16)
                failed = [a for a in answers if not a.ok]
                _say(
                    f"{strategy.name}: {len(answers) - len(failed)} answers, "
                    f"{len(failed)} failed, {time.perf_counter() - began:.0f} s"
                    + (f" (first failure: {failed[0].error})" if failed else "")
                )

    try:
        anyio.run(run)
    finally:
        backend.decoder.on_leave = None
    return recorded


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    corpus_path = Path(args.corpus) if args.corpus else None
    if not args.questions and not (corpus_path and corpus_path.is_file()):
        raise ConfigurationError("pass --questions FILE (or --corpus FILE that already exists)")
    from ..backends.local import LocalBackend
    from ..decoding.head_training import Corpus, save_heads, train_heads
    from ..decoding.threads import on_model_thread

    # Inputs are checked before the model loads: a typo should not cost a load.
    data: dict[str, Any] = {"model": args.model}
    items: list[tuple[list[int], int]] | None = None
    questions: list[str] = []
    if corpus_path and corpus_path.is_file():
        items, data = read_corpus(corpus_path)
        data["corpus_file"] = corpus_path.name
        _say(f"read {len(items)} sequences from {corpus_path}")
    else:
        rows = [item for item in read_items(args.questions) if item.question]
        questions = [str(item.question) for item in rows][: args.limit]
        if not questions:
            raise ConfigurationError(f"{args.questions} has no questions")
    backend = LocalBackend(
        args.model, runtime=args.runtime, device=args.device, dtype=args.dtype, max_batch_size=16
    )
    if items is None:
        _say(f"recording the model's answers to {len(questions)} questions")
        items = _record_corpus(backend, questions, args)
        digest = hashlib.sha256(Path(args.questions).read_bytes()).hexdigest()
        data.update(
            questions_file=Path(args.questions).name,
            sha256=digest,
            questions=len(questions),
            strategies=["direct"] if args.no_sot else ["direct", "sot"],
            direct_max_tokens=args.direct_max_tokens,
        )
        if corpus_path:
            _write_corpus(corpus_path, items, data)
            _say(f"wrote {len(items)} sequences to {corpus_path}")
    corpus = Corpus.of(items)
    if len(corpus.sequences) < 2:
        raise ConfigurationError("the corpus has fewer than two usable sequences")
    heads, report = on_model_thread(
        lambda: train_heads(
            backend.runtime,
            corpus,
            kind=args.kind,
            num_heads=args.heads,
            sees_token=not args.no_token,
            max_vocab=args.max_vocab,
            top_k=args.top_k,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            log=_say,
        )
    )
    report["data"] = data
    save_heads(heads, args.output, report)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    held = report["held_out"]
    _say(
        f"wrote {args.kind} heads to {args.output}: held-out top-1 accuracy per head "
        f"{held['top1']}, top-{args.top_k} {held[f'top{args.top_k}']}"
        + (f", entropy gate {report['entropy_gate']}" if args.kind == "cerberus" else "")
    )
    return 0
