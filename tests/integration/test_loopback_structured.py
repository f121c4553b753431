"""The loopback server answers tool calls and JSON schemas in shape, plain and streamed."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

import sotflow
from sotflow.testing import LoopbackServer
from sotflow.testing.structured import fill_schema
from sotflow.types import Message, Request, ToolCall

pytestmark = pytest.mark.anyio


def tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


ADD = tool(
    "add", "Add two integers.", {"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"]
)
WEATHER = tool(
    "get_weather", "The weather at a location.", {"location": {"type": "string"}}, ["location"]
)
BOUNDED = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "exclusiveMinimum": 10, "maximum": 20},
        "x": {"type": "number", "minimum": -1.5, "exclusiveMaximum": 0},
        "kind": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "when": {"type": "string", "format": "date-time"},
        "code": {"type": "string", "minLength": 40, "maxLength": 50},
        "maybe": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/Inner"}]},
        "fixed": {"const": 7},
        "flag": {"type": "boolean"},
    },
    "required": ["n", "x", "kind", "tags", "when", "code", "maybe", "fixed", "flag"],
    "$defs": {
        "Inner": {
            "type": "object",
            "properties": {"label": {"type": "string"}, "count": {"type": ["integer", "null"]}},
            "required": ["label", "count"],
        }
    },
}


def test_filled_values_validate_and_come_from_the_message() -> None:
    value = fill_schema(BOUNDED, "Paint it 'blue sky' with 3 coats, the green one, count 99")
    jsonschema.validate(value, BOUNDED)
    # Numbers are taken in order and kept within bounds: 3 -> n, 99 -> x.
    assert value["n"] == 11 and value["x"] == -0.5
    assert value["kind"] == "green"  # an enum value the message names
    assert value["tags"][0] == "blue sky"  # quoted phrases first
    assert value["maybe"]["count"] == 0
    assert fill_schema({"type": "object", "properties": {}}) == {}


def backend(server: LoopbackServer) -> sotflow.OpenAIBackend:
    return sotflow.OpenAIBackend(base_url=server.base_url, api_key="test")


async def both(b: sotflow.OpenAIBackend, request: Request) -> list[sotflow.Completion]:
    plain = await b.complete(request)
    streamed = [item async for item in b.stream(request)][-1]
    assert isinstance(streamed, sotflow.Completion)
    return [plain, streamed]


async def test_a_required_tool_call_fills_the_schema_from_the_message(
    server: LoopbackServer,
) -> None:
    b = backend(server)
    request = Request(
        (Message.user("Please add 3 and 4."),),
        tools=(WEATHER, ADD),
        tool_choice="required",
    )
    for completion in await both(b, request):
        (call,) = completion.tool_calls
        assert call.name == "add" and call.parsed() == {"a": 3, "b": 4}
        assert completion.finish_reason == "tool_calls" and call.id
    named = Request(
        (Message.user("Hello!"),),
        tools=(ADD, WEATHER),
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    for completion in await both(b, named):
        assert completion.tool_calls[0].name == "get_weather"
        assert completion.tool_calls[0].parsed() == {"location": "Hello!"}
    await b.aclose()


async def test_auto_calls_a_tool_only_when_the_message_is_about_one(
    server: LoopbackServer,
) -> None:
    b = backend(server)
    about = Request((Message.user("What is the weather in Paris?"),), tools=(ADD, WEATHER))
    (call,) = (await b.complete(about)).tool_calls
    assert call.name == "get_weather"
    unrelated = await b.complete(Request((Message.user("Hello!"),), tools=(ADD, WEATHER)))
    assert unrelated.tool_calls == () and unrelated.text
    none = Request(
        (Message.user("What is the weather in Paris?"),), tools=(WEATHER,), tool_choice="none"
    )
    assert (await b.complete(none)).tool_calls == ()
    await b.aclose()


async def test_after_a_tool_result_the_reply_is_text_that_uses_it(server: LoopbackServer) -> None:
    b = backend(server)
    history = (
        Message.user("What is 1 + 2?"),
        Message.assistant("", [ToolCall("c1", "add", '{"a": 1, "b": 2}')]),
        Message.tool('{"result": 3}', "c1"),
    )
    for completion in await both(b, Request(history, tools=(ADD,))):
        assert completion.tool_calls == ()
        assert '{"result": 3}' in completion.text
    await b.aclose()


async def test_json_schema_and_json_object_replies(server: LoopbackServer) -> None:
    b = backend(server)
    fmt = {"type": "json_schema", "json_schema": {"name": "bounded", "schema": BOUNDED}}
    for completion in await both(b, Request((Message.user("Fill it in."),), response_format=fmt)):
        jsonschema.validate(json.loads(completion.text), BOUNDED)
    asked = Request(
        (Message.user("Reply with JSON with 'setup' and 'punchline' keys."),),
        response_format={"type": "json_object"},
    )
    for completion in await both(b, asked):
        assert set(json.loads(completion.text)) == {"setup", "punchline"}
    await b.aclose()


async def test_tool_call_arguments_stream_in_pieces(server: LoopbackServer) -> None:
    body = {
        "model": "loopback",
        "messages": [{"role": "user", "content": "Add 'twelve' and 30 please"}],
        "tools": [ADD],
        "tool_choice": "required",
        "stream": True,
    }
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{server.base_url}/chat/completions", json=body)
    events = [
        json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")
    ]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    pieces = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert pieces[0]["id"] and pieces[0]["function"]["name"] == "add"
    assert len(pieces) > 2  # a head, then the arguments a few characters at a time
    arguments = "".join(p["function"].get("arguments", "") for p in pieces)
    assert json.loads(arguments) == {"a": 30, "b": 0}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
