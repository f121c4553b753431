"""What the CLI prints while it works: status lines off a terminal, a closed pipe, help."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import pytest

from sotflow.testing import Fault, LoopbackServer

from .conftest import CLI, ROOT, SOT_QUESTIONS, Runner, read_records, write_jsonl

STATUS = re.compile(
    r"^sotflow: (\d+)/(\d+) done, (\d+) failed, (\d+) in flight, [\d.]+ questions/s, "
    r"ETA (?:\d+ s|\d+ min \d\d s|\d+ h \d\d min|unknown)$",
    re.M,
)


def test_off_a_terminal_a_status_line_comes_every_few_seconds(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    rows = [{"question": f"Status {i}: what should one check first?"} for i in range(3)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    # The first question is held 2 s by the server, so the batch lasts at least that
    # long; status lines come every 0.1 s meanwhile.
    loopback.inject(Fault(kind="delay", delay_s=2.0, match="Status 0:"))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(source), "-o", str(out), "--prefill", "--strategy", "direct"]
    result = cli(*args, "--status-every", "0.1")
    assert result.code == 0, result.stderr
    lines = STATUS.findall(result.stderr)
    assert len(lines) >= 2, result.stderr
    # While the held question ran: the other two done, it alone in flight.
    assert ("2", "3", "0", "1") in lines
    done = [int(line[0]) for line in lines]
    assert done == sorted(done) and all(line[1] == "3" for line in lines)
    # The lines come before the summary, which still ends the output.
    assert result.stderr.rstrip().splitlines()[-1].startswith("cost: ")
    assert "3 answered, 0 failed" in result.stderr

    loopback.inject(Fault(kind="delay", delay_s=0.5, match="Status 0:"))
    quiet = cli(*args, "--overwrite", "--status-every", "0.1", "--quiet")
    assert quiet.code == 0 and quiet.stderr == ""
    loopback.inject(Fault(kind="delay", delay_s=0.5, match="Status 0:"))
    never = cli(*args, "--overwrite", "--status-every", "0")
    assert never.code == 0 and not STATUS.search(never.stderr)
    assert "3 answered, 0 failed" in never.stderr


def test_a_closed_pipe_ends_the_batch_quietly(
    env: dict[str, str], loopback: LoopbackServer, tmp_path: Path
) -> None:
    # `sotflow batch ... -o - | head -1`. 100 direct answers are ~250 KB of records, more
    # than a pipe holds, so the CLI is still writing when the reader goes away.
    rows = [{"question": f"Piped {i}: what is worth knowing?"} for i in range(100)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    for extra in ([], ["--ordered"]):
        process = subprocess.Popen(
            [*CLI, "batch", str(source), "-o", "-", "--prefill", "--strategy", "direct", *extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        first = json.loads(process.stdout.readline())
        assert first["error"] is None
        process.stdout.close()  # what `head -1` does after its line
        stderr = process.stderr.read().decode()
        code = process.wait(timeout=60)
        assert code == 141, stderr  # 128 + SIGPIPE, as a shell reports `yes | head -1`
        for noise in ("Traceback", "BrokenPipe", "Exception", "answered"):
            assert noise not in stderr, stderr


def test_every_option_of_every_command_says_what_it_does() -> None:
    from sotflow.cli import build_parser
    from sotflow.cli.train_heads import build_parser as train_heads_parser
    from sotflow.routing.train import build_parser as train_router_parser

    def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += parsers(sub)
        return found

    everything = [*parsers(build_parser()), train_heads_parser(), train_router_parser()]
    missing = [
        f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
        for parser in everything
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and not (action.help or "").strip()
        and parser.add_help is not False
    ]
    assert missing == []


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``sotflow COMMAND --help``, in this process (the parser is all it needs), with
    argparse's line wrapping undone."""
    from sotflow.cli import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def option_help(text: str, option: str) -> str:
    """The help of ``option`` (its name and metavar, as the options list shows them; the
    usage line brackets them), up to the next option."""
    start = text.index(f" {option} ")
    following = re.search(r" --?[a-z][\w-]* ", text[start + len(option) + 2 :])
    end = start + len(option) + 2 + following.start() if following else len(text)
    return text[start:end]


LOCAL_COMMANDS = ["ask", "batch", "bench", "serve"]


