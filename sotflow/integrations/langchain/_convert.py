"""LangChain's messages <-> sotflow's: conversations, questions, replies."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    AnyMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.prompt_values import PromptValue

from ...errors import ConfigurationError
from ...types import Message, ToolCall, Usage

__all__ = [
    "ai_message",
    "last_chunk",
    "to_messages",
    "to_question",
    "usage_metadata",
]

# Blocks of an assistant turn that are not its text: its tool calls travel as tool
# calls, and reasoning is not sent back to a model.
_ASSISTANT_EXTRAS = frozenset(
    {
        "tool_use",
        "tool_call",
        "tool_call_chunk",
        "invalid_tool_call",
        "server_tool_call",
        "server_tool_call_chunk",
        "server_tool_result",
        "reasoning",
        "thinking",
        "redacted_thinking",
    }
)
_CHAT_ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "system": "system",
    "developer": "system",
}


def text_of(message: BaseMessage) -> str:
    """A message's text; a block sotflow cannot send (an image, a file) is refused."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text") or ""))
        elif message.type == "ai" and kind in _ASSISTANT_EXTRAS:
            continue
        else:
            raise ConfigurationError(
                f"sotflow sends text only; a {message.type} message has a {kind!r} content "
                "block (images, audio and files are not supported)"
            )
    return "".join(parts)


def _messages(items: list[Any]) -> list[BaseMessage]:
    # What LangChain's chat models take as messages: message objects, ("human", "...")
    # pairs, {"role": ..., "content": ...} dicts and plain strings.
    try:
        return convert_to_messages(items)
    except (NotImplementedError, ValueError, TypeError) as exc:
        # LangChain's message ends with a troubleshooting link on a line of its own.
        reason = next(iter(str(exc).splitlines()), type(exc).__name__)
        raise ConfigurationError(
            "a list input must hold messages: message objects, (role, text) pairs or "
            f"{{'role': ..., 'content': ...}} dicts; {reason}"
        ) from None


def to_question(value: Any) -> str:
    """Turn any accepted input into the question text a strategy answers.

    A string, a dict with ``question``, a prompt value, or messages: one human message
    is its text; system messages come first; a longer conversation is written out as
    ``User: ...`` / ``Assistant: ...`` lines.
    """
    if isinstance(value, PromptValue):
        value = value.to_messages()
    elif isinstance(value, BaseMessage):
        value = [value]
    elif isinstance(value, list) and value:
        value = _messages(value)
    if isinstance(value, str):
        question = value
    elif isinstance(value, dict):
        question = value.get("question")
        if not isinstance(question, str):
            raise ConfigurationError(
                f"a dict input needs a 'question' string; got keys {sorted(value)}"
            )
    elif isinstance(value, list):
        system = [text_of(m) for m in value if m.type == "system"]
        turns = [m for m in value if m.type != "system"]
        if len(turns) == 1 and turns[0].type == "human":
            body = text_of(turns[0])
        else:
            body = "\n".join(
                f"{'User' if m.type == 'human' else 'Assistant'}: {text_of(m)}" for m in turns
            )
        question = "\n\n".join([*system, body])
    else:
        raise ConfigurationError(
            "sotflow takes a string, a dict with 'question', a list of messages or "
            f"a prompt value; got {type(value).__name__}"
        )
    if not question.strip():
        raise ConfigurationError("the question is empty")
    return question


def _tool_calls(message: AIMessage) -> tuple[ToolCall, ...]:
    return tuple(
        ToolCall(
            call.get("id") or f"call_{position}",
            call["name"],
            json.dumps(call.get("args") or {}, ensure_ascii=False),
        )
        for position, call in enumerate(message.tool_calls)
    )


def to_messages(messages: Sequence[AnyMessage | BaseMessage]) -> list[Message]:
    """A LangChain conversation as sotflow messages, tool calls and results included."""
    out = []
    for message in messages:
        name = message.name if isinstance(message.name, str) else None
        if isinstance(message, SystemMessage):
            out.append(Message("system", text_of(message), name=name))
        elif isinstance(message, HumanMessage):
            out.append(Message("user", text_of(message), name=name))
        elif isinstance(message, AIMessage):
            out.append(Message("assistant", text_of(message), _tool_calls(message), name=name))
        elif isinstance(message, ToolMessage):
            out.append(Message.tool(text_of(message), message.tool_call_id, name=name))
        elif isinstance(message, ChatMessage) and message.role in _CHAT_ROLES:
            role = _CHAT_ROLES[message.role]
            out.append(Message(role, text_of(message), name=name))  # type: ignore[arg-type]
        else:
            raise ConfigurationError(
                f"sotflow cannot send a {type(message).__name__} "
                f"({getattr(message, 'role', message.type)!r}); use system, human, AI and "
                "tool messages"
            )
    if not out:
        raise ConfigurationError("the conversation is empty; give the model a message")
    return out


def usage_metadata(usage: Usage) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _parsed_calls(calls: Sequence[ToolCall]) -> tuple[list[Any], list[Any]]:
    valid, invalid = [], []
    for call in calls:
        raw = {"id": call.id, "function": {"name": call.name, "arguments": call.arguments}}
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except Exception as exc:  # LangChain raises OutputParserException for bad JSON
            invalid.append(make_invalid_tool_call(raw, str(exc)))
        else:
            if parsed is not None:
                valid.append(parsed)
    return valid, invalid


def ai_message(
    text: str, calls: Sequence[ToolCall], usage: Usage, metadata: dict[str, Any]
) -> AIMessage:
    valid, invalid = _parsed_calls(calls)
    return AIMessage(
        content=text,
        tool_calls=valid,
        invalid_tool_calls=invalid,
        usage_metadata=usage_metadata(usage),
        response_metadata=metadata,
    )


def last_chunk(
    text: str, calls: Sequence[ToolCall], usage: Usage, metadata: dict[str, Any]
) -> AIMessageChunk:
    """The stream's final chunk: the rest of the text, whole tool calls, usage, metadata."""
    return AIMessageChunk(
        content=text,
        tool_call_chunks=[
            tool_call_chunk(name=c.name, args=c.arguments, id=c.id, index=i)
            for i, c in enumerate(calls)
        ],
        usage_metadata=usage_metadata(usage),
        response_metadata=metadata,
        chunk_position="last",
    )
