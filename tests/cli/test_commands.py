"""``sotflow ask``, ``route``, ``bench``, ``--help``, configuration errors, the entry point."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

from sotflow.testing import Fault, LoopbackServer

from .conftest import DIRECT_QUESTIONS, SOT_QUESTIONS, Runner, clean_env, write_jsonl
from .test_batch import check_answered


def test_console_script_entry_point_is_installed() -> None:
    (entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts")
                if e.name == "sotflow"]  # fmt: skip
    assert entry.value == "sotflow.cli:main"
    from sotflow.cli import main

    assert entry.load() is main


def test_ask_plain_json_and_stream_agree(cli: Runner, loopback: LoopbackServer) -> None:
    question = SOT_QUESTIONS[3]
    record_run = cli("ask", question, "--prefill", "--json")
    assert record_run.code == 0, record_run.stderr
    record = json.loads(record_run.stdout)
    check_answered(record)
    assert record["strategy"] == "sot"  # auto routes this list question to SoT
    assert record["question"] == question

    plain = cli("ask", question, "--prefill")
    assert plain.code == 0, plain.stderr
    assert plain.stdout == record["answer"] + "\n"

    streamed = cli("ask", question, "--prefill", "--stream")
    assert streamed.code == 0, streamed.stderr
    assert streamed.stdout == record["answer"] + "\n"
    assert loopback.stats()["streams"] == len(record["points"]) + 1

    direct = cli("ask", DIRECT_QUESTIONS[1], "--prefill", "--stream", "--strategy", "direct")
    assert direct.code == 0, direct.stderr
    assert len(direct.stdout.split()) >= 300  # the responder's direct answers: 300-450 words


def test_ask_stream_survives_a_broken_stream(cli: Runner, loopback: LoopbackServer) -> None:
    question = DIRECT_QUESTIONS[1]
    whole = cli("ask", question, "--prefill", "--strategy", "direct")
    loopback.inject(Fault(kind="drop", after_tokens=5))
    streamed = cli("ask", question, "--prefill", "--strategy", "direct", "--stream")
    assert streamed.code == 0, streamed.stderr
    assert "the text restarts" in streamed.stderr
    # The first five words were shown, withdrawn by a notice, then the whole answer.
    assert streamed.stdout.endswith(whole.stdout)


def test_ask_failure_exits_1_with_the_error(cli: Runner, loopback: LoopbackServer) -> None:
    loopback.inject(Fault(kind="status", status=400))
    result = cli("ask", DIRECT_QUESTIONS[1], "--prefill", "--strategy", "direct")
    assert result.code == 1
    assert "BadRequestError" in result.stderr and "400" in result.stderr
    assert result.stdout == ""


def test_route_a_question_and_a_file(cli: Runner, loopback: LoopbackServer, tmp_path: Path) -> None:
    result = cli("route", SOT_QUESTIONS[0])
    assert result.code == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["strategy"] == "sot" and decision["router"] == "rules"
    assert 0 < decision["confidence"] <= 1 and decision["reason"]
    assert decision["error"] is None

    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"id": "x", "question": DIRECT_QUESTIONS[1], "label": "direct"})
        + "\nnot json\n"
        + json.dumps({"id": "y", "question": SOT_QUESTIONS[1], "strategy": "gold", "reason": "r"})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "routes.jsonl"
    result = cli("route", str(source), "-o", str(out))
    assert result.code == 1  # the bad line is reported, the rest decided
    assert result.stdout == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["x", "2", "y"]
    assert [r.get("strategy") for r in rows] == ["direct", None, "sot"]
    assert rows[0]["label"] == "direct"  # carried
    # Input fields named like the router's own are kept beside them, as batch does.
    assert rows[2]["input_strategy"] == "gold" and rows[2]["input_reason"] == "r"
    assert "line 2" in rows[1]["error"]["message"]
    assert loopback.stats()["requests"] == 0  # the rules router asks no model

    # The LLM router asks the model (the responder answers "A": SoT), once a question.
    result = cli("route", SOT_QUESTIONS[0], "--router", "llm")
    assert result.code == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["strategy"] == "sot" and decision["router"] == "llm"
    assert loopback.stats()["requests"] == 1
    assert result.stderr == ""  # no "Unclosed client session" at exit

    # A mistyped file name is an error, not a question about a file name.
    result = cli("route", str(tmp_path / "questoins.jsonl"))
    assert result.code == 2
    assert "questoins.jsonl" in result.stderr and "does not exist" in result.stderr


def test_bench_prints_a_speedup_table(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    # Paced so that a 300-450 token direct answer takes visibly longer than SoT.
    loopback.configure(ttft=0.02, tps=1000.0)
    result = cli("bench", "-n", "2", "--prefill")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    # First what is known of the server (assumed here: SOTFLOW_SERVER_PROFILE=assume).
    assert lines[0].startswith("server: concurrency unknown") and "(assumed)" in lines[0]
    for line in lines[1:3]:
        assert "direct" in line and " sot " in line and "points)" in line
    assert lines[3].startswith("median speed-up of sot over a direct answer: ")
    assert float(lines[3].rsplit(" ", 1)[1].rstrip("x")) > 1.0

    # The user's own questions, from a file: the first -n of them.
    mine = tmp_path / "mine.txt"
    mine.write_text("\n".join(SOT_QUESTIONS[1:]) + "\n", encoding="utf-8")
    loopback.reset()
    result = cli("bench", str(mine), "-n", "2", "--prefill", "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["server_profile"]["source"] == "assumed"
    assert [row["question"] for row in data["rows"]] == list(SOT_QUESTIONS[1:3])
    for row in data["rows"]:
        assert row["error"] is None and row["strategy"] == "sot" and row["points"] >= 2
        assert row["speedup"] == pytest.approx(row["direct_s"] / row["sot_s"])
    # One untimed warm-up call, then per question one direct call and SoT's calls.
    calls = sum(1 + row["points"] + 1 for row in data["rows"])
    assert loopback.stats()["requests"] == 1 + calls


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (None, ["ask", "batch", "route", "bench"]),
        ("ask", ["--stream", "--json", "--strategy", "--backend", "--model", "--base-url"]),
        ("batch", ["--output", "--strategy", "--concurrency", "--rpm", "--tpm", "--max-retries",
                   "--timeout", "--max-tokens", "--temperature", "--resume", "--ordered",
                   "--quiet", "--overwrite", "--prices", "--backend", "--model", "--base-url"]),
        ("route", ["--output", "--router", "--backend", "--model", "--base-url"]),
        ("bench", ["-n", "--json", "--strategy", "--backend", "--model", "--base-url"]),
    ],
)  # fmt: skip
def test_help(cli: Runner, command: str | None, options: list[str]) -> None:
    result = cli(*([command] if command else []), "--help")
    assert result.code == 0
    assert result.stdout.startswith("usage: sotflow")
    for option in options:
        assert option in result.stdout


HIDE = """
import sys

