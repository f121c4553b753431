"""Batch input and output: JSONL or text in, one JSONL record per item out.

Input: JSONL objects with ``question`` (or ``prompt``) and an optional ``id``, or a
``.txt`` file with one question a line; ``-`` reads stdin. Every non-blank line gives
exactly one item, whatever its bytes: a line that cannot be used (not UTF-8, not JSON,
no question) becomes an error record naming its line; it is never dropped.

Ids are strings throughout: the input's ``id`` as text (``7`` becomes ``"7"``), or the
line number where the line gives none (``.txt`` input, a line without ``id``, a line
that cannot be read). The same string names the record for ``--resume``.

Output: one line per item, written whole and flushed as the item finishes. Fields the
input carried that clash with an output field are kept under ``input_<name>``.
``calls`` counts the model calls an answer made (a SoT answer: the skeleton and one per
point), ``retries`` the extra attempts those calls needed after a failure.
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
    "ReaderGone",
    "answer_record",
    "call_counts",
    "carry",
    "error_record",
    "item_from_object",
    "json_line",
    "read_items",
    "repair_and_load",
]

OUTPUT_FIELDS = (
    "id", "question", "strategy", "answer", "points", "usage",
    "latency_s", "calls", "retries", "error", "warnings",
)  # fmt: skip


@dataclass(slots=True)
class InputItem:
    """One line of input: a question to answer, or a problem to report."""

    # Read from JSONL, always text; a Ray Data row keeps its column's value and type
    # (None where the row has no id), so that answers join back on it.
    id: str | int | float | None
    line: int
    question: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def key(self) -> str:
        return self.id if isinstance(self.id, str) else json.dumps(self.id)


def _source_name(path: str) -> str:
    return "stdin" if path == "-" else path


def _read_bytes(path: str) -> bytes:
    if path == "-":
        # Bytes, not text: a line that is not UTF-8 must become its own error record,
        # not stop the decoding of everything after it.
        return sys.stdin.buffer.read()
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"input file {path!r} does not exist")
    return file.read_bytes()


def _is_jsonl(path: str, lines: list[bytes]) -> bool:
    if path != "-":
        return Path(path).suffix.lower() != ".txt"
    # Stdin has no suffix: JSONL if its first non-blank line opens an object.
    first = next((line.strip() for line in lines if line.strip()), b"")
    return first.startswith(b"{")


def _decode(raw: bytes, number: int) -> tuple[str, str | None]:
    """A line's text and, when it is not UTF-8, the problem to report."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        problem = (
            f"line {number}: not valid UTF-8 (byte 0x{bad} at byte {exc.start + 1} of the "
            "line); save the file as UTF-8 and run again (with --resume to keep the rest)"
        )
        return raw.decode("utf-8", "replace"), problem


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
            f"{_source_name(path)} holds one JSON array; sotflow reads JSONL, "
            "one object a line. Convert it, e.g. with: jq -c '.[]' FILE > FILE.jsonl"
        )