@pytest.mark.parametrize("command", LOCAL_COMMANDS)
def test_decoding_help_says_how_the_default_is_chosen(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    decoding = option_help(help_of(command, capsys), "--decoding MODE")
    assert "(default)" not in decoding  # no mode is the default for every model
    assert "chosen per model: cerberus where draft heads are bundled" in decoding
    assert "else prompt_lookup" in decoding
    assert "block costs measured on this machine decide" in decoding
    assert "'loaded' line" in decoding  # where to see the mode in use


def test_the_decoding_choices_are_the_decoders_modes() -> None:
    from sotflow.cli.options import DECODING_MODES
    from sotflow.decoding.batched import DECODE_MODES

    # Kept apart so that the CLI's parser needs no numpy; they must not drift.
    assert DECODING_MODES == DECODE_MODES


@pytest.mark.parametrize("command", LOCAL_COMMANDS)
def test_runtime_and_threads_are_options_of_every_local_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(command, capsys)
    runtime = option_help(text, "--runtime {auto,llama.cpp,torch}")
    assert "llama.cpp" in runtime and "torch" in runtime and "(default auto)" in runtime
    threads = option_help(text, "--threads N")
    assert "CPU threads" in threads and "default" in threads


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--threads", "0"], "--threads: expected a positive number, got 0"),
        (["--runtime", "onnx"], "--runtime: invalid choice: 'onnx'"),
        (["--decoding", "fast"], "--decoding: invalid choice: 'fast'"),
    ],
)
@pytest.mark.parametrize("command", ["ask", "serve"])
def test_bad_local_options_are_usage_errors_before_anything_loads(
    command: str, args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from sotflow.cli import main

    head = ["ask", "Name a colour.", "--backend", "local"] if command == "ask" else ["serve"]
    with pytest.raises(SystemExit) as stop:
        main([*head, *args])
    assert stop.value.code == 2
    assert complaint in capsys.readouterr().err


def test_the_runtime_option_reaches_the_local_backend(cli: Runner) -> None:
    # The llama.cpp runtime runs on the CPU only: the backend refuses this pair before it
    # loads anything, which it can only do if --runtime and --device both reached it.
    result = cli("ask", "Name a colour.", "--backend", "local", "--model", "smollm2",
                 "--runtime", "llama.cpp", "--device", "cuda")  # fmt: skip
    assert result.code == 2, result.stderr
    assert "llama.cpp runtime here runs on the CPU" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_loaded_line_names_runtime_threads_and_decoding(cli: Runner) -> None:
    result = cli("ask", "Name a colour.", "--backend", "local", "--model", "smollm2",
                 "--runtime", "llama.cpp", "--threads", "1", "--strategy", "direct",
                 "--max-tokens", "4", timeout=300)  # fmt: skip
    assert result.code == 0, result.stderr
    (loaded,) = [line for line in result.stderr.splitlines() if "loaded" in line]
    assert re.fullmatch(
        r"sotflow: loaded the local model smollm2 in \d+\.\d s "
        r"\(llama\.cpp, 1 threads, \d+ cache cells; decoding: cerberus\)",
        loaded,
    ), loaded


@pytest.mark.slow
def test_verbose_lets_llama_cpp_say_what_it_loads(cli: Runner) -> None:
    # Without --verbose its loader is silent (test_commands checks every stderr line is
    # sotflow's own); with it, its log comes through.
    result = cli("ask", "Hi", "--backend", "local", "--model", "smollm2", "--strategy",
                 "direct", "--max-tokens", "2", "--verbose", timeout=300)  # fmt: skip
    assert result.code == 0, result.stderr
    assert "llama_model_loader: " in result.stderr


def test_bench_help_describes_json(cli: Runner) -> None:
    result = cli("bench", "--help")
    text = " ".join(result.stdout.split())
    assert re.search(r"--json print one JSON object", text), result.stdout


def test_a_batch_says_what_it_is_about_to_do(
    cli: Runner, loopback: LoopbackServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": q} for q in SOT_QUESTIONS[:2]])
    out = tmp_path / "out.jsonl"
    result = cli("batch", str(source), "-o", str(out), "--prefill", "--concurrency", "3")
    assert result.code == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first == (
        f"sotflow: 2 question(s) to answer, 3 at once: --strategy auto, model loopback "
        f"({loopback.base_url})"
    )
    assert len(read_records(out)) == 2


LOADER = """
import os, sys
from sotflow.cli.quiet import loading

with loading("the thing", verbose=sys.argv[1] == "verbose"):
    os.write(2, b"C-LEVEL NOISE\\n")  # as llama.cpp writes, below Python
    print("PYTHON NOISE", file=sys.stderr)
    if sys.argv[2] == "fail":
        raise SystemExit(3)
"""


@pytest.mark.parametrize(
    ("mode", "outcome", "shown"),
    [("quiet", "ok", False), ("verbose", "ok", True), ("quiet", "fail", True)],
)
def test_loading_hides_what_libraries_print_unless_verbose_or_it_failed(
    mode: str, outcome: str, shown: bool
) -> None:
    from .conftest import clean_env

    done = subprocess.run(
        [CLI[0], "-c", LOADER, mode, outcome],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == (3 if outcome == "fail" else 0), done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "sotflow: loading the thing ..."
    assert ("C-LEVEL NOISE" in lines and "PYTHON NOISE" in lines) is shown
    loaded = [line for line in lines if line.startswith("sotflow: loaded the thing in ")]
    assert len(loaded) == (0 if outcome == "fail" else 1)


WARNER = """
import warnings
from sotflow.cli.quiet import hush_third_party

hush_third_party()
# Each warning as if raised in the named module (warnings go by the caller's __name__).
for module, category in [
    ("transformers.modeling_utils", UserWarning),
    ("sotflow.engine", UserWarning),
    ("sotflow.runtimes.llama_cpp.weights", ResourceWarning),
]:
    exec(
        "import warnings; warnings.warn(message, category)",
        {"__name__": module, "message": f"{category.__name__} from {module}", "category": category},
    )
"""


def test_hushing_hides_other_libraries_warnings_and_keeps_pythons_rules_for_ours() -> None:
    from .conftest import clean_env

    done = subprocess.run(
        [CLI[0], "-c", WARNER], cwd=ROOT, env=clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "from transformers" not in done.stderr
    assert "UserWarning from sotflow.engine" in done.stderr
    # Python hides ResourceWarning unless asked (-X dev); hushing must not unhide it.
    assert "ResourceWarning" not in done.stderr, done.stderr
