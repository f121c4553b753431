"""Client overhead: sotflow vs the bare openai SDK against a zero-latency loopback server.

(a) non-streamed calls/s with 200 calls in flight, (b) streamed chunks/s with 100
streams at once. Both clients hit the same server in the same run, alternating, and
the median of several rounds is reported with the ratio sotflow / SDK. Raw aiohttp
is measured too, as the ceiling any client on this machine can reach.

    python benchmarks/client_overhead.py [--calls 2000] [--streams 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import anyio
import openai

import sotflow
from sotflow.events import TextDelta
from sotflow.testing import LoopbackServer

BODY = {"model": "loopback", "messages": [{"role": "user", "content": "hello [[tokens=8]]"}]}


async def timed_many(
    fn: Callable[[], Awaitable[int]], total: int, in_flight: int
) -> tuple[float, int]:
    """Run ``fn`` ``total`` times with ``in_flight`` at once; seconds and units counted."""
    semaphore = anyio.Semaphore(in_flight)
    counted = 0

    async def one() -> None:
        nonlocal counted
        async with semaphore:
            units = await fn()
        counted += units  # read-modify-write after the await, or concurrent updates are lost

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(total):
            tg.start_soon(one)
    return time.perf_counter() - start, counted


async def bench(base_url: str, calls: int, streams: int, stream_tokens: int, rounds: int) -> dict:
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
    backend = sotflow.OpenAIBackend(
        model="loopback", base_url=base_url, api_key="bench", max_concurrency=200
    )
    direct = sotflow.Direct(max_tokens=8)
    stream_direct = sotflow.Direct(max_tokens=stream_tokens)
    stream_prompt = f"hello [[tokens={stream_tokens}]]"
    stream_body = {
        "model": "loopback",
        "messages": [{"role": "user", "content": stream_prompt}],
        "max_tokens": stream_tokens,
        "stream": True,
    }
    url = f"{base_url}/chat/completions"

    async def sdk_call() -> int:
        await sdk.chat.completions.create(**BODY, max_tokens=8)
        return 1

    async def raw_call() -> int:
        async with session.post(url, json={**BODY, "max_tokens": 8}) as response:
            json.loads(await response.read())
        return 1

    async def sdk_stream() -> int:
        chunks = 0
        async for chunk in await sdk.chat.completions.create(**stream_body):
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
        return chunks

    results: dict[str, list[float]] = {
        "sdk_calls": [], "raw_calls": [], "sotflow_calls": [],
        "sdk_chunks": [], "sotflow_chunks": [],
    }  # fmt: skip
    async with sotflow.Engine(backend) as engine:

        async def sotflow_stream() -> int:
            chunks = 0
            async for event in engine.stream(stream_direct, stream_prompt):
                if type(event) is TextDelta:
                    chunks += 1
            return chunks

        async def sotflow_batch() -> tuple[float, int]:
            start = time.perf_counter()
            answers = await engine.batch(direct, ["hello"] * calls, concurrency=200)
            assert all(a.ok for a in answers), [a.error for a in answers if not a.ok][:3]
            return time.perf_counter() - start, len(answers)

        # Warm every path once (connections, imports) before measuring.
        await timed_many(sdk_call, 200, 200)
        await timed_many(raw_call, 200, 200)
        await engine.batch(direct, ["warm"] * 200, concurrency=200)
        for _ in range(rounds):
            seconds, n = await timed_many(sdk_call, calls, 200)
            results["sdk_calls"].append(n / seconds)
            seconds, n = await timed_many(raw_call, calls, 200)
            results["raw_calls"].append(n / seconds)
            seconds, n = await sotflow_batch()
            results["sotflow_calls"].append(n / seconds)
            seconds, n = await timed_many(sdk_stream, streams, streams)
            assert n == streams * stream_tokens, n
            results["sdk_chunks"].append(n / seconds)
            seconds, n = await timed_many(sotflow_stream, streams, streams)
            assert n == streams * stream_tokens, n
            results["sotflow_chunks"].append(n / seconds)
    await session.close()
    await sdk.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="non-streamed calls per round")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams per round")
    parser.add_argument("--stream-tokens", type=int, default=200, help="chunks per stream")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    with LoopbackServer() as server:
        results = anyio.run(
            bench, server.base_url, args.calls, args.streams, args.stream_tokens, args.rounds
        )
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"machine: {platform.machine()}, {platform.python_version()}, rounds: {args.rounds}")
    print("| measure | bare openai SDK | sotflow | ratio | raw aiohttp (ceiling) |")
    print("|---|---|---|---|---|")
    print(
        f"| calls/s, 200 in flight | {med['sdk_calls']:,.0f} | {med['sotflow_calls']:,.0f} | "
        f"{med['sotflow_calls'] / med['sdk_calls']:.2f}x | {med['raw_calls']:,.0f} |"
    )
    print(
        f"| chunks/s, {args.streams} streams | {med['sdk_chunks']:,.0f} | "
        f"{med['sotflow_chunks']:,.0f} | {med['sotflow_chunks'] / med['sdk_chunks']:.2f}x | - |"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"medians": med, "rounds": results, "args": vars(args)}, fh, indent=2)


if __name__ == "__main__":
    main()
