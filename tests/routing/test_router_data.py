"""The labelled router data is well-formed, and the split is the one README.md describes."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sotflow.routing import LABELS

from .conftest import DATA

OWN_FIELDS = {"id", "question", "label", "sot", "category"}


def raw(name: str) -> list[dict[str, Any]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def canonical(question: str) -> str:
    return re.sub(r"\W+", " ", question.lower()).strip()


@pytest.mark.parametrize("name", ["train.jsonl", "test.jsonl"])
def test_own_rows_have_the_documented_fields(name: str) -> None:
    for row in raw(name):
        assert OWN_FIELDS <= row.keys() <= OWN_FIELDS | {"note"}, row
        assert re.fullmatch(r"s\d{3}", row["id"])
        assert row["label"] in LABELS
        assert row["sot"] is (row["label"] == "sot")
        assert row["question"] == row["question"].strip() and row["question"]
        assert isinstance(row["category"], str) and row["category"]
        assert isinstance(row.get("note", ""), str)


def test_vicuna80_keeps_the_shared_fields_and_adds_labels() -> None:
    rows = raw("vicuna80.jsonl")
    assert len(rows) == 80
    assert [r["id"] for r in rows] == [f"v{i:03d}" for i in range(1, 81)]
    assert sum(r["sot"] for r in rows) == 37  # the SoT authors' count
    for row in rows:
        assert set(row) == {"id", "question", "category", "sot", "label", "label3"}
        assert row["label"] == ("sot" if row["sot"] else "direct")
        assert row["label3"] in LABELS
        # label3 may only refine "not sot" into sot-dag; it never flips the paper's label.
        assert (row["label3"] == "sot") == row["sot"]


def test_vicuna80_matches_the_shared_copy_where_present() -> None:
    shared = Path("/work/shared/data/vicuna80_router.jsonl")
    if not shared.exists():
        pytest.skip("the shared data folder is not on this machine")
    original = [json.loads(line) for line in shared.read_text(encoding="utf-8").splitlines()]
    ours = raw("vicuna80.jsonl")
    for a, b in zip(original, ours, strict=True):
        assert {k: b[k] for k in a} == a


def test_ids_are_unique_and_train_test_are_disjoint() -> None:
    train, test, vicuna = raw("train.jsonl"), raw("test.jsonl"), raw("vicuna80.jsonl")
    ids = [r["id"] for r in train + test + vicuna]
    assert len(ids) == len(set(ids))
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    # The own questions are numbered s001.. without gaps across the two files.
    own = sorted(int(r["id"][1:]) for r in train + test)
    assert own == list(range(1, len(own) + 1))


def test_no_question_appears_twice_across_files() -> None:
    everything = raw("train.jsonl") + raw("test.jsonl") + raw("vicuna80.jsonl")
    counts = Counter(canonical(r["question"]) for r in everything)
    assert [q for q, n in counts.items() if n > 1] == []


def test_enough_own_questions_in_every_label_and_split() -> None:
    train, test = raw("train.jsonl"), raw("test.jsonl")
    assert len(train) + len(test) >= 260
    for rows in (train, test):
        counts = Counter(r["label"] for r in rows)
        assert all(counts[label] >= 10 for label in LABELS), counts
    assert 0.25 <= len(test) / (len(train) + len(test)) <= 0.35


def test_split_is_the_stratified_seeded_split_from_split_py() -> None:
    spec = importlib.util.spec_from_file_location("router_split", DATA / "split.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train, test = raw("train.jsonl"), raw("test.jsonl")
    assert module.split(train + test) == (train, test)