class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, _Hide())
"""


def env_without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """A CLI environment in which ``modules`` cannot be imported, as if not installed."""
    hide = tmp_path / "hide"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(HIDE.format(hidden=modules))
    env = clean_env()
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}{os.pathsep}{hide}"
    return env


def test_no_backend_configured_says_how_to_configure_one(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    # torch and llama.cpp hidden, as on a machine with only the core installed: no API,
    # no runtime for a local model.
    env = env_without(tmp_path, "torch", "llama_cpp")
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": SOT_QUESTIONS[0]}])
    for args in (["ask", "hello"], ["batch", str(source), "-o", str(tmp_path / "o.jsonl")]):
        result = cli(*args, env_override=env)
        assert result.code == 2, result.stderr
        assert "no model is configured" in result.stderr
        for hint in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SOTFLOW_MODEL", "--backend local"):
            assert hint in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_with_no_api_configured_the_local_model_answers(cli: Runner, tmp_path: Path) -> None:
    # Without torch: the bundled model runs on llama.cpp, and that is enough to pick it.
    result = cli(
        "ask", "Name a colour.", "--strategy", "direct", "--max-tokens", "8", "--json",
        env_override=env_without(tmp_path, "torch"),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "using the local model smollm2" in result.stderr
    # Loading says what it does and how long it took, in sotflow's words only: the
    # libraries' own bars ("Loading weights", GGUF de-quantizing) and logs stay hidden.
    lines = result.stderr.splitlines()
    assert "sotflow: loading the local model smollm2 ..." in lines
    loaded = [line for line in lines if line.startswith("sotflow: loaded the local model")]
    assert len(loaded) == 1 and re.search(r" in \d+\.\d s", loaded[0]), result.stderr
    assert "decoding: " in loaded[0]
    assert all(line.startswith("sotflow: ") for line in lines), result.stderr
    record = json.loads(result.stdout)
    assert record["error"] is None and record["answer"]
    assert 0 < record["usage"]["completion_tokens"] <= 8


def test_openai_backend_without_a_key_says_how_to_configure_one(
    cli: Runner, loopback: LoopbackServer
) -> None:
    result = cli("ask", "hello", "--backend", "openai", env_override=clean_env())
    assert result.code == 2, result.stderr
    assert "OPENAI_API_KEY" in result.stderr and "OPENAI_BASE_URL" in result.stderr
    assert "--base-url" in result.stderr
    assert "api_key=" not in result.stderr  # the library's wording, not the CLI's
    assert "Traceback" not in result.stderr

    # --base-url alone is a configured API (a local server needs no key).
    ok = cli(
        "ask", "hello", "--backend", "openai", "--base-url", loopback.base_url, "--prefill",
        "--strategy", "direct", env_override=clean_env(),
    )  # fmt: skip
    assert ok.code == 0, ok.stderr
    assert ok.stdout.strip()


def test_bench_measures_the_server_once_and_shows_it(
    cli: Runner, env: dict[str, str], loopback: LoopbackServer, tmp_path: Path
) -> None:
    # A server that runs one call at a time, measured by the probe (7 short calls) and
    # kept in the cache, so the next command does not measure it again.
    loopback.configure(ttft=0.05, tps=500.0, serial=True)
    try:
        probing = {**env, "SOTFLOW_SERVER_PROFILE": "probe", "SOTFLOW_CACHE_DIR": str(tmp_path)}
        result = cli("bench", "-n", "1", "--json", env_override=probing)
        assert result.code == 0, result.stderr
        profile = json.loads(result.stdout)["server_profile"]
        assert profile["source"] == "probed" and profile["parallel_gain"] < 1.5, profile
        assert (tmp_path / "server_profiles.json").is_file()
        loopback.reset()
        result = cli("bench", "-n", "1", env_override=probing)
        assert result.code == 0, result.stderr
        assert "server: runs one call at a time" in result.stdout.splitlines()[0]
        data_calls = loopback.stats()["requests"]
        probe_again = cli("bench", "-n", "1", "--json", env_override=probing)
        assert json.loads(probe_again.stdout)["server_profile"] == profile  # from the cache
        assert loopback.stats()["requests"] == 2 * data_calls  # no probe calls the 2nd time
    finally:
        loopback.configure(serial=False)
