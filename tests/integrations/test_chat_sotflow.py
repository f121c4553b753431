"""ChatSotflow's own behaviour: strategies behind a chat model, events, stops, resources."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import anyio
import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import LLMResult
from pydantic import BaseModel

import sotflow
from sotflow.integrations.langchain import ChatSotflow
from sotflow.testing import Fault, LoopbackServer
from sotflow.types import Request

pytestmark = pytest.mark.anyio

EXPECTED = (
    "1. Plan the day - point 1 text.\n"
    "2. Cut distractions - point 2 text.\n"
    "3. Rest well - point 3 text."
)


def sot_script(slow_point: int | None = None, slow_s: float = 0.0, point_delay: float = 0.0):
    def script(request: Request) -> sotflow.Reply:
        if request.prefill == "1.":
            return sotflow.Reply(" Plan the day\n2. Cut distractions\n3. Rest well")
        if request.prefill:
            n = int(request.prefill.split(".")[0])
            return sotflow.Reply(
                f" point {n} text.", delay_s=slow_s if n == slow_point else point_delay
            )
        return sotflow.Reply(f"direct: {request.messages[-1].content}", delay_s=point_delay)

    return script


def scripted(**kwargs: Any) -> sotflow.ScriptedBackend:
    return sotflow.ScriptedBackend(sot_script(**kwargs))


class Recorder(BaseCallbackHandler):
    """What a LangChain callback handler sees of one call, in order."""

    def __init__(self, skeleton_seen: threading.Event | None = None) -> None:
        self.skeleton_seen = skeleton_seen
        self.seen: list[str] = []
        self.tokens: list[str] = []
        self.ends: list[LLMResult] = []
        self.run_ids: dict[str, Any] = {}

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: Any, **kw: Any
    ) -> None:
        self.seen.append("start")
        self.run_ids["start"] = run_id

    def on_llm_new_token(self, token: str, **kw: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: LLMResult, **kw: Any) -> None:
        self.seen.append("end")
        self.ends.append(response)

    def on_custom_event(self, name: str, data: Any, *, run_id: Any, **kw: Any) -> None:
        self.seen.append(f"{name}:{data['node']}")
        self.run_ids[data["node"]] = run_id
        if data["node"] == "skeleton" and self.skeleton_seen is not None:
            self.skeleton_seen.set()


def test_invoke_returns_an_ai_message_with_usage_and_what_answered() -> None:
    backend = scripted()
    model = ChatSotflow(backend=backend, strategy="sot")
    reply = model.invoke("How do I manage time?")
    assert isinstance(reply, AIMessage) and reply.content == EXPECTED
    assert backend.calls == 4
    usage = reply.usage_metadata
    assert (
        usage is not None
        and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    )
    assert usage["output_tokens"] > 10
    meta = reply.response_metadata
    assert meta["strategy"] == "sot" and meta["model_name"] == "scripted"
    assert meta["finish_reason"] == "stop" and meta["warnings"] == []
    assert meta["latency_s"] > 0


def test_stream_is_in_reading_order_with_usage_only_on_the_last_chunk() -> None:
    model = ChatSotflow(backend=scripted(), strategy="sot")
    chunks = list(model.stream("How do I manage time?"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len(chunks) > 5
    assert "".join(str(c.content) for c in chunks) == EXPECTED
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1
    assert chunks[-1].usage_metadata and chunks[-1].chunk_position == "last"
    assert chunks[-1].response_metadata["strategy"] == "sot"


def test_chat_model_callbacks_see_start_tokens_live_node_events_and_usage() -> None:
    # Point 3 is written only once the caller's handler has seen the skeleton finish:
    # if node events were replayed at the end of a sync call, point 3 would wait out
    # its gate and finish before the handler heard of the skeleton.
    skeleton_seen = threading.Event()
    plain = sot_script()
    waited: list[bool] = []

    async def script(request: Request) -> Any:
        if request.prefill and request.prefill.startswith("3."):
            waited.append(await anyio.to_thread.run_sync(skeleton_seen.wait, 20))
        return plain(request)

    model = ChatSotflow(backend=sotflow.ScriptedBackend(script), strategy="sot")
    recorder = Recorder(skeleton_seen)
    with get_usage_metadata_callback() as usage:
        reply = model.invoke("Q?", config={"callbacks": [recorder]})
    assert waited == [True]  # the skeleton's event reached the caller while point 3 waited
    assert recorder.seen[0] == "start" and recorder.seen[-1] == "end"
    nodes = sorted(s for s in recorder.seen if s.startswith("sotflow_node:"))
    assert nodes == [f"sotflow_node:{n}" for n in ("answer", "p1", "p2", "p3", "skeleton")]
    token_usage = recorder.ends[0].llm_output["token_usage"]
    assert token_usage["total_tokens"] == reply.usage_metadata["total_tokens"]
    assert usage.usage_metadata["scripted"]["total_tokens"] == reply.usage_metadata["total_tokens"]
    # The node events belong to the chat model's own run.
    assert recorder.run_ids["skeleton"] == recorder.run_ids["start"]

    streaming = Recorder()
    chunks = list(model.stream("Q?", config={"callbacks": [streaming]}))
    assert streaming.tokens == [c.content for c in chunks]
    assert "sotflow_node:p3" in streaming.seen
    assert streaming.run_ids["p3"] == streaming.run_ids["start"]


async def test_astream_events_carry_node_events_and_token_chunks() -> None:
    model = ChatSotflow(backend=scripted(), strategy="sot")
    events = [e async for e in model.astream_events("Q?", version="v2")]
    nodes = sorted(e["data"]["node"] for e in events if e["event"] == "on_custom_event")
    assert nodes == ["answer", "p1", "p2", "p3", "skeleton"]
    streamed = [e["data"]["chunk"].content for e in events if e["event"] == "on_chat_model_stream"]
    assert "".join(streamed) == EXPECTED and len(streamed) > 5
    start = next(e for e in events if e["event"] == "on_chat_model_start")
    custom = next(e for e in events if e["event"] == "on_custom_event")
    assert custom["run_id"] == start["run_id"]


async def test_ainvoke_and_abatch_share_the_backends_limits() -> None:
    backend = sotflow.ScriptedBackend(sot_script(point_delay=0.05), max_concurrency=2)
    model = ChatSotflow(backend=backend, strategy="sot")
    assert (await model.ainvoke([HumanMessage("Q?")])).content == EXPECTED
    replies = await model.abatch(["a", "b", "c"], config={"max_concurrency": 3})
    assert [r.content for r in replies] == [EXPECTED] * 3
    assert backend.peak_in_flight == 2


def test_stop_ends_the_answer_whatever_the_strategy() -> None:
    model = ChatSotflow(backend=scripted(), strategy="sot")
    cut = model.invoke("Q?", stop=["2. Cut"])
    assert cut.content == "1. Plan the day - point 1 text.\n"
    assert cut.response_metadata["finish_reason"] == "stop"
    bound = model.bind(stop=[" - "])
    assert bound.invoke("Q?").content == "1. Plan the day"
    streamed = "".join(str(c.content) for c in bound.stream("Q?"))
    assert streamed == "1. Plan the day"  # a possible start of a stop is held back


def test_direct_calls_take_stop_temperature_and_max_tokens_per_call() -> None:
    backend = scripted()
    model = ChatSotflow(backend=backend, strategy="direct", temperature=0.2, max_tokens=50)
    model.invoke("Q?", stop=["x"])
    model.bind(temperature=0.9).invoke("Q?", max_tokens=7)
    first, second = (r.params for r in backend.requests)
    assert (first.temperature, first.max_tokens, first.stop) == (0.2, 50, ("x",))
    assert (second.temperature, second.max_tokens) == (0.9, 7)


def test_named_strategies_take_the_settings_and_instances_say_they_keep_theirs() -> None:
    backend = scripted()
    named = ChatSotflow(backend=backend, strategy="sot")
    named.invoke("Q?", temperature=0.4)
    assert {r.params.temperature for r in backend.requests} == {0.4}
    instance = ChatSotflow(backend=backend, strategy=sotflow.SkeletonOfThought(), temperature=0.4)
    reply = instance.invoke("Q?")
    assert "temperature=0.4 applied to direct calls only" in reply.response_metadata["warnings"][0]


def test_a_conversation_is_one_question_for_a_strategy_and_sent_whole_when_direct() -> None:
    backend = scripted()
    conversation = [("system", "Be brief."), ("human", "Hi"), ("ai", "Hello"), ("human", "Tips?")]
    ChatSotflow(backend=backend, strategy="sot").invoke(conversation)
    assert "User: Hi\nAssistant: Hello\nUser: Tips?" in backend.requests[0].messages[-1].content
    ChatSotflow(backend=backend, strategy="direct").invoke(conversation)
    sent = backend.requests[-1].messages
    assert [(m.role, m.content) for m in sent] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "Tips?"),
    ]


def test_per_call_model_goes_to_every_call() -> None:
    backend = scripted()
    reply = ChatSotflow(backend=backend, strategy="sot").invoke("Q?", model="other")
    assert {r.model for r in backend.requests} == {"other"}
    assert reply.response_metadata["model_name"] == "other"


def test_tools_and_formats_are_one_direct_call_and_plain_backends_refuse_them() -> None:
    backend = scripted()
    model = ChatSotflow(backend=backend, strategy="sot")

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    with pytest.raises(sotflow.ConfigurationError, match="ScriptedBackend cannot honour tools"):
        model.bind_tools([add]).invoke("What is 1 + 2?")
    history = [
        HumanMessage("What is 1 + 2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1"),
    ]
    with pytest.raises(sotflow.ConfigurationError, match=r"messages\[1\]\.tool_calls"):
        model.invoke(history)
    assert backend.calls == 0  # refused before anything was sent


def test_through_the_loopback_server_tools_bypass_the_strategy(server: LoopbackServer) -> None:
    model = ChatSotflow(model="loopback", base_url=server.base_url, api_key="k", strategy="sot")

    def get_weather(location: str) -> str:
        """The weather at a location."""
        return "sunny"

    reply = model.bind_tools([get_weather]).invoke("What is the weather in 'Oslo'?")
    assert reply.tool_calls[0]["name"] == "get_weather"
    assert reply.tool_calls[0]["args"] == {"location": "Oslo"}
    assert reply.response_metadata["strategy"] == "direct"
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    assert server.stats()["requests"] == 1

    class Person(BaseModel):
        name: str
        age: int

    structured = model.with_structured_output(Person, include_raw=True)
    out = structured.invoke("Her name is 'Ada' and she is 36.")
    assert out["parsed"] == Person(name="Ada", age=36) and out["parsing_error"] is None
    assert isinstance(out["raw"], AIMessage)
    model.close()


def test_retries_are_the_engines_and_with_retry_multiplies_them(server: LoopbackServer) -> None:
    model = ChatSotflow(
        model="loopback", base_url=server.base_url, api_key="k", strategy="direct", max_retries=2
    )
    server.inject(Fault("status", status=503, retry_after_ms="1", times=100))
    with pytest.raises(sotflow.ServerError):
        model.invoke("Q?")
    assert server.stats()["requests"] == 3  # one call, two retries
    server.reset()
    server.inject(Fault("status", status=503, retry_after_ms="1", times=100))
    with pytest.raises(sotflow.ServerError):
        model.with_retry(stop_after_attempt=2, wait_exponential_jitter=False).invoke("Q?")
    assert server.stats()["requests"] == 6
    model.close()


LOCAL_URL = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"base_url": LOCAL_URL, "strategy": "sotdag"}, "unknown strategy 'sotdag'"),
        ({"base_url": LOCAL_URL, "strategy": sotflow.Direct}, "must be a sotflow strategy"),
        ({"base_url": LOCAL_URL, "max_tokens": -1}, "max_tokens must be a non-negative"),
        ({"base_url": "localhost:8000"}, "is not an http"),
        ({"backend": "gpt-4o"}, "backend must be a backend"),
        ({"backend": sotflow.ScriptedBackend(["x"]), "base_url": LOCAL_URL}, "on that backend"),
        ({"backend": sotflow.ScriptedBackend(["x"]), "model": "gpt-4o"}, "differs from the"),
    ],
)
def test_bad_settings_are_configuration_errors(kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(sotflow.ConfigurationError, match=says):
        ChatSotflow(**kwargs)


def test_no_key_for_openai_itself_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(sotflow.ConfigurationError, match="set OPENAI_API_KEY"):
        ChatSotflow()


def test_unknown_call_options_are_refused_by_name() -> None:
    model = ChatSotflow(backend=scripted(), strategy="direct")
    with pytest.raises(
        sotflow.ConfigurationError, match="'parallel_tool_calls', which it does not take"
    ):
        model.invoke("Q?", parallel_tool_calls=False)
    with pytest.raises(sotflow.ConfigurationError, match="takes method, include_raw and strict"):
        model.with_structured_output({"title": "x", "type": "object"}, tools=[])
    with pytest.raises(sotflow.ConfigurationError, match="method must be"):
        model.with_structured_output({"title": "x", "type": "object"}, method="xml")  # type: ignore[arg-type]


def run_script(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120
    )


def test_async_and_sync_use_leave_no_unclosed_session(server: LoopbackServer) -> None:
    code = (
        "import asyncio\n"
        "from sotflow.integrations.langchain import ChatSotflow\n"
        f"model = ChatSotflow(model='m', base_url={server.base_url!r}, api_key='k',\n"
        "                    strategy='sot')\n"
        "print(asyncio.run(model.ainvoke('Q?')).content[:5])\n"
        "print(asyncio.run(model.ainvoke('Q?')).content[:5])\n"
        "print(model.invoke('Q?').content[:5], len(list(model.stream('Q?'))))\n"
    )
    done = run_script(code)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3
    assert "Unclosed" not in done.stderr and "ResourceWarning" not in done.stderr, done.stderr


BREAK_OUT = """
import asyncio, gc, json, time, urllib.request
from sotflow.integrations.langchain import ChatSotflow

