"""Skeleton-of-Thought vs a direct answer, then auto-routing, streaming and a batch."""

from __future__ import annotations

import anyio
from _setup import backend

import sotflow

QUESTION = "What are the most effective ways to deal with stress?"


async def main(model: sotflow.OpenAIBackend) -> None:
    async with sotflow.Engine(model) as engine:
        direct = await engine.run(sotflow.Direct(), QUESTION)
        sot = await engine.run(sotflow.SkeletonOfThought(), QUESTION)
        print(
            f"direct: {direct.latency_s:.2f} s   SoT: {sot.latency_s:.2f} s "
            f"({direct.latency_s / sot.latency_s:.1f}x faster, {len(sot.points or [])} points)"
        )

        # The router decides per question; math goes straight to a direct answer.
        for question in ("How can I sleep better?", "What is 17 * 23?"):
            answer = await engine.run(sotflow.Routed(), question)
            print(f"{question!r} -> {answer.strategy} ({answer.decision.reason})")

        # Stream the answer in reading order while later points are still written.
        print()
        async for event in engine.stream(sotflow.SkeletonOfThought(), QUESTION):
            if isinstance(event, sotflow.AnswerDelta):
                print(event.text, end="", flush=True)
        print("\n")

        # Many questions at once under one set of limits; failures stay in their place.
        answers = await engine.batch(sotflow.Routed(), ["Tips for a job interview?", ""])
        for answer in answers:
            print(answer.strategy, "ok" if answer.ok else f"error: {answer.error.message}")


if __name__ == "__main__":
    with backend() as model:
        anyio.run(main, model)
