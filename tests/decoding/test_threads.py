"""All torch work runs on one thread, so OpenMP keeps a single thread team."""

from __future__ import annotations

import threading

import anyio
import pytest

from sotflow.backends.local import LocalBackend
from sotflow.decoding.threads import model_thread, on_model_thread
from sotflow.runtimes.torch.testing import byte_tokenizer, tiny_llama
from sotflow.types import Request


def test_work_runs_on_one_dedicated_thread_and_nested_calls_run_inline() -> None:
    caller = threading.get_ident()
    first = on_model_thread(threading.get_ident)
    second = on_model_thread(threading.get_ident)
    assert first == second != caller
    # From the torch thread itself, no round trip (a submit there would deadlock).
    assert on_model_thread(lambda: on_model_thread(threading.get_ident)) == first
    assert model_thread() is model_thread()


def test_errors_come_back_to_the_caller() -> None:
    def fail() -> None:
        raise ValueError("from the torch thread")

    with pytest.raises(ValueError, match="from the torch thread"):
        on_model_thread(fail)


@pytest.mark.anyio
async def test_the_local_backend_builds_and_steps_on_the_torch_thread() -> None:
    torch_ident = on_model_thread(threading.get_ident)
    tokenizer = byte_tokenizer()
    backend = LocalBackend.from_model(
        tiny_llama(seed=3, eos_token_id=tokenizer.eos_token_id), tokenizer
    )
    seen: set[int] = set()
    step = backend._step_sync

    def spy() -> None:
        seen.add(threading.get_ident())
        step()

    backend._step_sync = spy  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        for text in ("abc", "hello", "xyz"):
            tg.start_soon(backend.complete, Request.of(text, max_tokens=8, temperature=0))
    assert seen == {torch_ident}
    backend.set_decoding("plain")  # the model and its cache stay
    assert backend.decoder.runtime is backend.runtime


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_local_backend_serves_one_engine_after_another() -> None:
    import sotflow

    tokenizer = byte_tokenizer()
    backend = LocalBackend.from_model(
        tiny_llama(seed=4, eos_token_id=tokenizer.eos_token_id), tokenizer
    )
    texts = []
    for _ in range(2):
        async with sotflow.Engine(backend) as engine:  # leaving it closes the backend
            answer = await engine.run(sotflow.Direct(max_tokens=6, temperature=0), "abc")
            texts.append(answer.text)
    assert texts[0] == texts[1] != ""
