"""Knowing the server: the profile probe, its cache, and what sotflow does with it.

The loopback server plays servers we did not write (one request at a time, streams cut
off when another request arrives, prefill / n / streamed usage ignored); every count
is read from the server, so it shows what reached the wire.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import sotflow
from sotflow import Engine, OpenAIBackend, Request, RetryPolicy, ServerProfile
from sotflow.testing import LoopbackServer

from ..conftest import HONEST_SERVER
from ..support import answer_text

RESPONDER = "sotflow.testing.responders:sot_responder"
PROBE_REQUESTS = 7  # prefill + streamed usage, n, one alone, four at once
LIKE_LLAMA_CPP = {"serial": True, "interrupt_streams": True, "prefill": False, "n": False,
                  "stream_usage": False}  # fmt: skip


@pytest.fixture(scope="module")
def sot_server() -> Any:
    with LoopbackServer(responder=RESPONDER) as srv:
        yield srv


@pytest.fixture
def like(sot_server: LoopbackServer) -> Any:
    """Configure the module's server to behave like some server, counters reset."""

    def configure(**settings: Any) -> LoopbackServer:
        plain = {"ttft": 0.0, "tps": 0.0, "fault_rate": 0.0, **HONEST_SERVER}
        sot_server.configure(**{**plain, **settings})
        sot_server.reset()
        return sot_server

    return configure


def backend(server: LoopbackServer, **kwargs: Any) -> OpenAIBackend:
    return OpenAIBackend(model="loopback", base_url=server.base_url, api_key="k", **kwargs)


@pytest.mark.anyio
async def test_a_concurrent_honest_server_is_measured_as_such_once(like: Any) -> None:
    # Calls long enough (about 0.36 s) that a busy machine's overhead cannot hide that
    # four of them take the time of one.
    server = like(ttft=0.2, tps=100)
    b = backend(server)
    async with b:
        first = await b.profile()
        again = await b.profile()
    assert server.stats()["requests"] == PROBE_REQUESTS  # measured once, then cached
    assert again == first
    assert first.source == "probed" and first.probe_calls == 4
    assert first.prefill is True and first.n is True and first.streamed_usage is True
    assert first.parallel_gain is not None and first.parallel_gain > 2.0
    assert not first.serialises
    assert b.capabilities.prefill  # prefill is used from now on, since it works


@pytest.mark.anyio
async def test_a_server_like_llama_cpp_is_measured_as_such(like: Any) -> None:
    server = like(ttft=0.05, tps=200, **LIKE_LLAMA_CPP)
    b = backend(server, max_concurrency=64)
    async with b:
        profile = await b.profile()
    assert profile.prefill is False and profile.n is False and profile.streamed_usage is False
    assert profile.parallel_gain is not None and profile.serialises, profile
    assert "one call at a time" in profile.describe()
    assert not b.capabilities.prefill
    # Calls now queue in sotflow, outside their timeouts, instead of at the server.
    assert b.limiter.max_concurrency == 1


@pytest.mark.anyio
async def test_a_declared_prefill_the_server_ignores_is_found_out(like: Any) -> None:
    server = like(prefill=False)
    b = backend(server, prefill=True)
    async with b:
        profile = await b.profile()
    assert profile.prefill is False and not b.capabilities.prefill
    assert any("--prefill" in note for note in profile.notes)


@pytest.mark.anyio
async def test_a_declared_or_assumed_profile_is_never_measured(like: Any) -> None:
    server = like()
    declared = backend(server, profile={"parallel_gain": 1.0, "prefill": False})
    assumed = backend(server, profile="assume")
    async with declared, assumed:
        assert (await declared.profile()).serialises
        assert (await declared.profile()).source == "declared"
        assert (await assumed.profile()).parallel_gain is None
    assert server.stats()["requests"] == 0
    assert declared.limiter.max_concurrency == 1
    with pytest.raises(sotflow.ConfigurationError, match=r"probe.*assume"):
        backend(server, profile="sometimes")
    with pytest.raises(sotflow.ConfigurationError, match="no field 'gain'"):
        backend(server, profile='{"gain": 2}')


@pytest.mark.anyio
async def test_the_profile_cache_spares_the_next_process_a_measurement(
    like: Any, tmp_path: Path
) -> None:
    server = like(ttft=0.05, tps=200, **LIKE_LLAMA_CPP)
    cache = tmp_path / "profiles.json"
    async with backend(server, profile_cache=cache) as b:
        measured = await b.profile()
    assert server.stats()["requests"] == PROBE_REQUESTS
    async with backend(server, profile_cache=cache) as b:
        assert await b.profile() == measured
    assert server.stats()["requests"] == PROBE_REQUESTS
    # Another model on the same server is another entry.
    other = OpenAIBackend(model="other", base_url=server.base_url, api_key="k", profile_cache=cache)
    async with other:
        await other.profile()
    assert server.stats()["requests"] == 2 * PROBE_REQUESTS
    assert len(json.loads(cache.read_text())) == 2