def _id_text(value: Any) -> str | None:
    """The input's id as the record's id, or None if it cannot name a record."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)  # 7 -> "7", 1.5 -> "1.5": as the input wrote it
    return None


def _json_item(text: str, number: int, problem: str | None) -> InputItem:
    try:
        data = json.loads(text)
    except ValueError as exc:
        return InputItem(
            str(number), number, None, problem=problem or f"line {number}: not valid JSON ({exc})"
        )
    return item_from_object(data, number, problem=problem)


def item_from_object(
    data: Any, number: int, where: str | None = None, problem: str | None = None
) -> InputItem:
    """One parsed input object (a JSONL line, a Ray Data row) as an item to answer, or
    as a problem to report; ``where`` names it in problems (default ``line <number>``);
    ``problem``, one found before parsing (bytes that are not UTF-8), wins over any."""
    where = where or f"line {number}"
    line_id = str(number)
    if not isinstance(data, dict):
        return InputItem(
            line_id, number, None, problem=problem or f"{where}: expected a JSON object"
        )
    data = dict(data)
    if "id" in data:
        item_id = _id_text(data.pop("id"))
        if item_id is None:
            return InputItem(
                line_id,
                number,
                None,
                data,
                problem or f"{where}: 'id' must be a string or a number",
            )
    else:
        item_id = line_id
    if problem is not None:
        # Still named by its own id where that could be read, so that the record of
        # the fixed line replaces this one on --resume. Its question is unreadable.
        data.pop("question", None)
        data.pop("prompt", None)
        return InputItem(item_id, number, None, data, problem)
    question = data.pop("question", None)
    if question is None:
        question = data.pop("prompt", None)
    if not isinstance(question, str) or not question.strip():
        what = (
            "has no 'question' (or 'prompt')"
            if question is None
            else "has an empty or non-text question"
        )
        return InputItem(item_id, number, None, data, f"{where}: {what}")
    return InputItem(item_id, number, question, data)


def read_items(path: str) -> list[InputItem]:
    """Every non-blank line of ``path`` (or stdin for ``-``) as one item, in order.

    Raises ``ConfigurationError`` for input with no line to answer at all: an empty
    file is a mistake to report, not a batch that succeeded.
    """
    data = _read_bytes(path).removeprefix(b"\xef\xbb\xbf")  # a BOM, as Windows tools write
    # bytes.splitlines breaks at \n, \r\n and \r only; str.splitlines would also break
    # inside a JSON string at U+2028 or a form feed.
    raw_lines = data.splitlines()
    jsonl = _is_jsonl(path, raw_lines)
    decoded = [_decode(raw, number) for number, raw in enumerate(raw_lines, start=1)]
    if jsonl or path == "-":  # stdin has no suffix to say it is not JSON
        _refuse_json_array([text for text, _ in decoded], path)
    items: list[InputItem] = []
    for number, (text, problem) in enumerate(decoded, start=1):
        if not text.strip():
            continue
        if jsonl:
            items.append(_json_item(text, number, problem))
        elif problem is not None:
            items.append(InputItem(str(number), number, None, problem=problem))
        else:
            items.append(InputItem(str(number), number, text.strip()))
    if not items:
        raise ConfigurationError(
            f"{_source_name(path)} has no questions (it is empty or only blank lines); give "
            'JSONL with one {"question": "..."} object a line, or a .txt file with one '
            "question a line"
        )
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


def call_counts(answer: Answer) -> tuple[int, int]:
    """(calls, retries): the model calls the answer sent, and the extra attempts they
    needed after failures. A call that was never sent (cancelled first) is neither."""
    if answer.trace is None:
        return 0, 0
    attempts = [node.attempts for node in answer.trace.calls if node.attempts > 0]
    return len(attempts), sum(a - 1 for a in attempts)


def answer_record(item: InputItem, answer: Answer) -> dict[str, Any]:
    points = None
    calls, retries = call_counts(answer)
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
        "calls": calls,
        "retries": retries,
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
        "calls": 0,
        "retries": 0,
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


# Characters that JSON leaves raw inside strings but that str.splitlines (and
# JavaScript) take for line breaks: escaped, so that a record is one line to any reader.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def json_line(record: dict[str, Any]) -> str:
    """One record as one JSONL line (text kept readable: non-ASCII is not escaped)."""
    return json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS) + "\n"


class ReaderGone(BrokenPipeError):
    """Whoever read the records from stdout went away (``sotflow batch ... | head``)."""


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
        self.reader_gone = False

    def write(self, record: dict[str, Any]) -> None:
        """Write one record; raises ``ReaderGone`` once stdout's reader has closed it
        (and every later call does nothing: there is nobody left to write to)."""
        if self.reader_gone:
            return
        try:
            self._fh.write(json_line(record))
            self._fh.flush()
        except BrokenPipeError as exc:
            if self._owned:
                raise
            self.reader_gone = True
            silence_stdout()
            raise ReaderGone(str(exc)) from exc
        self.written += 1

    def close(self) -> None:
        if self._owned:
            self._fh.close()


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away, so that the flush at exit
    does not end in Python's "Exception ignored ... BrokenPipeError" notice."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded, or replaced by a caller)
        pass
