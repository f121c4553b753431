"""The one OpenAI JSON mapping: tool calls and structured output both ways, and the
plain-text backends' refusals."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

import sotflow
from sotflow.backends.base import check_text_request
from sotflow.openai_wire import (
    StreamAssembler,
    choice_to_wire,
    completion_from_wire,
    message_from_wire,
    message_to_wire,
    request_body,
)
from sotflow.types import Choice, Message, Request, ToolCall

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
HISTORY = (
    Message.user("What is 1 + 2?"),
    Message.assistant("", [ToolCall("call_9", "add", '{"a": 1, "b": 2}')]),
    Message.tool("3", "call_9", name="add"),
)


def test_the_body_carries_tools_choice_format_and_a_tool_history_unchanged() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    request = Request(
        HISTORY, tools=(ADD,), tool_choice="required", response_format=fmt, model="other"
    )
    body = request_body(request, model="gpt-4o-mini", stream=False, prefill=False)
    assert body["model"] == "other"
    assert body["tools"] == [ADD] and body["tool_choice"] == "required"
    assert body["response_format"] == fmt
    assert body["messages"] == [
        {"role": "user", "content": "What is 1 + 2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                }
            ],
        },
        {"role": "tool", "content": "3", "tool_call_id": "call_9", "name": "add"},
    ]
    plain = request_body(Request.of("hi"), model="m", stream=False, prefill=False)
    assert not {"tools", "tool_choice", "response_format"} & set(plain)


def test_messages_survive_the_trip_to_json_and_back() -> None:
    for i, message in enumerate(HISTORY):
        assert message_from_wire(message_to_wire(message), i) == message
    assert message_from_wire({"role": "developer", "content": "Be brief."}).role == "system"
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    assert message_from_wire(parts).content == "ab"


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ({"role": "robot", "content": "x"}, r"messages\[3\]\.role must be one of"),
        ({"role": "tool", "content": "x"}, "needs the tool_call_id"),
        ({"role": "user", "content": [{"type": "image_url"}]}, "only text parts"),
        (
            {"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]},
            "only an assistant",
        ),
        ({"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}, "needs a function"),
        ("hello", r"messages\[3\] must be an object"),
    ],
)
def test_a_bad_message_is_refused_by_position(item: Any, says: str) -> None:
    with pytest.raises(sotflow.ConfigurationError, match=says):
        message_from_wire(item, 3)


def test_a_reply_with_tool_calls_parses_and_serialises_back() -> None:
    data = {
        "model": "served",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    completion = completion_from_wire(
        data, Request.of("q"), model="m", where="here", prefill_in_words=False
    )
    assert completion.tool_calls == (ToolCall("c1", "add", '{"a": 3, "b": 4}'),)
    assert completion.finish_reason == "tool_calls" and completion.text == ""
    assert completion.tool_calls[0].parsed() == {"a": 3, "b": 4}
    assert choice_to_wire(completion.choices[0]) == {
        "index": 0,
        "message": data["choices"][0]["message"],
        "finish_reason": "tool_calls",
    }


def test_streamed_tool_call_pieces_assemble_into_whole_calls() -> None:
    assembler = StreamAssembler(Request.of("q"), model="m", where="here", prefill_in_words=False)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    pieces = [
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "add", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]}),
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "c2", "function": {"name": "add", "arguments": "{}"}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "3}"}}]}),
        chunk({}, "tool_calls"),
    ]
    deltas = [d for p in pieces for d in assembler.add(p)]
    assert deltas == []  # tool calls are not text
    completion = assembler.completion()
    assert completion.tool_calls == (ToolCall("c1", "add", '{"a": 3}'), ToolCall("c2", "add", "{}"))
    assert completion.usage.estimated and completion.usage.completion_tokens > 0


def test_a_streamed_call_without_a_name_is_malformed() -> None:
    assembler = StreamAssembler(Request.of("q"), model="m", where="here", prefill_in_words=False)
    assembler.add(
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
                    "finish_reason": "tool_calls",
                }
            ]
        }
    )
    with pytest.raises(sotflow.MalformedResponseError, match="without a function name"):
        assembler.completion()


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"tools": ({"type": "function"},)}, r"tools\[0\] must look like"),
        ({"tools": ("add",)}, r"tools\[0\] must be a dict"),
        ({"tool_choice": "auto"}, "needs tools"),
        ({"tools": (ADD,), "tool_choice": "any"}, "tool_choice must be one of"),
        (
            {"tools": (ADD,), "tool_choice": {"type": "function", "function": {"name": "mul"}}},
            "'mul', which is not among",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format must have a type"),
        ({"response_format": {"type": "json_schema"}}, "needs {'type': 'json_schema'"),
        ({"model": ""}, "model must be a non-empty string"),
    ],
)
def test_bad_tool_fields_are_refused_with_their_shape(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(sotflow.ConfigurationError, match=says):
        Request((Message.user("q"),), **fields)


def test_messages_check_their_tool_fields() -> None:
    with pytest.raises(sotflow.ConfigurationError, match="needs the tool_call_id"):
        Message("tool", "3")
    with pytest.raises(sotflow.ConfigurationError, match="belongs on a tool message"):
        Message("user", "x", tool_call_id="c1")
    with pytest.raises(sotflow.ConfigurationError, match="role must be one of"):
        Message("robot", "x")  # type: ignore[arg-type]
    with pytest.raises(sotflow.ConfigurationError, match="arguments must be JSON text"):
        ToolCall("c1", "add", {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ToolCall("c1", "add", "{not json").parsed()


def test_tool_fields_names_everything_beyond_plain_text() -> None:
    assert Request.of("q").tool_fields() == []
    request = Request(HISTORY, tools=(ADD,), response_format={"type": "json_object"})
    assert request.tool_fields() == [
        "tools",
        "response_format",
        "messages[1].tool_calls",
        "messages[2] (a tool result)",
    ]


def test_plain_text_backends_refuse_tool_fields_by_name() -> None:
    scripted = sotflow.ScriptedBackend(["never"])
    request = Request((Message.user("q"),), tools=(ADD,))

    async def call() -> None:
        await scripted.complete(request)

    with pytest.raises(sotflow.ConfigurationError, match="ScriptedBackend cannot honour tools"):
        anyio.run(call)
    assert scripted.calls == 0
    with pytest.raises(sotflow.ConfigurationError, match=r"messages\[2\] \(a tool result\)"):
        check_text_request(Request(HISTORY), "LocalBackend")
    with pytest.raises(sotflow.ConfigurationError, match="serves 'smollm2' only"):
        check_text_request(
            Request((Message.user("q"),), model="x"), "LocalBackend", model="smollm2"
        )


def test_a_script_answers_for_the_model_asked() -> None:
    scripted = sotflow.ScriptedBackend(["hi"], cycle=True)

    async def call() -> tuple[str, str]:
        asked = await scripted.complete(Request((Message.user("q"),), model="other"))
        default = await scripted.complete(Request.of("q"))
        return asked.model, default.model

    assert anyio.run(call) == ("other", "scripted")


def test_choice_json_for_a_plain_reply() -> None:
    assert choice_to_wire(Choice(0, "hello", "stop")) == {
        "index": 0,
        "message": {"role": "assistant", "content": "hello"},
        "finish_reason": "stop",
    }
    assert json.dumps(choice_to_wire(Choice(1, "", None, None, (ToolCall("c", "f"),))))
