"""Labelled questions and how well a router's decisions match them.

The binary task is the paper's: did the router choose ``"sot"`` where the label says
SoT fits? ``"sot-dag"`` and everything else count as "not sot". The three-class
accuracy compares the decision with the label directly (a ``"self-consistency"``
decision counts as ``"direct"``: it is how a router opts math out of SoT).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..types import Decision
from .base import DIRECT, LABELS, SELF_CONSISTENCY, SOT, Label

__all__ = ["Labelled", "Scores", "read_labelled", "score_decisions"]


@dataclass(frozen=True, slots=True)
class Labelled:
    """One labelled question."""

    id: str
    question: str
    label: Label
    """The three-class label."""
    sot: bool
    """Whether plain SoT fits: the binary label."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any], where: str = "row") -> Labelled:
        """Read ``question``, ``label3`` or ``label``, and ``sot`` (derived if absent)."""
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ConfigurationError(f"{where}: needs a non-empty 'question' string")
        label = row.get("label3", row.get("label"))
        if label not in LABELS:
            raise ConfigurationError(f"{where}: label must be one of {LABELS}, got {label!r}")
        sot = row.get("sot", label == SOT)
        if not isinstance(sot, bool):
            raise ConfigurationError(f"{where}: 'sot' must be true or false, got {sot!r}")
        return cls(id=str(row.get("id", where)), question=question, label=label, sot=sot)


def read_labelled(path: str | Path) -> list[Labelled]:
    """Read a labelled JSONL file; a bad line raises ``ConfigurationError`` naming it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read labelled questions from {path}: {exc}") from exc
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise ConfigurationError(f"{where}: expected a JSON object")
        rows.append(Labelled.from_row(data, where))
    if not rows:
        raise ConfigurationError(f"{path} holds no labelled questions")
    return rows


@dataclass(frozen=True, slots=True)
class Scores:
    """Binary scores of ``"sot"`` decisions, and three-class accuracy."""

    n: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    accuracy3: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _three_class(strategy: str) -> str:
    return DIRECT if strategy == SELF_CONSISTENCY else strategy


def score_decisions(decisions: Sequence[Decision], gold: Sequence[Labelled]) -> Scores:
    """Compare decisions with labels, pairwise; both sequences must have the same length."""
    if len(decisions) != len(gold) or not gold:
        raise ValueError(f"need as many decisions as labels, got {len(decisions)} and {len(gold)}")
    tp = fp = fn = tn = right3 = 0
    for d, g in zip(decisions, gold, strict=True):
        said = d.strategy == SOT
        tp += said and g.sot
        fp += said and not g.sot
        fn += not said and g.sot
        tn += not said and not g.sot
        right3 += _three_class(d.strategy) == g.label
    n = len(gold)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(
        n=n,
        accuracy=(tp + tn) / n,
        precision=precision,
        recall=recall,
        f1=f1,
        accuracy3=right3 / n,
    )
