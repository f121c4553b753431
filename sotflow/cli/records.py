"""Batch input and output: JSONL or text in, one JSONL record per item out.

Input: JSONL objects with ``question`` (or ``prompt``) and an optional ``id`` (default:
the line number), or a ``.txt`` file with one question a line; ``-`` reads stdin. A line
that cannot be used becomes an error record naming its line; it is never dropped.

Output: one line per item, written whole and flushed as the item finishes. Fields the
input carried that clash with an output field are kept under ``input_<name>``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigurationError
from ..types import Answer

__all__ = [
    "OUTPUT_FIELDS",
    "InputItem",
    "OutputWriter",
    "answer_record",
    "carry",
    "error_record",
    "read_items",
    "repair_and_load",
]

OUTPUT_FIELDS = (
    "id", "question", "strategy", "answer", "points", "usage",
    "latency_s", "attempts", "error", "warnings",
)  # fmt: skip


@dataclass(slots=True)
class InputItem:
    """One line of input: a question to answer, or a problem to report."""

    id: Any
    line: int
    question: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def key(self) -> str:
        return str(self.id)


def _lines(path: str) -> tuple[list[str], bool]:
    """The input's lines and whether it is JSONL."""
    if path == "-":
        # As for files (utf-8-sig below): a byte-order mark, as Windows tools write
        # one, would otherwise hide the first line's "{" and turn JSONL into text.
        text = sys.stdin.read().removeprefix("\ufeff")
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return text.splitlines(), first.startswith("{")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"input file {path!r} does not exist")
    text = file.read_text(encoding="utf-8-sig")
    if file.suffix.lower() == ".txt":
        return text.splitlines(), False
    return text.splitlines(), True


def _refuse_json_array(lines: list[str], path: str) -> None:
    # A whole-file JSON array (often pretty-printed) would otherwise become one error
    # record per line, none of them saying what is wrong with the file.
    text = "\n".join(lines).strip()
    if not text.startswith("["):
        return
    try:
        data = json.loads(text)
    except ValueError:
        return  # JSONL whose first line is bad: reported line by line
    if isinstance(data, list):
        raise ConfigurationError(
            f"{'stdin' if path == '-' else path} holds one JSON array; sotflow reads JSONL, "
            "one object a line. Convert it, e.g. with: jq -c '.[]' FILE > FILE.jsonl"
        )


def read_items(path: str) -> list[InputItem]:
    lines, jsonl = _lines(path)
    if jsonl or path == "-":  # stdin has no suffix to say it is not JSON
        _refuse_json_array(lines, path)
    items: list[InputItem] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if not jsonl:
            items.append(InputItem(number, number, raw.strip()))
            continue
        try:
            data = json.loads(raw)
        except ValueError as exc:
            items.append(
                InputItem(number, number, None, problem=f"line {number}: not valid JSON ({exc})")
            )
            continue
        if not isinstance(data, dict):
            items.append(
                InputItem(number, number, None, problem=f"line {number}: expected a JSON object")
            )
            continue
        item_id = data.pop("id", number)
        if item_id is None or isinstance(item_id, dict | list):
            items.append(
                InputItem(
                    number, number, None, data, f"line {number}: 'id' must be a string or a number"
                )
            )
            continue
        question = data.pop("question", None)
        if question is None:
            question = data.pop("prompt", None)
        if not isinstance(question, str) or not question.strip():
            what = (
                "has no 'question' (or 'prompt')"
                if question is None
                else "has an empty or non-text question"
            )
            items.append(InputItem(item_id, number, None, data, f"line {number}: {what}"))
            continue
        items.append(InputItem(item_id, number, question, data))
    return items


def duplicate_ids(items: list[InputItem]) -> list[str]:
    seen: set[str] = set()
    duplicates: list[str] = []
    for item in items:
        if item.key in seen and item.key not in duplicates:
            duplicates.append(item.key)
        seen.add(item.key)
    return duplicates


