"""Bad input never stops a run; bad invocations stop it before any model call."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from sotflow.testing import LoopbackServer

from .conftest import CLI, ROOT, SOT_QUESTIONS, Result, Runner, read_records, write_jsonl


def test_bad_lines_become_error_records_naming_the_line(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"id": "ok1", "question": SOT_QUESTIONS[0]}),
        '{"id": "broken", "question": "unterminated',
        "[1, 2, 3]",
        json.dumps({"id": "noq", "category": "advice"}),
        json.dumps({"id": "empty", "question": "   "}),
        json.dumps({"id": {"nested": 1}, "question": SOT_QUESTIONS[1]}),
        json.dumps({"id": "num", "question": 42}),
        "",
        json.dumps({"id": "ok2", "question": SOT_QUESTIONS[2], "answer": "gold"}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct")
    assert result.code == 1, result.stderr
    records = read_records(out)
    assert len(records) == 8  # every non-blank line has its record
    errors = {r["id"]: r["error"] for r in records if r["error"]}
    assert {r["id"] for r in records if not r["error"]} == {"ok1", "ok2"}
    # The line number (as text, like every id) is the id where the line had none to
    # give, and is always named.
    expected = {
        "2": "not valid JSON",
        "3": "expected a JSON object",
        "noq": "has no 'question'",
        "empty": "empty or non-text",
        "6": "'id' must be",
        "num": "empty or non-text",
    }
    line_of = {"2": 2, "3": 3, "noq": 4, "empty": 5, "6": 6, "num": 7}
    assert set(errors) == set(expected)
    for key, text in expected.items():
        assert errors[key]["type"] == "InputError"
        assert f"line {line_of[key]}:" in errors[key]["message"]
        assert text in errors[key]["message"]
    # Carried fields survive on an error record too.
    noq = next(r for r in records if r["id"] == "noq")
    assert noq["category"] == "advice" and noq["answer"] is None
    assert (noq["calls"], noq["retries"]) == (0, 0)
    assert "2 answered, 6 failed" in result.stderr
    assert loopback.stats()["requests"] == 2


def test_duplicate_ids_are_refused_before_any_call(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = [
        {"id": "a", "question": SOT_QUESTIONS[0]},
        {"id": "b", "question": SOT_QUESTIONS[1]},
        {"id": "a", "question": SOT_QUESTIONS[2]},
        {"id": 4, "question": SOT_QUESTIONS[3]},
        {"question": "no id: line 5"},
        {"id": "5", "question": "the string '5' names the same record as line 5"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill")
    assert result.code == 2
    assert "duplicate ids" in result.stderr
    named = re.search(r"duplicate ids in .+?: (.+?)\. Ids", result.stderr)
    assert named is not None, result.stderr
    assert named.group(1) == "a, 5"
    assert loopback.stats()["requests"] == 0
    assert not out.exists()


def test_missing_input_file_is_a_usage_error(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.jsonl"
    result = cli("batch", str(missing), "-o", str(tmp_path / "out.jsonl"))
    assert result.code == 2
    assert "does not exist" in result.stderr and "nope.jsonl" in result.stderr
    assert "Traceback" not in result.stderr
    assert loopback.stats()["requests"] == 0


def test_existing_output_needs_resume_or_overwrite(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": SOT_QUESTIONS[0]}])
    out = tmp_path / "out.jsonl"
    out.write_text('{"precious": true}\n', encoding="utf-8")
    result = cli("batch", str(source), "-o", str(out), "--prefill")
    assert result.code == 2
    assert "--resume" in result.stderr and "--overwrite" in result.stderr
    assert out.read_text() == '{"precious": true}\n'
    assert loopback.stats()["requests"] == 0

    result = cli("batch", str(source), "-o", str(out), "--prefill", "--overwrite", "--quiet")
    assert result.code == 0, result.stderr
    (record,) = read_records(out)
    assert record["id"] == "1" and record["error"] is None


def test_a_json_array_file_is_refused_with_how_to_convert_it(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = [{"id": "a", "question": SOT_QUESTIONS[0]}, {"id": "b", "question": SOT_QUESTIONS[1]}]
    source = tmp_path / "questions.json"
    source.write_text(json.dumps(rows, indent=2), encoding="utf-8")  # one array, many lines
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out))
    assert result.code == 2, result.stderr
    assert "holds one JSON array" in result.stderr and "jq -c '.[]'" in result.stderr
    assert not out.exists()
    result = cli("route", "-", stdin=json.dumps(rows))
    assert result.code == 2 and "stdin holds one JSON array" in result.stderr
    # A JSONL file whose first line happens to be an array is still read line by line.
    source.write_text("[1, 2]\n" + json.dumps(rows[0]) + "\n", encoding="utf-8")
    result = cli("route", str(source))
    assert result.code == 1 and len(result.stdout.splitlines()) == 2
    assert loopback.stats()["requests"] == 0


def test_the_input_file_is_never_the_output(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "question": SOT_QUESTIONS[0]}])
    before = source.read_text(encoding="utf-8")
    for flag in ("--resume", "--overwrite"):
        result = cli("batch", str(source), "-o", str(tmp_path / "." / "in.jsonl"), flag)
        assert result.code == 2, (flag, result.stderr)
        assert "is the input file" in result.stderr
    assert source.read_text(encoding="utf-8") == before
    assert loopback.stats()["requests"] == 0


def test_usage_errors_exit_2(cli: Runner, loopback: LoopbackServer, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": SOT_QUESTIONS[0]}])
    out = tmp_path / "out.jsonl"
    for bad in (
        ["--strategy", "nonsense"],
        ["--concurrency", "0"],
        ["--timeout", "-1"],
        ["--unknown-flag"],
        ["--base-url", "localhost:8000/v1"],  # no scheme: refused before any retry
        ["--temperature", "-1"],
    ):
        result = cli("batch", str(source), "-o", str(out), *bad)
        assert result.code == 2, (bad, result.stderr)
        assert "Traceback" not in result.stderr
    result = cli("batch", str(source))  # no -o
    assert result.code == 2 and "-o/--output" in result.stderr
    # Keep the output or replace it: both at once is refused, not silently one of them.
    out.write_text('{"id": 1, "error": null}\n', encoding="utf-8")
    result = cli("batch", str(source), "-o", str(out), "--resume", "--overwrite")
    assert result.code == 2 and "not allowed with argument --resume" in result.stderr
    assert out.read_text(encoding="utf-8") == '{"id": 1, "error": null}\n'
    out.unlink()
    for command in ("ask", "route"):
        result = cli(command, "  ")
        assert result.code == 2, (command, result.stderr)
        assert "the question is empty" in result.stderr
    assert cli().code == 2  # no command at all
    assert loopback.stats()["requests"] == 0
    assert not out.exists()


def run_bytes(env: dict[str, str], args: list[str], stdin: bytes | None = None) -> Result:
    """The CLI with raw bytes on stdin (the runner's text mode would re-encode them)."""
    done = subprocess.run(
        [*CLI, *args], cwd=ROOT, env=env, input=stdin, capture_output=True, timeout=60
    )
    return Result(
        done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8", "replace")
    )


NOT_UTF8 = (
    json.dumps({"id": "a", "question": SOT_QUESTIONS[0]}).encode() + b"\n"
    + b'{"id": "b", "question": "caf\xe9 au lait: how is it made?", "topic": "food"}\n'
    + b"\xff\xfe not even JSON\n"
    + json.dumps({"id": "c", "question": SOT_QUESTIONS[1]}).encode() + b"\n"
)  # fmt: skip


def check_not_utf8_records(records: list[dict]) -> None:
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == {"a", "b", "3", "c"}  # one record a line, the good ones answered
    assert by_id["a"]["error"] is None and by_id["c"]["error"] is None
    for key, line in (("b", 2), ("3", 3)):
        error = by_id[key]["error"]
        assert error["type"] == "InputError"
        assert f"line {line}: not valid UTF-8" in error["message"]
    assert "0xe9" in by_id["b"]["error"]["message"]
    assert by_id["b"]["topic"] == "food"  # what could be read of the line is kept


def test_a_line_that_is_not_utf8_is_an_error_record_in_a_file_and_on_stdin(
    env: dict[str, str], loopback: LoopbackServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(NOT_UTF8)
    out = tmp_path / "out.jsonl"
    result = run_bytes(env, ["batch", str(source), "-o", str(out), "--prefill", "--quiet"])
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    check_not_utf8_records(read_records(out))

    result = run_bytes(env, ["batch", "-", "-o", "-", "--prefill", "--quiet"], stdin=NOT_UTF8)
    assert result.code == 1, result.stderr
    check_not_utf8_records([json.loads(line) for line in result.stdout.splitlines()])

    # Plain text too: the bad line is named, the others are answered.
    text = tmp_path / "in.txt"
    text.write_bytes(SOT_QUESTIONS[2].encode() + b"\ncaf\xe9?\n" + SOT_QUESTIONS[3].encode())
    result = run_bytes(env, ["batch", str(text), "-o", str(out), "--overwrite", "--quiet"])
    assert result.code == 1, result.stderr
    by_id = {r["id"]: r for r in read_records(out)}
    assert [by_id[k]["error"] is None for k in ("1", "2", "3")] == [True, False, True]
    assert "line 2: not valid UTF-8" in by_id["2"]["error"]["message"]


def test_a_line_break_inside_a_json_string_is_not_a_line_break(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    # U+2028 and a form feed are line breaks to str.splitlines, not to JSONL.
    rows = [{"id": "x", "question": SOT_QUESTIONS[0], "note": "a\u2028b\x0cc"}]
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--quiet")
    assert result.code == 0, result.stderr
    (record,) = read_records(out)
    assert record["note"] == "a\u2028b\x0cc"


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n"), ("empty.txt", ""), ("-", "")],
)
def test_an_input_without_questions_is_a_usage_error(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path, name: str, content: str
) -> None:
    out = tmp_path / "out.jsonl"
    if name == "-":
        result = cli("batch", "-", "-o", str(out), stdin=content)
        named = "stdin"
    else:
        source = tmp_path / name
        source.write_text(content, encoding="utf-8")
        result = cli("batch", str(source), "-o", str(out))
        named = name
    assert result.code == 2, result.stderr
    assert f"{named}" in result.stderr and "has no questions" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert loopback.stats()["requests"] == 0
