from __future__ import annotations

from pathlib import Path

import pytest

from sotflow.routing.evaluate import Labelled, read_labelled

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "router"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def train_rows() -> list[Labelled]:
    return read_labelled(DATA / "train.jsonl")


@pytest.fixture(scope="session")
def test_rows() -> list[Labelled]:
    return read_labelled(DATA / "test.jsonl")


@pytest.fixture(scope="session")
def vicuna_rows() -> list[Labelled]:
    return read_labelled(DATA / "vicuna80.jsonl")
