"""sotflow against a server it did not write: llama-cpp-python's, default settings.

That server runs one request at a time, ends a running stream with ``[DONE]`` and no
finish reason when another request arrives, ignores ``continue_final_message`` and
``n``, and sends no streamed usage. Generations are kept short so the module stays
fast on a small CPU; the loopback server covers faults and pacing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

import sotflow
from sotflow import Engine, OpenAIBackend, Request, RetryPolicy

from ..conftest import LlamaCppServer
from ..support import answer_text

pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "How can I improve my time management?"


def short_sot() -> sotflow.SkeletonOfThought:
    return sotflow.SkeletonOfThought(
        max_points=5, skeleton_max_tokens=60, point_max_tokens=16, temperature=0
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The profile cache this module shares: the server is measured once."""
    return tmp_path_factory.mktemp("profiles") / "server_profiles.json"


def backend(server: LlamaCppServer, cache: Path, **kwargs: Any) -> OpenAIBackend:
    return OpenAIBackend(
        model="smollm2", base_url=server.base_url, api_key="none", profile_cache=cache, **kwargs
    )


@pytest.mark.anyio
async def test_the_probe_sees_what_the_server_really_does(
    llama_server: LlamaCppServer, cache: Path
) -> None:
    async with backend(llama_server, cache, prefill=True) as b:
        profile = await b.profile()
    assert profile.source == "probed"
    assert profile.serialises, profile  # one request at a time
    assert profile.prefill is False  # continue_final_message is ignored, though declared
    assert any("--prefill" in note for note in profile.notes)
    assert profile.n is False and profile.streamed_usage is False
    assert b.limiter.max_concurrency == 1


@pytest.mark.anyio
async def test_direct_plain_and_streamed(llama_server: LlamaCppServer, cache: Path) -> None:
    request = Request.of("Name one fruit.", max_tokens=8, temperature=0)
    async with backend(llama_server, cache) as b:
        plain = await b.complete(request)
        items = [item async for item in b.stream(request)]
    assert plain.text.strip() and not plain.usage.estimated  # reported when not streamed
    streamed = items[-1]
    assert isinstance(streamed, sotflow.Completion)
    assert streamed.text == plain.text  # greedy: the same tokens both ways
    assert "".join(d.text for d in items[:-1] if isinstance(d, sotflow.Delta)) == streamed.text
    # No usage in the stream: estimated, and said so.
    assert streamed.usage.estimated
    assert streamed.usage.completion_tokens <= 8


@pytest.mark.anyio
async def test_the_openai_sdk_client_path(llama_server: LlamaCppServer, cache: Path) -> None:
    client = openai.AsyncOpenAI(base_url=llama_server.base_url, api_key="none")
    b = OpenAIBackend(model="smollm2", client=client, profile_cache=cache)
    try:
        async with Engine(b) as engine:
            answer = await engine.run(sotflow.Direct(max_tokens=8, temperature=0), "Say hi.")
    finally:
        await client.close()
    assert answer.ok and answer.text.strip()


@pytest.mark.anyio
async def test_sot_streams_whole_answers_and_says_why_it_is_slow(
    llama_server: LlamaCppServer, cache: Path
) -> None:
    events: list[sotflow.Event] = []
    async with Engine(backend(llama_server, cache)) as engine:
        answer = await engine.run(short_sot(), QUESTION, on_event=events.append)
    assert answer.ok, answer.error
    assert answer.strategy == "sot" and answer.points and len(answer.points) >= 2
    assert answer_text(events) == answer.text
    assert any("slower than a direct answer" in w for w in answer.warnings), answer.warnings
    assert answer.usage.estimated
    # Without prefill the model was asked to begin with "i. Title -"; however it
    # echoed that, no point repeats its title, and every point joins with one space.
    for point in answer.points:
        assert not point.text.lower().startswith(point.title.lower()[:20]), point
    for point, line in zip(answer.points, answer.text.split("\n"), strict=True):
        heading = f"{point.index}. {point.title}"
        assert line == (f"{heading} - {point.text}" if point.text else heading), answer.text


@pytest.mark.anyio
async def test_streams_cut_off_by_the_server_are_retried_and_the_answer_holds(
    llama_server: LlamaCppServer, cache: Path
) -> None:
    # Nothing measured: the points go out together and the server cuts their streams
    # off; the backend learns from that and sends the retries one at a time.
    b = backend(llama_server, cache, profile="assume", prefill=False)
    events: list[sotflow.Event] = []
    async with Engine(b, retry=RetryPolicy(initial_wait_s=0.2, max_wait_s=5)) as engine:
        answer = await engine.run(short_sot(), QUESTION, on_event=events.append)
    assert answer.ok, answer.error
    assert answer_text(events) == answer.text
    assert answer.trace is not None
    assert all(n.status == "ok" for n in answer.trace.calls)
    assert b.limiter.max_concurrency == 1


@pytest.mark.anyio
async def test_auto_answers_directly_here(llama_server: LlamaCppServer, cache: Path) -> None:
    async with Engine(backend(llama_server, cache)) as engine:
        routed = sotflow.Routed(strategies={"direct": sotflow.Direct(max_tokens=16)})
        answer = await engine.run(routed, QUESTION)
    assert answer.ok and answer.strategy == "direct"
    assert answer.decision is not None and "one call at a time" in answer.decision.reason


@pytest.mark.anyio
async def test_n_is_fanned_out(llama_server: LlamaCppServer, cache: Path) -> None:
    request = Request.of("Name a colour.", n=3, max_tokens=4, temperature=0.9)
    async with backend(llama_server, cache) as b:
        completion = await b.complete(request)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.text.strip() for c in completion.choices)


# At temperature 0 the bundled model outlines this one in three points on this server.
CLI_QUESTION = (
    "What are some potential implications of using a single-use plastic bottle versus a "
    "reusable bottle on both the environment and human health?"
)


def test_sotflow_ask_sot_stream_on_the_command_line(
    llama_server: LlamaCppServer, cache: Path
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "OPENAI_BASE_URL": llama_server.base_url,
        "SOTFLOW_MODEL": "smollm2",
        "SOTFLOW_CACHE_DIR": str(cache.parent),
    }
    command = [
        sys.executable, "-m", "sotflow.cli", "ask", CLI_QUESTION, "--strategy", "sot", "--stream",
        "--max-tokens", "64", "--temperature", "0", "--json",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["error"] is None and record["strategy"] == "sot"
    assert record["usage"]["estimated"] is True
    assert any("slower than a direct answer" in w for w in record["warnings"])
