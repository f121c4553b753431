"""Refine: draft, critique, revise; the critic is the model or a check of your own."""

from __future__ import annotations

import anyio
from _offline import backend

import sotflow
from sotflow.strategies import Refine

QUESTION = "Explain what a hash table is."


def offline(request: sotflow.Request) -> str:
    prompt = request.messages[-1].content
    if "reply with the single word DONE" in prompt:  # the critic
        return "DONE" if "O(1)" in prompt else "Say how fast a lookup is."
    if "feedback on it" in prompt:  # a revision
        return "A hash table maps keys to slots with a hash function; lookups take O(1) on average."
    return (
        "A hash table is a data structure that stores pairs of keys and values, and it uses a "
        "hash function to turn each key into the index of a slot where the value is kept."
    )


def at_most_25_words(text: str) -> str | None:
    words = len(text.split())
    return None if words <= 25 else f"It has {words} words; cut it to 25 or fewer."


async def main() -> None:
    async with sotflow.Engine(backend(offline)) as engine:
        answer = await engine.run(Refine(max_rounds=2), QUESTION)
        for r in answer.details["rounds"]:
            print(f"round {r['round']}: {r['text']}\n  critique: {r['critique']}")
        print(f"stopped: {answer.details['stopped']}\n")

        # An external check instead of the model: None means "good".
        checked = await engine.run(Refine(2, feedback=at_most_25_words), QUESTION)
        for r in checked.details["rounds"]:
            print(f"round {r['round']}: {len(r['text'].split())} words, check: {r['critique']}")
        print(f"accepted: {checked.details['accepted']}")


if __name__ == "__main__":
    anyio.run(main)
