"""Rejection sampling: sample until a check accepts (here: valid JSON with the right keys)."""

from __future__ import annotations

import itertools
import json

import anyio
from _offline import backend

import sotflow
from sotflow.errors import NoAnswerError
from sotflow.strategies import RejectionSampling

QUESTION = 'Describe Paris as JSON with the keys "city", "country" and "population".'
_draws = itertools.count()
DRAFTS = [
    "Sure! Here is the JSON: {city: Paris}",
    '{"city": "Paris", "country": "France"}',
    '{"city": "Paris", "country": "France", "population": 2102650}',
]


def offline(request: sotflow.Request) -> str:
    return DRAFTS[next(_draws) % len(DRAFTS)]


def valid(text: str) -> bool:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and {"city", "country", "population"} <= data.keys()


async def main() -> None:
    async with sotflow.Engine(backend(offline)) as engine:
        # Up to 8 samples, 2 at a time; the first accepted one wins, the rest are cancelled.
        # When none passes, NoAnswerError says so and keeps every sample in .details.
        for verifier in (valid, lambda text: False):
            try:
                answer = await engine.run(RejectionSampling(verifier, 8, batch=2), QUESTION)
            except NoAnswerError as exc:
                print(f"nothing accepted: {exc}")
                continue
            print(f"accepted sample {answer.details['accepted']} of {answer.details['tried']}:")
            print(answer.text, end="\n\n")


if __name__ == "__main__":
    anyio.run(main)
