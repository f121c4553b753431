"""Replies in shape for tool calling and structured output, for the loopback server.

A model asked with tools calls one when it should: always when ``tool_choice`` forces
a call (``"required"``, or one function by name), and with ``"auto"`` when the last
user message is about a tool (it names the tool, or shares a word with its name or
description); after a tool result it answers in text that uses the result. A model
asked for JSON writes JSON that validates against the schema it was given.

Values follow the schema generically: every property gets a value of its type;
strings come from the user's message (quoted phrases first, in order, then the
message itself), numbers from the numbers in it (kept within the schema's bounds),
everything else from the schema (enum, const, defaults, formats, array sizes). Nothing
here knows any particular test or tool.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ToolCallReply", "fill_schema", "structured_reply"]

_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"|“([^”]+)”|‘([^’]+)’|「([^」]+)」")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w|\.\d)")
_WORD = re.compile(r"[a-z0-9]+")
# Words that say nothing about which tool a message is about.
_STOPWORDS = frozenset(
    "a an and are be by can do for from get give how i in is it me my of on or please "  # noqa: SIM905
    "the this to use using value what with you your tool tools".split()
)
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ToolCallReply:
    id: str
    name: str
    arguments: str
    """JSON text."""


class _Source:
    """Values taken from the user's message, each used once, in order."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self.quotes = iter([next(g for g in m.groups() if g) for m in _QUOTED.finditer(text)])
        self.numbers = iter(float(m.group()) for m in _NUMBER.finditer(text))
        self.used_text = False

    def string(self, name: str) -> str:
        quoted = next(self.quotes, None)
        if quoted is not None:
            return quoted
        if not self.used_text and self.text:
            self.used_text = True
            return self.text
        return f"{name.replace('_', ' ')} for: {self.text}" if self.text else name

    def number(self) -> float | None:
        return next(self.numbers, None)


def _resolve(schema: Any, root: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while isinstance(schema, Mapping) and "$ref" in schema and seen < 32:
        ref = str(schema["$ref"])
        if not ref.startswith("#/"):
            return {}
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        schema, seen = target, seen + 1
    return schema if isinstance(schema, Mapping) else {}


def _bound(schema: Mapping[str, Any], key: str) -> float | None:
    value = schema.get(key)
    # Draft 4 wrote exclusive bounds as booleans beside minimum/maximum.
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(schema: Mapping[str, Any], source: _Source, integer: bool) -> int | float:
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    xlow, xhigh = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    if schema.get("exclusiveMinimum") is True:
        xlow, low = low, None
    if schema.get("exclusiveMaximum") is True:
        xhigh, high = high, None
    step = 1 if integer else 0.5
    taken = source.number()
    value: float = taken if taken is not None else (low if low is not None else 0)
    if low is not None:
        value = max(value, low)
    if xlow is not None and value <= xlow:
        value = xlow + step
    if high is not None:
        value = min(value, high)
    if xhigh is not None and value >= xhigh:
        value = xhigh - step
    return int(value) if integer else value


def _string(schema: Mapping[str, Any], name: str, source: _Source) -> str:
    fmt = schema.get("format")
    formats = {
        "date-time": "2024-01-01T00:00:00Z",
        "date": "2024-01-01",
        "time": "00:00:00",
        "email": "user@example.com",
        "uri": "https://example.com/",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }
    if fmt in formats:
        return formats[fmt]
    text = source.string(name)
    shortest, longest = schema.get("minLength"), schema.get("maxLength")
    if shortest is not None and len(text) < shortest:
        text = text + "x" * (shortest - len(text))
    if longest is not None:
        text = text[:longest]
    return text


def fill_schema(schema: Any, text: str = "", *, root: Mapping[str, Any] | None = None) -> Any:
    """A value that validates against JSON schema ``schema``, drawing on ``text``."""
    return _fill(schema, "value", _Source(text), root if root is not None else schema)


def _fill(schema: Any, name: str, source: _Source, root: Any) -> Any:
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        options = list(schema["enum"])
        mentioned = [o for o in options if isinstance(o, str) and o.lower() in source.text.lower()]
        return mentioned[0] if mentioned else options[0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [_resolve(o, root) for o in schema[key]]
            chosen = next((o for o in options if o.get("type") != "null"), options[0])
            return _fill(chosen, name, source, root)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root))
        return _fill(merged, name, source, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {key: _fill(sub, key, source, root) for key, sub in properties.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems") or 0))
        return [_fill(schema.get("items") or {}, name, source, root) for _ in range(count)]
    if kind == "integer":
        return _number(schema, source, integer=True)
    if kind == "number":
        return _number(schema, source, integer=False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, name, source)


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
    return str(content or "")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower().replace("_", " "))) - _STOPWORDS


