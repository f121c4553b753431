"""The scripted backend: answers, streams, failures and counters that other tests rely on."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from sotflow import (
    Completion,
    ConfigurationError,
    Delta,
    Fail,
    Reply,
    Request,
    ScriptedBackend,
    ServerError,
)
from sotflow.backends.base import StreamItem
from sotflow.backends.scripted import split_tokens

from ..support import cancel_once

# Leaked streams, tasks or connections show up as ResourceWarnings: fail on them.
pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


async def collect(backend: ScriptedBackend, request: Request) -> list[StreamItem]:
    return [item async for item in backend.stream(request)]


def test_split_tokens_round_trips() -> None:
    for text in ["", "one", "  lead", "a  b\n c ", "tab\tand\nnewline  "]:
        assert "".join(split_tokens(text)) == text
    assert split_tokens("one two  three") == ["one", " two", "  three"]


@pytest.mark.anyio
async def test_list_script_is_consumed_in_order_then_runs_out_clearly() -> None:
    backend = ScriptedBackend(["first", Reply("second")])
    assert (await backend.complete(Request.of("q"))).text == "first"
    assert (await backend.complete(Request.of("q"))).text == "second"
    with pytest.raises(ConfigurationError, match=r"ran out of replies after 2 calls.*cycle=True"):
        await backend.complete(Request.of("q"))
    assert backend.calls == 3


@pytest.mark.anyio
async def test_cycle_repeats_the_script() -> None:
    backend = ScriptedBackend(["a", "b"], cycle=True)
    texts = [(await backend.complete(Request.of("q"))).text for _ in range(5)]
    assert texts == ["a", "b", "a", "b", "a"]


@pytest.mark.anyio
async def test_function_scripts_see_the_request() -> None:
    async def echo(request: Request) -> str:
        await anyio.lowlevel.checkpoint()
        return request.messages[-1].content.upper()

    backend = ScriptedBackend(echo)
    assert (await backend.complete(Request.of("hello there"))).text == "HELLO THERE"
    assert ScriptedBackend(lambda r: f"len={len(r.messages)}").script is not None


@pytest.mark.anyio
async def test_max_tokens_stop_n_and_logprobs_behave_like_a_model() -> None:
    backend = ScriptedBackend([Reply("one two three four five", logprob=-0.25)], cycle=True)
    cut = await backend.complete(Request.of("q", max_tokens=2))
    assert cut.text == "one two" and cut.finish_reason == "length"
    stopped = await backend.complete(Request.of("q", stop=(" three",)))
    assert stopped.text == "one two" and stopped.finish_reason == "stop"
    sampled = await backend.complete(Request.of("q", n=3, logprobs=True))
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert sampled.choices[0].logprobs is not None and len(sampled.choices[0].logprobs) == 5
    assert sampled.choices[0].mean_logprob == pytest.approx(-0.25)
    assert cut.choices[0].logprobs is None  # only when asked
    # Usage counts tokens the way split_tokens does: prompt words plus completion words.
    assert cut.usage.prompt_tokens == 1 and cut.usage.completion_tokens == 2
    assert sampled.usage.completion_tokens == 15


@pytest.mark.anyio
async def test_one_text_per_sample() -> None:
    backend = ScriptedBackend([Reply(["red", "green"])])
    completion = await backend.complete(Request.of("q", n=3))
    assert [c.text for c in completion.choices] == ["red", "green", "red"]


@pytest.mark.anyio
async def test_stream_deltas_add_up_to_the_completion() -> None:
    backend = ScriptedBackend([Reply(["alpha beta gamma", "one two"])])
    items = await collect(backend, Request.of("q", n=2))
    *deltas, final = items
    assert isinstance(final, Completion)
    assert all(isinstance(d, Delta) for d in deltas)
    for choice in final.choices:
        text = "".join(d.text for d in deltas if isinstance(d, Delta) and d.index == choice.index)
        assert text == choice.text
    assert backend.completed == 1 and backend.in_flight == 0


@pytest.mark.anyio
async def test_fail_after_tokens_streams_then_raises() -> None:
    error = ServerError("cut", status_code=500)
    backend = ScriptedBackend([Fail(error, after_tokens=3)])
    seen: list[StreamItem] = []
    with pytest.raises(ServerError) as caught:
        async for item in backend.stream(Request.of("q")):
            seen.append(item)
    assert caught.value is error
    assert len(seen) == 3 and all(isinstance(d, Delta) for d in seen)
    assert backend.in_flight == 0 and backend.completed == 0


@pytest.mark.anyio
async def test_exceptions_in_the_script_are_raised() -> None:
    backend = ScriptedBackend([ValueError("x"), Fail(KeyError("y"), delay_s=0.01)])
    with pytest.raises(ValueError):
        await backend.complete(Request.of("q"))
    with pytest.raises(KeyError):
        await collect(backend, Request.of("q"))


@pytest.mark.anyio
async def test_bad_script_items_are_refused() -> None:
    backend = ScriptedBackend([42])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="script item"):
        await backend.complete(Request.of("q"))


@pytest.mark.anyio
async def test_counts_concurrency_and_cancellation() -> None:
    backend = ScriptedBackend(["slow"], cycle=True, delay_s=5)

    async def four() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(backend.complete, Request.of("q"))

    await cancel_once(lambda: backend.in_flight == 4, four)
    assert backend.peak_in_flight == 4
    assert backend.cancelled == 4
    assert backend.in_flight == 0 and backend.completed == 0


@pytest.mark.anyio
async def test_paced_stream_takes_its_time() -> None:
    backend = ScriptedBackend([Reply("a b c d e", token_delay_s=0.04)])
    start = anyio.current_time()
    await collect(backend, Request.of("q"))
    assert anyio.current_time() - start >= 5 * 0.04
