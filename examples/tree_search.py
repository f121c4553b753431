"""Tree search: propose next steps, score them, keep the best paths, level by level."""

from __future__ import annotations

import itertools

import anyio
from _offline import backend

import sotflow
from sotflow.strategies import TreeSearch

QUESTION = "Use 2, 3 and 4 once each, with + - * and brackets, to make 14."
_draws = itertools.count()
FIRST_STEPS = ["3 + 4 = 7 (left: 2, 7)", "2 * 3 = 6 (left: 4, 6)", "4 - 2 = 2 (left: 2, 3)"]


def offline(request: sotflow.Request) -> str:
    prompt = request.messages[-1].content
    if request.prefill == "Score:":  # the judge rates the path so far
        return " 9" if "left: 2, 7" in prompt else " 4"
    if "left: 2, 7" in prompt:
        return "2 * 7 = 14 (left: 14)\nAnswer: 2 * (3 + 4) = 14"
    if "(none yet)" in prompt:
        return FIRST_STEPS[next(_draws) % 3]
    return "6 + 4 = 10 (left: 10)"


async def main() -> None:
    async with sotflow.Engine(backend(offline)) as engine:
        answer = await engine.run(TreeSearch(breadth=2, depth=3, proposals=3), QUESTION)
    for node in answer.details["tree"]:
        mark = "path" if node["id"] in answer.details["path"] else "kept" if node["kept"] else ""
        step = (node["step"] or "").splitlines()[0]
        print(f"{node['id']:>5} from {node['parent']:<5} score {node['score']}  {mark:4}  {step}")
    print(f"\nanswer: {answer.details['answer']}   ({len(answer.trace.calls)} model calls)")


if __name__ == "__main__":
    anyio.run(main)