def _pick_tool(tools: list[Mapping[str, Any]], text: str, forced: bool) -> Mapping[str, Any] | None:
    lowered = text.lower()
    for tool in tools:
        if tool["function"]["name"].lower() in lowered:
            return tool
    asked = _words(text)

    def overlap(tool: Mapping[str, Any]) -> int:
        function = tool["function"]
        return len(asked & _words(f"{function['name']} {function.get('description') or ''}"))

    best = max(tools, key=overlap)  # the first of equals
    if overlap(best) > 0:
        return best
    return tools[0] if forced else None


def _tool_call(body: Mapping[str, Any]) -> list[ToolCallReply] | None:
    tools = [t for t in body.get("tools") or () if isinstance(t, Mapping) and t.get("function")]
    choice = body.get("tool_choice") or "auto"
    if not tools or choice == "none":
        return None
    messages = body.get("messages") or []
    named = choice.get("function", {}).get("name") if isinstance(choice, Mapping) else None
    forced = named is not None or choice in ("required", "any")
    last = messages[-1] if messages else {}
    if not forced and isinstance(last, Mapping) and last.get("role") == "tool":
        return None  # the result is in: answer with it
    text = _last_user_text(messages)
    if named is not None:
        tool = next((t for t in tools if t["function"]["name"] == named), None)
    else:
        tool = _pick_tool(tools, text, forced)
    if tool is None:
        return None
    function = tool["function"]
    arguments = fill_schema(function.get("parameters") or {"type": "object"}, text)
    return [
        ToolCallReply(
            f"call_{next(_ids)}", function["name"], json.dumps(arguments, ensure_ascii=False)
        )
    ]


def _json_text(body: Mapping[str, Any]) -> str | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, Mapping):
        return None
    text = _last_user_text(body.get("messages") or [])
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        value = fill_schema(spec.get("schema") or {}, text)
    elif fmt.get("type") == "json_object":
        # No schema: the keys are the ones the prompt asks for by name, in quotes.
        keys = [q for q in _Source(text).quotes if re.fullmatch(r"\w+", q)]
        value = {key: f"{key.replace('_', ' ')} for: {text}" for key in keys or ["answer"]}
    else:
        return None
    return json.dumps(value, ensure_ascii=False)


def _after_tool(body: Mapping[str, Any]) -> str | None:
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if not isinstance(last, Mapping) or last.get("role") != "tool":
        return None
    result = _content_text(last.get("content")).strip() or "nothing"
    return f"The tool returned: {result}"


def structured_reply(body: Mapping[str, Any]) -> str | list[ToolCallReply] | None:
    """Tool calls, JSON text or text after a tool result; ``None`` for a plain reply."""
    calls = _tool_call(body)
    if calls:
        return calls
    json_text = _json_text(body)
    if json_text is not None:
        return json_text
    return _after_tool(body)


def iter_pieces(text: str) -> Iterator[str]:
    """Stream-sized pieces of JSON text: words with their leading space."""
    words = text.split(" ")
    yield words[0]
    for word in words[1:]:
        yield " " + word
