"""Draft-head variants on the same corpus, same split: what each design choice buys.

Trains, on the first ``--sequences`` sequences of a corpus recorded by
``sotflow train-heads --corpus FILE`` (its last 10% held out), Medusa heads that read the
hidden state only (the paper's design), Medusa heads that also read the decided token
(sotflow's default), and Cerberus heads; reports each head's held-out top-1 / top-4
accuracy. All variants see identical features, so the differences are the designs'.

    sotflow train-heads --questions data/router/train.jsonl --corpus corpus.jsonl -o h.safetensors
    python benchmarks/heads_ablation.py --corpus corpus.jsonl --sequences 400 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from sotflow.backends.local import LocalBackend
from sotflow.cli.train_heads import read_corpus
from sotflow.decoding.head_training import Corpus, prepare, train_heads
from sotflow.decoding.threads import on_model_thread

VARIANTS: dict[str, dict[str, Any]] = {
    "medusa, hidden state only": {"kind": "medusa", "sees_token": False},
    "medusa, + decided token": {"kind": "medusa", "sees_token": True},
    "cerberus, + decided token": {"kind": "cerberus", "sees_token": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sequences", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--runtime", default="torch", help="whose hidden states: torch or llama.cpp")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()
    items, record = read_corpus(args.corpus)
    corpus = Corpus.of(items[: args.sequences])
    backend = LocalBackend(args.model, runtime=args.runtime, device="cpu")
    model = backend.runtime
    began = time.perf_counter()
    data = on_model_thread(lambda: prepare(model, corpus))
    print(f"features: {time.perf_counter() - began:.0f} s", flush=True)
    results = []
    for name, settings in VARIANTS.items():
        began = time.perf_counter()
        _, report = on_model_thread(
            lambda s=settings: train_heads(model, data, epochs=args.epochs, **s)  # type: ignore[misc]
        )
        held = report["held_out"]
        results.append(
            {
                "variant": name,
                **settings,
                "top1": held["top1"],
                "top4": held["top4"],
                "held_out_positions": report["held_out_positions"],
                "train_positions": report["train_positions"],
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
        print(f"{name}: top-1 {held['top1']}, top-4 {held['top4']}", flush=True)
    print()
    print(
        f"{len(corpus.sequences)} sequences ({corpus.generated_tokens} generated tokens) of "
        f"{args.corpus.name}, last 10% held out, {args.epochs} epochs"
    )
    print()
    print("| variant | head 1 top-1 | head 2 top-1 | head 3 top-1 | head 1 top-4 |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        t1, t4 = r["top1"], r["top4"]
        print(f"| {r['variant']} | {t1[0]:.3f} | {t1[1]:.3f} | {t1[2]:.3f} | {t4[0]:.3f} |")
    if args.json_path:
        config = {k: str(v) for k, v in vars(args).items() if k != "json_path"}
        Path(args.json_path).write_text(
            json.dumps({"config": config, "corpus": record, "results": results}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
