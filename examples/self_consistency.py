"""Self-consistency: eight samples at once vote on the final answer; stop once it is decided."""

from __future__ import annotations

import itertools

import anyio
from _offline import backend

import sotflow
from sotflow.strategies import SelfConsistency

QUESTION = "A shop sells pens at 3 for 2 euros. How many pens can you buy with 18 euros?"
_draws = itertools.count()


def offline(request: sotflow.Request) -> str:
    # Right (27) most of the time, sometimes a near miss, like a sampled model.
    final = [27, 27, 18, 27, 27, 36, 27, 27][next(_draws) % 8]
    return f"18 euros buys 18 / 2 = 9 packs of 3 pens.\nAnswer: {final}"


async def main() -> None:
    async with sotflow.Engine(backend(offline)) as engine:
        answer = await engine.run(SelfConsistency(8), QUESTION)
    print(f"answer: {answer.details['answer']}   votes: {answer.details['votes']}")
    print(f"samples cancelled by early stopping: {answer.details['cancelled']}")
    print(f"{answer.latency_s:.2f} s, {answer.usage.total_tokens} tokens\n")
    print(answer.text)


if __name__ == "__main__":
    anyio.run(main)
