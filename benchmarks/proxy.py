"""``sotflow serve --upstream`` (the strategy proxy) in front of a paced loopback server,
driven by the official ``openai`` SDK streaming, as any OpenAI client would use it.

Three measurements, each against the loopback server answering like a model
(``sotflow.testing.responders.sot_responder``, 0.25 s to first token, 50 tokens/s):

1. speed-up: ``sot/loopback`` against the bare ``loopback`` passthrough on SoT-suited
   questions, alternating per question in the same run; the median of per-question
   ratios (bare latency / SoT latency).
2. passthrough overhead: the bare model through the proxy against the upstream asked
   directly (alternating, median added latency), and calls/s with ``--in-flight``
   streams open at once (through the proxy / straight).
3. load: ``--clients`` streaming clients for ``--seconds`` against an upstream failing
   ``--fault-rate`` of its calls; every response must end whole (a finish reason and
   ``[DONE]``), and no 5xx may reach a client for a fault the proxy could retry.

    python benchmarks/proxy.py                       # the full sizes (the README's table)
    python benchmarks/proxy.py --questions 4 --in-flight 20 --calls 60 --clients 20 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai

from sotflow.testing import LoopbackServer
from sotflow.testing.proxy import ProxyProcess

RESPONDER = "sotflow.testing.responders:sot_responder"
DATA = Path(__file__).resolve().parents[1] / "data" / "router" / "vicuna80.jsonl"


def Proxy(upstream: str, *args: str) -> ProxyProcess:
    """``python -m sotflow.serve --upstream URL`` in a subprocess, its log let through."""
    return ProxyProcess(
        "--upstream", upstream, *args, env={"OPENAI_API_KEY": "bench"}, capture_stderr=False
    )


def questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows if r.get("sot")][:n]


def client(url: str, connections: int = 1000) -> openai.AsyncOpenAI:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return openai.AsyncOpenAI(
        base_url=url,
        api_key="bench",
        max_retries=0,
        timeout=300,
        http_client=httpx.AsyncClient(limits=limits, timeout=300),
    )


async def streamed(oa: openai.AsyncOpenAI, model: str, question: str, **extra: Any) -> dict:
    """One streamed answer: latency, text, finish reason, and whether it ended whole."""
    start = time.perf_counter()
    text, finish = [], None
    stream = await oa.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], stream=True, **extra
    )
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return {"s": time.perf_counter() - start, "text": "".join(text), "finish": finish}


async def speedup(proxy: str, items: list[str]) -> dict[str, Any]:
    oa = client(proxy)
    ratios, sot_s, bare_s = [], [], []
    for i, question in enumerate(items):
        # Alternate which goes first, so neither gets a systematically quieter moment.
        order = ("loopback", "sot/loopback") if i % 2 == 0 else ("sot/loopback", "loopback")
        got = {model: await streamed(oa, model, question) for model in order}
        bare, sot = got["loopback"]["s"], got["sot/loopback"]["s"]
        ratios.append(bare / sot)
        sot_s.append(sot)
        bare_s.append(bare)
    await oa.close()
    return {
        "median_speedup": statistics.median(ratios),
        "median_bare_s": statistics.median(bare_s),
        "median_sot_s": statistics.median(sot_s),
    }


async def overhead(proxy: str, upstream: str, items: list[str]) -> dict[str, Any]:
    via, straight = client(proxy), client(upstream)
    added = []
    for i, question in enumerate(items):
        pair = (via, straight) if i % 2 == 0 else (straight, via)
        got = [await streamed(c, "loopback", question) for c in pair]
        through, direct = (got[0], got[1]) if i % 2 == 0 else (got[1], got[0])
        added.append(through["s"] / direct["s"] - 1)
    await via.close()
    await straight.close()
    return {"median_added_latency": statistics.median(added)}


async def throughput(url: str, in_flight: int, calls: int, max_tokens: int) -> float:
    oa = client(url, in_flight)
    items = iter(range(calls))

    async def worker() -> None:
        for i in items:
            await streamed(oa, "loopback", f"question {i}: list three facts", max_tokens=max_tokens)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - start
    await oa.close()
    return calls / elapsed


async def load(proxy: str, clients: int, seconds: float, items: list[str]) -> dict[str, Any]:
    oa = client(proxy, clients)
    results: dict[str, int] = {"ok": 0, "truncated": 0, "lost": 0, "5xx": 0, "4xx": 0}
    end = time.perf_counter() + seconds

    async def one(k: int) -> None:
        n = 0
        while time.perf_counter() < end:
            model = "sot/loopback" if (k + n) % 4 == 0 else "loopback"
            question = items[(k + n) % len(items)]
            n += 1
            try:
                got = await streamed(oa, model, question, max_tokens=120)
            except openai.APIStatusError as exc:
                results["5xx" if exc.status_code >= 500 else "4xx"] += 1
            except (openai.APIError, httpx.HTTPError):
                results["lost"] += 1  # the stream broke, or an error came in-band
            else:
                whole = got["finish"] is not None and got["text"]
                results["ok" if whole else "truncated"] += 1

    async with anyio.create_task_group() as tg:
        for k in range(clients):
            tg.start_soon(one, k)
    await oa.close()
    return results


async def main(args: argparse.Namespace) -> dict[str, Any]:
    items = questions(args.questions)
    report: dict[str, Any] = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "pacing": {"ttft_s": args.ttft, "tps": args.tps},
    }
    with LoopbackServer(ttft=args.ttft, tps=args.tps, responder=RESPONDER) as upstream:
        proxy = Proxy(upstream.base_url, "--models", "loopback")
        try:
            report["speedup"] = await speedup(proxy.url, items)
            report["overhead"] = await overhead(proxy.url, upstream.base_url, items)
            straight = await throughput(
                upstream.base_url, args.in_flight, args.calls, args.max_tokens
            )
            via = await throughput(proxy.url, args.in_flight, args.calls, args.max_tokens)
            report["throughput"] = {
                "in_flight": args.in_flight,
                "upstream_calls_per_s": straight,
                "proxy_calls_per_s": via,
                "ratio": via / straight,
            }
        finally:
            proxy.stop()
    with LoopbackServer(
        ttft=args.ttft, tps=args.tps, responder=RESPONDER, fault_rate=args.fault_rate
    ) as flaky:
        proxy = Proxy(flaky.base_url, "--models", "loopback", "--timeout", "15")
        try:
            report["load"] = {
                "clients": args.clients,
                "seconds": args.seconds,
                "fault_rate": args.fault_rate,
                **await load(proxy.url, args.clients, args.seconds, items),
                "upstream": flaky.stats(),
            }
        finally:
            proxy.stop()
    return report


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--questions", type=int, default=20, help="SoT-suited questions")
    ap.add_argument("--ttft", type=float, default=0.25)
    ap.add_argument("--tps", type=float, default=50.0)
    ap.add_argument("--in-flight", type=int, default=200, help="streams open at once")
    ap.add_argument("--calls", type=int, default=2000, help="calls per throughput run")
    ap.add_argument("--max-tokens", type=int, default=30, help="tokens per throughput call")
    ap.add_argument("--clients", type=int, default=300, help="load: concurrent clients")
    ap.add_argument("--seconds", type=float, default=60.0, help="load: how long")
    ap.add_argument("--fault-rate", type=float, default=0.05, help="load: upstream faults")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here (JSON)")
    return ap.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    result = anyio.run(main, arguments)
    text = json.dumps(result, indent=2)
    print(text)
    if arguments.out:
        arguments.out.write_text(text + "\n")
    load_ok = result["load"]["lost"] == result["load"]["truncated"] == result["load"]["5xx"] == 0
    print(
        f"\nsot/ vs bare: {result['speedup']['median_speedup']:.2f}x median (target >= 2.8x); "
        f"passthrough: {100 * result['overhead']['median_added_latency']:+.1f}% latency "
        f"(target <= 5%), {result['throughput']['ratio']:.2f}x the upstream's calls/s at "
        f"{arguments.in_flight} in flight (target >= 0.8x); load: "
        f"{'no lost, truncated or 5xx responses' if load_ok else 'FAILURES, see above'}"
    )
