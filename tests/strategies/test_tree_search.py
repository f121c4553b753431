"""Tree search on the engine: proposals, scores and selections level by level."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest

import sotflow
from sotflow.strategies import Judge, TreeSearch
from sotflow.types import Request


def steps_so_far(request: Request) -> list[str]:
    prompt = request.messages[-1].content
    block = re.search(r"Steps written so far:\n(.*?)\n\nWrite only", prompt, re.S)
    assert block is not None, prompt
    return [] if block.group(1) == "(none yet)" else block.group(1).splitlines()


def proposer(terminal_at: dict[int, str] | None = None, delay_s: float = 0.0):
    """Proposals are numbered per level ("d2-s3"); ``terminal_at[level]`` ends the search."""
    counters: dict[int, itertools.count[int]] = {}

    def script(request: Request) -> sotflow.Reply:
        level = len(steps_so_far(request)) + 1
        n = next(counters.setdefault(level, itertools.count()))
        answer = (terminal_at or {}).get(level)
        if answer is not None and n == 0:
            return sotflow.Reply(f"so it is {answer}.\nAnswer: {answer}", delay_s=delay_s)
        return sotflow.Reply(f"d{level}-s{n}", delay_s=delay_s)

    return script


def rank(text: str) -> float:
    """Scores a path by its last step: "d2-s5" scores 5; a final answer scores 100."""
    last = text.splitlines()[-1]
    if last.startswith("Answer:"):
        return 100.0
    return float(last.rsplit("-s", 1)[1])


def level_of(node_id: str) -> int:
    return int(node_id[1:].split(".")[0])


@pytest.mark.anyio
async def test_the_search_explores_exactly_as_configured() -> None:
    backend = sotflow.ScriptedBackend(proposer())
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(TreeSearch(2, 3, proposals=3, scorer=rank), "Solve it.")
    assert answer.strategy == "tree-search"
    trace = answer.trace
    assert trace is not None
    proposals = Counter(level_of(n.id) for n in trace.calls)
    scores = Counter(level_of(n.id) for n in trace.nodes if n.id.endswith(".score"))
    # Level 1: 3 proposals from the root; then 3 for each of the 2 kept paths.
    assert proposals == {1: 3, 2: 6, 3: 6} and scores == proposals
    assert backend.calls == 15
    assert [n.id for n in trace.nodes if n.id.endswith(".select")] == [
        "L1.select", "L2.select", "L3.select",
    ]  # fmt: skip
    tree = answer.details["tree"]
    kept = Counter(p["level"] for p in tree if p["kept"])
    assert kept == {1: 2, 2: 2, 3: 2}
    # Each kept path was expanded with its own steps in the prompt.
    parents = {p["parent"] for p in tree if p["level"] == 2}
    assert parents == {p["id"] for p in tree if p["level"] == 1 and p["kept"]}
    by_id = {p["id"]: p for p in tree}
    best_first = max((p for p in tree if p["level"] == 1), key=lambda p: p["score"])
    assert trace.node("L2.0").meta == {"level": 2, "parent": best_first["id"]}
    # The answer is the best path of the last level, traced back to the root.
    path = answer.details["path"]
    assert len(path) == 3 and by_id[path[0]]["parent"] == "root"
    assert by_id[path[1]]["parent"] == path[0] and by_id[path[2]]["parent"] == path[1]
    assert by_id[path[2]]["score"] == max(p["score"] for p in tree if p["level"] == 3)
    assert answer.text.splitlines() == [by_id[i]["step"] for i in path]
    assert answer.details["terminal"] is False and answer.details["answer"] is None
    assert any("no path reached a final answer" in w for w in trace.warnings)


@pytest.mark.anyio
async def test_the_search_stops_at_a_terminal_answer() -> None:
    backend = sotflow.ScriptedBackend(proposer(terminal_at={2: "42"}))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(TreeSearch(2, 5, proposals=3, scorer=rank), "Q?")
    assert answer.details["terminal"] is True and answer.details["answer"] == "42"
    assert answer.details["levels"] == 2
    assert answer.text.endswith("Answer: 42")
    assert len(answer.text.splitlines()) == 3  # one step of level 1, then the answer step
    assert backend.calls == 3 + 6
    assert not any(n.id.startswith("L3") for n in answer.trace.nodes)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_kept_terminal_that_is_not_the_best_is_set_aside() -> None:
    def score(text: str) -> float:
        last = text.splitlines()[-1]
        return 5.0 if last.startswith("Answer:") else 9.0 if last == "d1-s1" else 1.0

    backend = sotflow.ScriptedBackend(proposer(terminal_at={1: "7"}))
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(TreeSearch(2, 2, proposals=3, scorer=score), "Q?")
    # Level 1 keeps d1-s1 (9) and the answer (5); only d1-s1 is expanded further.
    assert Counter(level_of(n.id) for n in answer.trace.calls) == {1: 3, 2: 3}  # type: ignore[union-attr]
    # No level-2 path finishes, so the answer set aside at level 1 is the answer.
    assert answer.details["terminal"] is True and answer.details["answer"] == "7"
    (finished,) = [p for p in answer.details["tree"] if p["terminal"]]
    assert finished["level"] == 1 and answer.details["path"] == [finished["id"]]


@pytest.mark.anyio
async def test_identical_steps_for_one_parent_are_kept_once() -> None:
    backend = sotflow.ScriptedBackend(["Add the two numbers."], cycle=True)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(TreeSearch(2, 2, proposals=3, scorer=len), "Q?")
    level1 = [p for p in answer.details["tree"] if p["level"] == 1]
    assert [p["kept"] for p in level1] == [True, False, False]
    # So only one path was expanded at level 2.
    assert Counter(level_of(n.id) for n in answer.trace.calls) == {1: 3, 2: 3}  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_judge_rates_the_path_so_far() -> None:
    propose = proposer()

    def script(request: Request) -> object:
        if request.prefill == "Score:":
            return " 8" if "d1-s0" in request.messages[-1].content else " 3"
        return propose(request)

    backend = sotflow.ScriptedBackend(script)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(TreeSearch(1, 2, proposals=2), "Plan a trip.")
    judged = [r for r in backend.requests if r.prefill == "Score:"]
    assert len(judged) == 4
    level2 = judged[-1].messages[-1].content
    assert "A partial solution, one step per line:\nd1-s0\nd2-s" in level2
    assert "Plan a trip." in level2
    assert answer.text.startswith("d1-s0\n")
    assert all(n.meta.get("judge") for n in answer.trace.nodes if n.id.endswith(".score"))  # type: ignore[union-attr]
    # The proposal prompts carry the question and the path so far.
    proposals = [r for r in backend.requests if r.prefill != "Score:"]
    assert "Plan a trip." in proposals[-1].messages[-1].content
    assert steps_so_far(proposals[-1]) == ["d1-s0"]


@pytest.mark.anyio
async def test_a_levels_proposals_run_at_once() -> None:
    backend = sotflow.ScriptedBackend(proposer(delay_s=0.05))
    async with sotflow.Engine(backend) as engine:
        await engine.run(TreeSearch(2, 2, proposals=3, scorer=rank), "Q?")
    assert backend.peak_in_flight == 6


@pytest.mark.anyio
async def test_a_token_budget_stops_the_search() -> None:
    backend = sotflow.ScriptedBackend(proposer())
    async with sotflow.Engine(backend, budget=400) as engine:
        with pytest.raises(sotflow.BudgetExceededError):
            await engine.run(TreeSearch(2, 50, proposals=2, scorer=rank), "Q?")
    assert 2 <= backend.calls < 40


@pytest.mark.anyio
async def test_failed_proposals_are_dropped_and_recorded() -> None:
    calls = itertools.count()
    propose = proposer()

    def script(request: Request) -> object:
        if next(calls) == 1:
            return sotflow.BadRequestError("refused", status_code=400)
        return propose(request)

    def picky(text: str) -> float:
        if text.endswith("d1-s1"):
            raise ValueError("cannot rate this one")
        return rank(text)

    backend = sotflow.ScriptedBackend(script)
    async with sotflow.Engine(backend) as engine:
        answer = await engine.run(TreeSearch(1, 1, proposals=4, scorer=picky), "Q?")
    records = {p["step"]: p for p in answer.details["tree"]}
    # The refused call wrote no step; the step the scorer choked on is kept on record.
    assert records[None]["status"] == "failed" and records["d1-s1"]["status"] == "failed"
    assert records["d1-s1"]["score"] is None and not records["d1-s1"]["kept"]
    assert [records[s]["status"] for s in ("d1-s0", "d1-s2")] == ["ok", "ok"]
    assert answer.text == "d1-s2"
    warnings = " ".join(answer.trace.warnings)  # type: ignore[union-attr]
    assert "BadRequestError" in warnings and "cannot rate this one" in warnings


def test_logprob_scoring_needs_logprobs_and_judges_can_be_swapped() -> None:
    context = sotflow.BuildContext(sotflow.ScriptedBackend(["x"], logprobs=False))
    with pytest.raises(sotflow.ConfigurationError, match="logprob"):
        TreeSearch(scorer="logprob").build("Q?", context)
    custom = Judge(template="judge")
    assert TreeSearch(scorer=custom).scorer is custom
    with pytest.raises(sotflow.ConfigurationError, match="breadth"):
        TreeSearch(0, 2)
