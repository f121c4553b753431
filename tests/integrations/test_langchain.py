"""SotflowRunnable with the real langchain-core."""

from __future__ import annotations

import subprocess
import sys
import time

import anyio
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import Runnable

import sotflow
from sotflow.integrations.langchain import SotflowRunnable, to_question
from sotflow.testing import LoopbackServer
from sotflow.types import Request


def sot_model(point_delay: float = 0.0, slow_point: int | None = None, slow_s: float = 0.0):
    def script(request: Request) -> sotflow.Reply:
        if request.prefill == "1.":
            return sotflow.Reply(" Plan the day\n2. Cut distractions\n3. Rest well")
        if request.prefill:
            n = int(request.prefill.split(".")[0])
            delay = slow_s if n == slow_point else point_delay
            return sotflow.Reply(f" point {n} text.", delay_s=delay)
        return sotflow.Reply(f"direct: {request.messages[-1].content}", delay_s=point_delay)

    return script


EXPECTED = (
    "1. Plan the day - point 1 text.\n"
    "2. Cut distractions - point 2 text.\n"
    "3. Rest well - point 3 text."
)


@pytest.fixture
def runnable():
    r = SotflowRunnable(sotflow.SkeletonOfThought(), sotflow.ScriptedBackend(sot_model()))
    yield r
    r.close()


def test_is_a_real_runnable_and_invokes(runnable: SotflowRunnable) -> None:
    assert isinstance(runnable, Runnable)
    assert runnable.invoke("How do I manage time?") == EXPECTED
    assert runnable.invoke({"question": "How do I manage time?"}) == EXPECTED


@pytest.mark.parametrize(
    ("value", "question"),
    [
        ("plain", "plain"),
        ({"question": "in a dict"}, "in a dict"),
        ([HumanMessage("just one")], "just one"),
        ([SystemMessage("Be brief."), HumanMessage("Why?")], "Be brief.\n\nWhy?"),
        (
            [HumanMessage("Hi"), AIMessage("Hello"), HumanMessage("Tips?")],
            "User: Hi\nAssistant: Hello\nUser: Tips?",
        ),
        (PromptTemplate.from_template("Q: {x}").invoke({"x": "why"}), "Q: why"),
        # The message-like forms chat models take, and one message on its own.
        ([("human", "as a pair")], "as a pair"),
        ([("system", "Be brief."), {"role": "user", "content": "Why?"}], "Be brief.\n\nWhy?"),
        (HumanMessage("alone"), "alone"),
    ],
)
def test_accepted_inputs(value: object, question: str) -> None:
    assert to_question(value) == question


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (42, "takes a string"),
        (("human", "a bare pair"), "takes a string"),
        ({"topic": "x"}, "needs a 'question'"),
        ("   ", "empty"),
        ([], "empty"),
        ([1, 2], "must hold messages"),
        ([("robot", "hi")], "must hold messages.*'robot'"),
    ],
)
def test_bad_inputs_say_what_is_accepted(value: object, says: str) -> None:
    with pytest.raises(sotflow.ConfigurationError, match=says):
        to_question(value)


def test_pipes_with_prompt_templates_and_parsers() -> None:
    backend = sotflow.ScriptedBackend(sot_model())
    step = SotflowRunnable(sotflow.Direct(), backend)
    chain = (
        ChatPromptTemplate.from_messages([("system", "Be kind."), ("human", "{topic}: tips?")])
        | step
        | StrOutputParser()
    )
    try:
        assert chain.invoke({"topic": "sleep"}) == "direct: Be kind.\n\nsleep: tips?"
    finally:
        step.close()


def test_output_answer_returns_the_whole_answer() -> None:
    step = SotflowRunnable(
        sotflow.SkeletonOfThought(), sotflow.ScriptedBackend(sot_model()), output="answer"
    )
    try:
        answer = step.invoke("Q?")
        assert isinstance(answer, sotflow.Answer)
        assert answer.text == EXPECTED and len(answer.points or []) == 3
        properties = step.get_output_schema().model_json_schema()["properties"]
        assert {"text", "points", "usage", "trace", "error"} <= set(properties)
    finally:
        step.close()


def test_schemas_describe_inputs_and_output(runnable: SotflowRunnable) -> None:
    schema = runnable.get_input_schema().model_json_schema()
    text = str(schema)
    assert "question" in text and "string" in text and "messages" in text.lower()
    assert runnable.get_output_schema().model_json_schema()["type"] == "string"


def test_stream_yields_the_answer_in_reading_order(runnable: SotflowRunnable) -> None:
    chunks = list(runnable.stream("Q?"))
    assert len(chunks) > 3
    assert "".join(chunks) == EXPECTED


@pytest.mark.anyio
async def test_astream_starts_before_the_slowest_point_is_done() -> None:
    # Point 3 takes 0.6 s; point 1's text must reach the consumer well before that.
    step = SotflowRunnable(
        sotflow.SkeletonOfThought(), sotflow.ScriptedBackend(sot_model(slow_point=3, slow_s=0.6))
    )
    start = time.perf_counter()
    arrivals: list[tuple[float, str]] = []
    async for chunk in step.astream("Q?"):
        arrivals.append((time.perf_counter() - start, chunk))
    assert "".join(c for _, c in arrivals) == EXPECTED
    text, first_point_done = "", None
    for at, chunk in arrivals:
        text += chunk
        if first_point_done is None and "point 1 text." in text:
            first_point_done = at
    assert first_point_done is not None
    # Measured against the last arrival, not the clock: a stalled machine shifts both.
    assert first_point_done + 0.3 < arrivals[-1][0]


