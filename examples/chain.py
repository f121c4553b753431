"""Chain: each step's output feeds the next; a step can be a whole strategy."""

from __future__ import annotations

import anyio
from _offline import backend

import sotflow
from sotflow.strategies import Chain, Refine

QUESTION = "How can a small team run better meetings?"


def offline(request: sotflow.Request) -> str:
    prompt = request.messages[-1].content
    if request.prefill == "1.":  # SoT's skeleton
        return " Set an agenda\n2. Keep it short\n3. End with owners"
    if request.prefill:  # SoT's points
        return " one concrete sentence about it."
    if "reply with the single word DONE" in prompt:
        return "DONE"
    if prompt.startswith("List"):
        return "agenda, time limit, decisions, owners"
    if prompt.startswith("Answer"):
        return "Share an agenda first. Stop on time. End with each decision and its owner."
    return "A tighter version: set an agenda, keep it short, and end with owners."


async def main() -> None:
    async with sotflow.Engine(backend(offline)) as engine:
        # Prompt steps: $question, $previous (the step before) and $step1, $step2, ...
        notes = Chain(
            "List the key ideas for answering: $question",
            "Answer '$question' in three sentences, using these ideas: $previous",
        )
        # The last step streams as the answer while it is written.
        async for event in engine.stream(notes, QUESTION):
            if isinstance(event, sotflow.AnswerDelta):
                print(event.text, end="", flush=True)
        print("\n")

        # Strategies as steps: Skeleton-of-Thought writes, Refine polishes what it wrote.
        answer = await engine.run(Chain(sotflow.SkeletonOfThought(), Refine(1)), QUESTION)
        for step in answer.details["steps"]:
            print(f"step {step['step']} ({step['kind']}): {step['text'][:70]!r}")


if __name__ == "__main__":
    anyio.run(main)
