"""Best-of-N: four samples at once, a judge model scores each, the best one answers."""

from __future__ import annotations

import itertools

import anyio
from _offline import backend

import sotflow
from sotflow.strategies import BestOfN, Judge

QUESTION = "Write a one-line slogan for a bicycle repair shop."
_draws = itertools.count()
SLOGANS = ["We fix bikes.", "Back in the saddle by tonight.", "Bikes.", "Pedal on, we'll mend."]


def offline(request: sotflow.Request) -> str:
    if request.prefill == "Score:":  # the judge
        return " 9" if "saddle" in request.messages[-1].content else " 5"
    return SLOGANS[next(_draws) % len(SLOGANS)]


async def main() -> None:
    async with sotflow.Engine(backend(offline)) as engine:
        # Score with an LLM judge (Judge(backend=...) may use another model), or pass any
        # function of the text, or "logprob" for the samples' mean log-probability.
        best = await engine.run(BestOfN(4, Judge()), QUESTION)
        print(f"best of 4: {best.text!r} (sample {best.details['chosen']})")
        print(f"scores: {best.details['scores']}")

        # With a threshold the first good-enough sample wins and the rest are cancelled.
        quick = await engine.run(BestOfN(4, Judge(), threshold=8), QUESTION)
        print(f"first >= 8: {quick.text!r}, stopped early: {quick.details['stopped_early']}")


if __name__ == "__main__":
    anyio.run(main)