@pytest.mark.anyio
async def test_ainvoke_and_abatch(runnable: SotflowRunnable) -> None:
    assert await runnable.ainvoke([HumanMessage("Q?")]) == EXPECTED
    assert await runnable.abatch(["a", "b", "c"]) == [EXPECTED] * 3


def test_batch_honours_max_concurrency() -> None:
    backend = sotflow.ScriptedBackend(sot_model(point_delay=0.1))
    step = SotflowRunnable(sotflow.Direct(), backend)
    try:
        out = step.batch([f"q{i}" for i in range(6)], config={"max_concurrency": 2})
        assert out == [f"direct: q{i}" for i in range(6)]
        assert backend.peak_in_flight == 2
    finally:
        step.close()


@pytest.mark.anyio
async def test_backend_limits_hold_across_nested_fan_out() -> None:
    # Three SoT runs at once, each fanning out to three points: the backend's cap of 2
    # still holds for every call of every run.
    backend = sotflow.ScriptedBackend(sot_model(point_delay=0.05), max_concurrency=2)
    step = SotflowRunnable(sotflow.SkeletonOfThought(), backend)
    out = await step.abatch(["a", "b", "c"], config={"max_concurrency": 3})
    assert out == [EXPECTED] * 3
    assert backend.peak_in_flight == 2
    assert backend.calls == 12


@pytest.mark.anyio
async def test_astream_events_carry_a_custom_event_per_graph_node(
    runnable: SotflowRunnable,
) -> None:
    chain = PromptTemplate.from_template("{q}") | runnable | StrOutputParser()
    events = [e async for e in chain.astream_events({"q": "Q?"}, version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    nodes = sorted(e["data"]["node"] for e in custom if e["name"] == "sotflow_node")
    assert nodes == ["answer", "p1", "p2", "p3", "skeleton"]
    assert all(e["data"]["status"] == "ok" for e in custom)
    skeleton = next(e for e in custom if e["data"]["node"] == "skeleton")
    assert skeleton["data"]["kind"] == "call" and skeleton["data"]["usage"]["total_tokens"] > 0
    streamed = "".join(e["data"]["chunk"] for e in events if e["event"] == "on_parser_stream")
    assert streamed == EXPECTED


@pytest.mark.anyio
async def test_retries_show_as_custom_events() -> None:
    script = sot_model()
    failures = iter([sotflow.ServerError("flaky", status_code=503)])

    def flaky(request: Request) -> object:
        if request.prefill == "2. Cut distractions -":
            error = next(failures, None)
            if error is not None:
                return error
        return script(request)

    step = SotflowRunnable(
        sotflow.SkeletonOfThought(),
        sotflow.ScriptedBackend(flaky),
        retry=sotflow.RetryPolicy(initial_wait_s=0.01, jitter_s=0.0),
    )
    events = [e async for e in step.astream_events("Q?", version="v2")]
    retries = [
        e for e in events if e["event"] == "on_custom_event" and e["name"] == "sotflow_retry"
    ]
    assert [r["data"]["node"] for r in retries] == ["p2"]
    assert retries[0]["data"]["error"]["type"] == "ServerError"


def test_errors_propagate_from_every_entry_point() -> None:
    backend = sotflow.ScriptedBackend(
        [sotflow.AuthenticationError("bad key", status_code=401)], cycle=True
    )
    step = SotflowRunnable(sotflow.Direct(), backend)
    try:
        with pytest.raises(sotflow.AuthenticationError):
            step.invoke("Q?")
        with pytest.raises(sotflow.AuthenticationError):
            list(step.stream("Q?"))

        async def both() -> None:
            with pytest.raises(sotflow.AuthenticationError):
                await step.ainvoke("Q?")
            with pytest.raises(sotflow.AuthenticationError):
                _ = [c async for c in step.astream("Q?")]

        anyio.run(both)
    finally:
        step.close()


def test_sync_use_without_close_leaves_no_unclosed_session(server: LoopbackServer) -> None:
    # The README's chain.invoke(...) in a script that ends without step.close(): the
    # backend's aiohttp session lives on the sync calls' loop and is closed at exit.
    code = (
        "import sotflow\n"
        "from sotflow.integrations.langchain import SotflowRunnable\n"
        f"backend = sotflow.OpenAIBackend(base_url={server.base_url!r}, api_key='k')\n"
        "step = SotflowRunnable(sotflow.Direct(max_tokens=3), backend)\n"
        "print(step.invoke('Q?'), list(step.stream('Q?')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "Unclosed" not in out.stderr and "ResourceWarning" not in out.stderr, out.stderr


def test_a_backend_is_required() -> None:
    with pytest.raises(sotflow.ConfigurationError, match="needs a backend"):
        SotflowRunnable(sotflow.Direct())


def test_a_strategy_by_name_or_a_clear_error() -> None:
    backend = sotflow.ScriptedBackend(sot_model())
    step = SotflowRunnable("direct", backend)  # type: ignore[arg-type]
    try:
        assert isinstance(step.strategy, sotflow.Direct) and step.invoke("Q?") == "direct: Q?"
    finally:
        step.close()
    with pytest.raises(sotflow.ConfigurationError, match="unknown strategy 'sotdag'"):
        SotflowRunnable("sotdag", backend)  # type: ignore[arg-type]
    for wrong in (sotflow.Direct, 42):  # the class itself, not an instance
        with pytest.raises(sotflow.ConfigurationError, match="must be a sotflow strategy"):
            SotflowRunnable(wrong, backend)  # type: ignore[arg-type]


def test_missing_extra_names_the_install_command() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'langchain_core':\n"
        "            raise ImportError('no langchain_core here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import sotflow\n"
        "try:\n"
        "    import sotflow.integrations.langchain\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'sotflow[langchain]'" in out.stdout
