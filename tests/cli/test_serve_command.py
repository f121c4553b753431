"""`sotflow serve` end to end: the real command, the real SmolLM2, real clients."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import anyio
import openai
import pytest

import sotflow

from .conftest import CLI, ROOT, clean_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served() -> str:
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "serve", "--model", "smollm2", "--port", str(port)],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(
                    f"sotflow serve exited: {process.stderr.read() if process.stderr else ''}"
                )
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("sotflow serve did not answer within 240 s")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_models_lists_the_served_model(served: str) -> None:
    with urllib.request.urlopen(f"{served}/models", timeout=10) as response:
        data = json.loads(response.read())
    # The model itself first, then every strategy over it (sot/<model>, ...).
    ids = [entry["id"] for entry in data["data"]]
    assert "smollm2" in ids[0].lower() and "/" not in ids[0]
    assert f"sot/{ids[0]}" in ids and f"auto/{ids[0]}" in ids


@pytest.mark.slow
def test_the_official_client_gets_answers_and_streams(served: str) -> None:
    async def run() -> tuple[str, str, object]:
        client = openai.AsyncOpenAI(base_url=served, api_key="unused", max_retries=0)
        try:
            plain = await client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Name a colour."}],
                max_tokens=8,
                temperature=0,
            )
            pieces = []
            async for chunk in await client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Name a colour."}],
                max_tokens=8,
                temperature=0,
                stream=True,
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
            return plain.choices[0].message.content or "", "".join(pieces), plain.usage
        finally:
            await client.close()

    plain, streamed, usage = anyio.run(run)
    assert plain and plain == streamed  # greedy: the same answer both ways
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0  # type: ignore[attr-defined]


@pytest.mark.slow
def test_sot_runs_against_the_served_model_with_real_prefill(served: str) -> None:
    async def run() -> sotflow.Answer:
        backend = sotflow.OpenAIBackend(model="smollm2", base_url=served, api_key="x", prefill=True)
        strategy = sotflow.SkeletonOfThought(point_max_tokens=24, skeleton_max_tokens=64)
        async with sotflow.Engine(backend) as engine:
            return await engine.run(strategy, "What are the benefits of regular exercise?")

    answer = anyio.run(run)
    assert answer.ok and answer.strategy == "sot"
    assert answer.skeleton is not None and answer.skeleton.startswith("1.")
    assert len(answer.points or []) >= 2
    assert answer.text.startswith("1. ")
