"""ChatSotflow where LangGraph puts a model: a MessagesState node, token streaming,
and a ReAct agent with one tool, against the loopback server."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import create_react_agent
from langgraph.warnings import LangGraphDeprecatedSinceV10

import sotflow
from sotflow.integrations.langchain import ChatSotflow
from sotflow.testing import LoopbackServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def sot_server() -> Iterator[LoopbackServer]:
    """Answers SoT's prompts in shape (and tools and schemas, as every loopback does)."""
    with LoopbackServer(responder="sotflow.testing.responders:sot_responder") as server:
        yield server


def chat(server: LoopbackServer, strategy: str) -> ChatSotflow:
    return ChatSotflow(
        model="loopback", base_url=server.base_url, api_key="k", strategy=strategy, prefill=True
    )


def graph_of(model: ChatSotflow):  # type: ignore[no-untyped-def]
    def answer(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return builder.compile()


def test_a_messages_state_node_stores_the_reply_as_the_assistant(
    sot_server: LoopbackServer,
) -> None:
    model = chat(sot_server, "sot")
    state = graph_of(model).invoke({"messages": [HumanMessage("How do I sleep better?")]})
    reply = state["messages"][-1]
    assert isinstance(reply, AIMessage) and reply.content
    assert reply.response_metadata["strategy"] == "sot"
    assert [type(m).__name__ for m in state["messages"]] == ["HumanMessage", "AIMessage"]


async def test_stream_mode_messages_yields_the_answer_token_by_token(
    sot_server: LoopbackServer,
) -> None:
    model = chat(sot_server, "sot")
    graph = graph_of(model)
    chunks = [
        chunk
        async for chunk, meta in graph.astream(
            {"messages": [HumanMessage("How do I sleep better?")]}, stream_mode="messages"
        )
        if meta["langgraph_node"] == "answer"
    ]
    tokens = [c for c in chunks if isinstance(c, AIMessageChunk) and c.content]
    assert len(tokens) > 10
    final = await graph.ainvoke({"messages": [HumanMessage("How do I sleep better?")]})
    assert "".join(str(c.content) for c in tokens) == final["messages"][-1].content


def test_a_react_agent_calls_its_tool_and_answers_with_the_result(
    sot_server: LoopbackServer,
) -> None:
    calls: list[str] = []

    @tool
    def get_weather(location: str) -> str:
        """Get the weather at a location."""
        calls.append(location)
        return f"It is sunny in {location}."

    model = chat(sot_server, "auto")
    with warnings.catch_warnings():
        # LangGraph points to its successor in the langchain package (not a dependency
        # here); the prebuilt agent is what LangGraph users run today.
        warnings.simplefilter("ignore", LangGraphDeprecatedSinceV10)
        agent = create_react_agent(model, [get_weather])
    state = agent.invoke({"messages": [HumanMessage("What is the weather in 'Lisbon'?")]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert calls == ["Lisbon"]
    assert isinstance(state["messages"][2], ToolMessage)
    final = state["messages"][-1]
    assert "It is sunny in Lisbon." in final.content and not final.tool_calls
    assert final.response_metadata["strategy"] == "direct"


def test_the_scripted_backend_stands_in_for_a_graph_without_tools() -> None:
    backend = sotflow.ScriptedBackend(["an answer"], cycle=True)
    state = graph_of(ChatSotflow(backend=backend, strategy="direct")).invoke(
        {"messages": [HumanMessage("Q?")]}
    )
    assert state["messages"][-1].content == "an answer"