def carry(
    record: dict[str, Any], extra: dict[str, Any], reserved: Collection[str] = OUTPUT_FIELDS
) -> dict[str, Any]:
    """Add the input's other fields; one named like an output field (``reserved``, also
    where this record lacks it) is kept under ``input_<name>``, never dropped."""
    for name, value in extra.items():
        record[f"input_{name}" if name in reserved or name in record else name] = value
    return record


def strategy_used(answer: Answer) -> str:
    """The strategy that really ran, also when the run failed.

    A routed ("auto") run names the chosen strategy in its answer only when it
    succeeds; when the chosen strategy then fails, ``answer.strategy`` is just "auto".
    The engine records every embedded strategy in its trace node, so take the last.
    """
    if answer.ok or answer.trace is None:
        return answer.strategy
    embedded = [
        str(node.meta["strategy"])
        for node in answer.trace.nodes
        if node.kind == "embed" and node.meta.get("strategy")
    ]
    return embedded[-1] if embedded else answer.strategy


def answer_record(item: InputItem, answer: Answer) -> dict[str, Any]:
    points = None
    if answer.points is not None:
        points = [{"title": p.title, "text": p.text} for p in answer.points]
    record = {
        "id": item.id,
        "question": item.question,
        "strategy": strategy_used(answer),
        "answer": answer.text if answer.ok else (answer.text or None),
        "points": points,
        "usage": {
            "prompt_tokens": answer.usage.prompt_tokens,
            "completion_tokens": answer.usage.completion_tokens,
            "total_tokens": answer.usage.total_tokens,
            # True when some count is sotflow's estimate (the server reported none).
            "estimated": answer.usage.estimated,
        },
        "latency_s": round(answer.latency_s, 4),
        "attempts": answer.attempts,
        "error": answer.error.model_dump() if answer.error else None,
        "warnings": answer.warnings,
    }
    return carry(record, item.extra)


def error_record(item: InputItem, error_type: str, message: str) -> dict[str, Any]:
    record = {
        "id": item.id,
        "question": item.question,
        "strategy": None,
        "answer": None,
        "points": None,
        "usage": {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
            "estimated": False,
        },
        "latency_s": 0.0,
        "attempts": 0,
        "error": {"type": error_type, "message": message},
        "warnings": [],
    }
    return carry(record, item.extra)


def _records(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | None]]:
    with path.open("rb") as fh:
        offset = 0
        for raw in fh:
            line = raw.decode("utf-8", "replace")
            record: dict[str, Any] | None = None
            if raw.endswith(b"\n"):
                try:
                    data = json.loads(line)
                    record = data if isinstance(data, dict) else None
                except ValueError:
                    record = None
            yield offset, line, record
            offset += len(raw)


def repair_and_load(path: Path) -> tuple[set[str], int, int]:
    """Prepare an existing output for ``--resume``.

    Keeps the records that were answered without error, drops failed records (they are
    redone, and an id is never written twice) and a half-written last line left by a
    crash. The file is rewritten atomically. Returns (done ids, kept, dropped).
    """
    done: set[str] = set()
    kept: list[str] = []
    dropped = 0
    for _, line, record in _records(path):
        if record is None or "id" not in record:
            dropped += 1
            continue
        key = str(record["id"])
        if record.get("error") is None and key not in done:
            done.add(key)
            kept.append(line if line.endswith("\n") else line + "\n")
        else:
            dropped += 1
    temporary = path.with_name(path.name + ".resume-tmp")
    with temporary.open("w", encoding="utf-8") as fh:
        fh.writelines(kept)
        fh.flush()
        os.fsync(fh.fileno())
    temporary.replace(path)
    return done, len(kept), dropped


class OutputWriter:
    """Writes one whole line per record and flushes it, so a crash loses no finished item."""

    def __init__(self, target: str, *, append: bool) -> None:
        self.target = target
        self._fh: IO[str]
        if target == "-":
            self._fh = sys.stdout
            self._owned = False
        else:
            self._fh = open(target, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
            self._owned = True
        self.written = 0

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        self.written += 1

    def close(self) -> None:
        if self._owned:
            self._fh.close()
