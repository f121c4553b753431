"""AnswerQuestions in a real Ray Data pipeline (``map_batches`` on two actors), against
the loopback server, with the cluster-wide limits; each batch format on its own; and the
install hint without Ray."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from sotflow.backends.openai import OpenAIBackend
from sotflow.backends.scripted import ScriptedBackend
from sotflow.cli.records import OUTPUT_FIELDS
from sotflow.integrations.ray import AnswerQuestions, ClusterLimits
from sotflow.testing import Fault, LoopbackServer

RESPONDER = "sotflow.testing.responders:sot_responder"
SOT = (
    "What are some good ways to save money on groceries without eating badly?",
    "What habits help people keep their houseplants alive?",
    "What are good ways to meet people after moving to a new city?",
    "What are good habits for learning a new language?",
)
FAILING = "What are good habits for sleeping well? [[refused]]"
CAP = 3

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def answered(ray_cluster: str) -> Iterator[dict[str, Any]]:
    """One Ray Data run over rows of every kind; its rows, the server's and the limits'
    counters."""
    with LoopbackServer(ttft=0.05, responder=RESPONDER) as server:
        server.inject(Fault("status", status=400, match="[[refused]]", times=100))
        rows: list[dict[str, Any]] = [
            {"id": f"q{i}", "question": SOT[i % 4], "prompt": None, "topic": "advice", "answer": i}
            for i in range(10)
        ]
        rows += [
            {"id": "by-prompt", "question": None, "prompt": SOT[0], "topic": "x", "answer": None},
            {"id": "empty", "question": " ", "prompt": None, "topic": "y", "answer": None},
            {"id": "refused", "question": FAILING, "prompt": None, "topic": "z", "answer": None},
            {"id": None, "question": SOT[1], "prompt": None, "topic": "no id", "answer": None},
        ]
        limits = ClusterLimits.start(max_concurrency=CAP)
        backend = functools.partial(
            OpenAIBackend, base_url=server.base_url, api_key="k", model="loopback", prefill=True
        )
        out = (
            ray.data.from_items(rows)
            .map_batches(
                AnswerQuestions,
                fn_constructor_kwargs={"strategy": "sot", "backend": backend, "limits": limits},
                compute=ray.data.ActorPoolStrategy(size=2),
                batch_size=2,
            )
            .take_all()
        )
        yield {"rows": out, "server": server.stats(), "limits": limits.stats()}
        limits.stop()


def by_id(rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {row["id"]: row for row in rows}


@pytest.mark.slow
def test_every_row_comes_back_with_the_batch_fields_and_its_own(answered: dict) -> None:
    rows = answered["rows"]
    assert len(rows) == 14
    # Exactly the fields `sotflow batch` writes, plus the row's own; one named like an
    # output field (answer) is kept as input_answer, never dropped.
    expected = set(OUTPUT_FIELDS) | {"topic", "input_answer", "prompt"}
    for row in rows:
        assert set(row) == expected, row
    records = by_id(rows)
    for i in range(10):
        record = records[f"q{i}"]
        assert record["error"] is None
        assert record["question"] == SOT[i % 4]
        assert record["strategy"] == "sot"
        assert record["answer"] and len(record["points"]) >= 2
        assert record["topic"] == "advice" and record["input_answer"] == i
        assert record["usage"]["total_tokens"] > 0
    asked = records["by-prompt"]
    assert asked["question"] == SOT[0] and asked["error"] is None and asked["answer"]
    unnamed = records[None]  # a row without an id keeps none
    assert unnamed["topic"] == "no id" and unnamed["error"] is None and unnamed["answer"]


@pytest.mark.slow
def test_failed_rows_are_rows_with_their_error(answered: dict) -> None:
    records = by_id(answered["rows"])
    empty = records["empty"]
    assert empty["error"]["type"] == "InputError"
    assert "empty or non-text question" in empty["error"]["message"]
    assert "row id='empty'" in empty["error"]["message"]
    refused = records["refused"]
    assert refused["error"]["type"] == "BadRequestError"
    assert refused["answer"] is None and refused["topic"] == "z"


@pytest.mark.slow
def test_the_cap_holds_across_the_actors(answered: dict) -> None:
    assert answered["server"]["peak_in_flight"] == CAP  # two actors, one cap
    assert answered["limits"]["holders_seen"] == 2
    assert answered["limits"]["peak_leased_slots"] == CAP


def test_a_bad_strategy_or_backend_says_what_to_pass() -> None:
    backend = functools.partial(OpenAIBackend, base_url="http://127.0.0.1:9/v1", api_key="k")
    with pytest.raises(ValueError, match="unknown strategy"):
        AnswerQuestions("fastest", backend=backend)
    with pytest.raises(ValueError, match=r"a name .* or a function of the backend"):
        AnswerQuestions(42, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="callable that returns a backend"):
        AnswerQuestions("sot", backend=lambda: "not a backend")  # type: ignore[arg-type,return-value]


def test_without_ray_the_import_says_how_to_install() -> None:
    code = "import sys; sys.modules['ray'] = None; import sotflow.integrations.ray"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert "pip install 'sotflow[ray]'" in done.stderr


def echo_backend() -> ScriptedBackend:
    return ScriptedBackend(lambda request: f"answer to: {request.messages[-1].content}")


@pytest.mark.anyio
@pytest.mark.parametrize("form", ["numpy", "pandas", "pyarrow"])
async def test_every_batch_format_gives_the_same_columns(form: str) -> None:
    """Ray Data hands a batch over as numpy arrays (its default), a pandas DataFrame or
    a pyarrow Table; each comes back as the same columns, with plain Python values."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    columns = {
        "id": [1, 2, 3],
        "question": ["Why is the sky blue?", None, "Why is grass green?"],
        "score": [0.5, float("nan"), 2.0],
        "tags": [["a", "b"], [], ["c"]],
    }
    batch: Any = {
        "numpy": lambda: {k: np.array(v, dtype=object if k == "tags" else None)
                          for k, v in columns.items()},
        "pandas": lambda: pd.DataFrame(columns),
        "pyarrow": lambda: pa.table(columns),
    }[form]()  # fmt: skip
    answer = AnswerQuestions("direct", backend=echo_backend)
    out = await answer(batch)
    assert set(out) == set(OUTPUT_FIELDS) | {"score", "tags"}
    assert out["id"] == [1, 2, 3] and all(type(i) is int for i in out["id"])
    assert out["answer"][0] == "answer to: Why is the sky blue?"
    assert out["error"][1]["type"] == "InputError" and out["answer"][1] is None
    assert out["tags"] == [["a", "b"], [], ["c"]]
    assert out["score"][0] == 0.5 and out["score"][1] is None  # a missing number: None
    await answer.aclose()