ROOT = {root!r}
model = ChatSotflow(model="m", base_url=ROOT + "/v1", api_key="k", strategy="direct")
LONG = "[[tokens=400]] Q?"  # 20 s of tokens at the server's pace: far longer than any wait here


def wait_until_cancelled(what):
    # The stream's request ends at the server only if leaving the loop cancelled it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with urllib.request.urlopen(ROOT + "/_control/stats") as response:
            if json.loads(response.read())["in_flight"] == 0:
                print(what, "cancelled")
                return
        time.sleep(0.05)
    print(what, "still streaming")


async def main():
    count = 0
    async for chunk in model.astream(LONG):
        count += 1
        if count == 3:
            break
    gc.collect()
    await asyncio.to_thread(wait_until_cancelled, "async")
    async with model:
        print(len((await model.ainvoke("Q?", max_tokens=3)).content) > 0)


asyncio.run(main())
for count, chunk in enumerate(model.stream(LONG)):
    if count == 2:
        break
wait_until_cancelled("sync")
"""


def test_breaking_out_of_a_stream_cancels_quietly(server: LoopbackServer) -> None:
    server.configure(tps=20)
    done = run_script(BREAK_OUT.format(root=server.root))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["async", "cancelled", "True", "sync", "cancelled"]
    for noise in ("never retrieved", "Unclosed", "ResourceWarning", "Traceback"):
        assert noise not in done.stderr, done.stderr
    assert server.stats()["disconnects"] >= 2


async def test_async_with_closes_and_the_model_reopens() -> None:
    backend = scripted()
    async with ChatSotflow(backend=backend, strategy="direct") as model:
        assert (await model.ainvoke("Q?")).content == "direct: Q?"
    assert (await model.ainvoke("again")).content == "direct: again"