@pytest.mark.anyio
async def test_auto_answers_directly_on_a_server_that_serialises(like: Any) -> None:
    server = like(ttft=0.02, tps=200, **LIKE_LLAMA_CPP)
    question = "What are good habits for learning a new language?"  # the rules pick SoT
    async with Engine(backend(server)) as engine:
        answer = await engine.run(sotflow.Routed(), question)
    assert answer.strategy == "direct", answer
    assert answer.decision is not None and answer.decision.strategy == "direct"
    assert "one call at a time" in answer.decision.reason
    assert server.stats()["requests"] == PROBE_REQUESTS + 1


@pytest.mark.anyio
async def test_auto_keeps_sot_where_calls_run_side_by_side(like: Any) -> None:
    server = like(ttft=0.02, tps=400)
    question = "What are good habits for learning a new language?"
    async with Engine(backend(server)) as engine:
        answer = await engine.run(sotflow.Routed(), question)
    assert answer.strategy == "sot" and answer.points


@pytest.mark.anyio
async def test_explicit_sot_on_a_serialising_server_says_why_it_is_slow_and_streams_whole(
    like: Any,
) -> None:
    server = like(ttft=0.01, tps=200, **LIKE_LLAMA_CPP)
    events: list[sotflow.Event] = []
    async with Engine(backend(server)) as engine:
        answer = await engine.run(
            sotflow.SkeletonOfThought(), "How can I sleep better?", on_event=events.append
        )
        stats = server.stats()
        assert answer.trace is not None
        assert stats["requests"] == PROBE_REQUESTS + len(answer.trace.calls)
        server.reset()
        again = await engine.run(sotflow.SkeletonOfThought(), "How can I focus?")
    assert answer.ok, answer.error
    assert any("slower than a direct answer" in w for w in answer.warnings), answer.warnings
    assert answer_text(events) == answer.text
    # One call at a time: nothing was cut off, nothing retried.
    assert answer.trace.attempts == len(answer.trace.calls)
    assert again.ok and server.stats()["peak_in_flight"] == 1
    # No streamed usage: every count is marked as an estimate.
    assert answer.usage.estimated


@pytest.mark.anyio
async def test_streams_cut_off_by_a_serialising_server_are_retried_one_at_a_time(
    like: Any,
) -> None:
    # Nothing measured ("assume"): the backend learns from the cut-off streams themselves.
    server = like(ttft=0.01, tps=300, **LIKE_LLAMA_CPP)
    b = backend(server, profile="assume", prefill=False)
    policy = RetryPolicy(initial_wait_s=0.05, max_wait_s=2)
    events: list[sotflow.Event] = []
    async with Engine(b, retry=policy) as engine:
        answer = await engine.run(
            sotflow.SkeletonOfThought(), "How can I sleep better?", on_event=events.append
        )
    assert answer.ok, answer.error
    assert answer.points and len(answer.points) >= 3
    assert answer_text(events) == answer.text
    assert b.limiter.max_concurrency == 1
    assert "one at a time" in " ".join((await b.profile()).notes)
    retried = [n for n in answer.trace.calls if n.attempts > 1]  # type: ignore[union-attr]
    assert retried, "the server cut streams off, so some points were retried"


@pytest.mark.anyio
async def test_n_is_fanned_out_where_the_server_ignores_it(like: Any) -> None:
    server = like(n=False)
    async with backend(server, profile="assume") as b:
        request = Request.of("[[tokens=3]] hello", n=3, max_tokens=5)
        plain = await b.complete(request)
        assert len(plain.choices) == 3 and [c.index for c in plain.choices] == [0, 1, 2]
        assert server.stats()["requests"] == 3  # one ignored n, then two more
        assert (await b.profile()).n is False
        server.reset()
        items = [item async for item in b.stream(request)]
    completion = items[-1]
    assert isinstance(completion, sotflow.Completion) and len(completion.choices) == 3
    streamed = {d.index for d in items[:-1] if isinstance(d, sotflow.Delta)}
    assert streamed == {0, 1, 2}
    assert server.stats()["requests"] == 3  # known now: three single calls at once


@pytest.mark.anyio
async def test_an_estimated_usage_says_so(like: Any) -> None:
    server = like(stream_usage=False)
    async with backend(server, profile="assume") as b:
        items = [i async for i in b.stream(Request.of("[[tokens=12]] hi", max_tokens=8))]
    usage = items[-1].usage  # type: ignore[union-attr]
    assert usage.estimated
    # Cut by the limit, so exactly max_tokens, whatever the characters suggest.
    assert usage.completion_tokens == 8
    assert isinstance(ServerProfile().to_dict(), dict)


@pytest.mark.anyio
async def test_a_transient_fault_during_the_probe_is_retried_a_lasting_one_raised_plainly(
    like: Any,
) -> None:
    from sotflow.errors import ProviderError
    from sotflow.testing import Fault

    server = like(ttft=0.2, tps=100)
    # Two 503s among the probe's calls (four of them at once): each call is tried again.
    server.inject(Fault(kind="status", status=503, times=2))
    async with backend(server) as b:
        profile = await b.profile()
    assert profile.source == "probed" and profile.parallel_gain is not None
    assert server.stats()["statuses"].get("503") == 2
    # A server that keeps failing: the probe's error itself, not an ExceptionGroup.
    server = like(ttft=0.2, tps=100)
    server.inject(Fault(kind="status", status=503, times=1000))
    async with backend(server) as b:
        with pytest.raises(ProviderError):
            await b.profile()
