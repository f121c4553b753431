"""The ``sotflow`` command: ask, batch, route, bench, serve, train-router, train-heads.

Exit codes: 0 all answered; 1 some items failed (all recorded); 2 usage or
configuration error (a dead endpoint included); 130 interrupted (what finished is
written; --resume continues); 141 the reader of stdout went away (``| head``), as for
any Unix tool stopped by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import anyio

from ..engine import Engine
from ..errors import BackendError, ConfigurationError
from ..events import AnswerDelta, AnswerReset, RunFinished
from ..serve import add_arguments as serve_arguments
from ..strategies.registry import make_strategy
from ..types import Decision
from .batch import answer_with, run_batch
from .options import (
    add_backend_options,
    add_run_options,
    make_backend,
    make_router,
    non_negative_float,
    positive_int,
)
from .quiet import hush_third_party, show_third_party
from .records import (
    InputItem,
    OutputWriter,
    answer_record,
    carry,
    duplicate_ids,
    read_items,
    repair_and_load,
    silence_stdout,
)
from .report import BatchStats, load_prices, progress_for

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_READER_GONE = 128 + 13  # what a shell reports for a tool that SIGPIPE stopped


def _strategy(args: argparse.Namespace, backend: Any) -> Any:
    router = make_router(args, backend) if args.strategy == "auto" else None
    return make_strategy(
        args.strategy, max_tokens=args.max_tokens, temperature=args.temperature, router=router
    )


def _engine(args: argparse.Namespace, backend: Any) -> Engine:
    return Engine(backend, max_retries=args.max_retries, timeout=args.timeout)


# -- ask -------------------------------------------------------------------------------


def _refuse_empty(question: str) -> None:
    # A usage error (exit 2), found before a backend (perhaps a local model) is loaded.
    if not question.strip():
        raise ConfigurationError("the question is empty; give the model something to answer")


def cmd_ask(args: argparse.Namespace) -> int:
    _refuse_empty(args.question)
    backend = make_backend(args)
    strategy = _strategy(args, backend)
    item = InputItem("1", 1, args.question)

    async def run() -> Any:
        async with _engine(args, backend) as engine:
            if not args.stream:
                return await engine.run(strategy, args.question, return_errors=True)
            answer = None
            async for event in engine.stream(strategy, args.question):
                if isinstance(event, AnswerDelta) and not args.json:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, AnswerReset) and not args.json:
                    sys.stdout.write("\n")
                    print("[a stream broke and was retried; the text restarts]", file=sys.stderr)
                elif isinstance(event, RunFinished):
                    answer = event.answer
            if not args.json:
                sys.stdout.write("\n")
            return answer

    answer = anyio.run(run)
    if args.json:
        print(json.dumps(answer_record(item, answer), ensure_ascii=False, indent=2))
    elif not args.stream and answer.ok:
        print(answer.text)
    if not args.json:
        for warning in answer.warnings:
            print(f"sotflow: warning: {warning}", file=sys.stderr)
    if not answer.ok:
        print(f"sotflow: {answer.error.type}: {answer.error.message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# -- batch -----------------------------------------------------------------------------


def _resume_command(args: argparse.Namespace) -> str:
    # The arguments main() parsed, not sys.argv: main(argv) may be called from Python.
    argv = [a for a in args.argv if a != "--overwrite"]
    if "--resume" not in argv:
        argv.append("--resume")
    return "sotflow " + " ".join(shlex.quote(a) for a in argv)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # the output does not exist yet
        return False


def cmd_batch(args: argparse.Namespace) -> int:
    items = read_items(args.input)
    duplicates = duplicate_ids(items)
    if duplicates:
        shown = ", ".join(duplicates[:20]) + (" ..." if len(duplicates) > 20 else "")
        raise ConfigurationError(
            f"duplicate ids in {args.input}: {shown}. Ids name the output records, so each "
            "must be unique; fix them or drop the 'id' fields to number lines instead."
        )
    if args.ray_workers is not None and args.ray is None:
        raise ConfigurationError("--ray-workers needs --ray (the workers are Ray's)")
    output = Path(args.output) if args.output != "-" else None
    if args.resume and output is None:
        raise ConfigurationError("--resume needs an output file, not stdout")
    if output is not None and args.input != "-" and _same_file(Path(args.input), output):
        # --overwrite would replace the questions with answers, --resume would take the
        # input lines for answered records and append to them.
        raise ConfigurationError(
            f"{args.output} is the input file; write the answers to another file (-o)"
        )
    done: set[str] = set()
    if output is not None and output.exists() and output.stat().st_size > 0:
        if args.resume:
            done, kept, dropped = repair_and_load(output)
            if not args.quiet:
                print(
                    f"sotflow: resuming {output}: {kept} answered kept, {dropped} failed or "
                    "broken records to redo",
                    file=sys.stderr,
                )
        elif not args.overwrite:
            raise ConfigurationError(
                f"{output} already exists; continue it with --resume, or replace it with "
                "--overwrite"
            )
    todo = [item for item in items if item.key not in done]
    prices = load_prices(args.prices)
    # Who answers: this process, or Ray workers (started before the output is touched,
    # so a cluster or workers that cannot start leave it as it was).
    cluster = None
    backend: Any = None
    if args.ray is not None:
        from .ray_batch import RayAnswering

        cluster = RayAnswering(args)
        model, local, where = cluster.model, cluster.local, "a Ray cluster"
        base_url = None  # the workers' endpoint: published prices are not assumed
    else:
        backend = make_backend(args)
        strategy = _strategy(args, backend)
        model, local = backend.model, backend.name == "local"
        base_url = getattr(backend, "base_url", None)
        where = base_url or "this machine"
    if args.price_in is not None or args.price_out is not None:
        if args.price_in is None or args.price_out is None:
            raise ConfigurationError(
                "give both --price-in and --price-out (USD per million prompt and "
                "completion tokens)"
            )
        prices[model] = (args.price_in, args.price_out)
    if not args.quiet:
        print(
            f"sotflow: {len(todo)} question(s) to answer, {args.concurrency} at once: "
            f"--strategy {args.strategy}, model {model} ({where})",
            file=sys.stderr,
            flush=True,
        )
    # Counted from here: the time to load a model is not the batch's rate.
    stats = BatchStats(total=len(items), skipped=len(items) - len(todo))
    try:
        writer = OutputWriter(args.output, append=bool(args.resume))
        try:
            with progress_for(stats, quiet=args.quiet, every_s=args.status_every) as progress:

                async def run() -> Any:
                    async def batch(answer: Any) -> Any:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(progress.run)
                            outcome = await run_batch(
                                todo,
                                answer=answer,
                                writer=writer,
                                stats=stats,
                                concurrency=args.concurrency,
                                ordered=args.ordered,
                                on_progress=progress.update,
                                grace_s=args.grace,
                            )
                            tg.cancel_scope.cancel()
                            return outcome

                    if cluster is not None:
                        async with cluster as answer:
                            return await batch(answer)
                    async with _engine(args, backend) as engine:
                        return await batch(answer_with(engine, strategy))

                outcome = anyio.run(run)
        finally:
            writer.close()
    finally:
        if cluster is not None:
            cluster.close()
    if outcome.reader_gone:
        # `sotflow batch ... -o - | head`: the reader has what it wanted. Like any Unix
        # tool, stop without a word (what the reader never took cannot be resumed).
        return EXIT_READER_GONE
    if not args.quiet:
        print(stats.summary(model, prices, local=local, base_url=base_url), file=sys.stderr)
        if cluster is not None:
            print(cluster.report(), file=sys.stderr)
    if outcome.fatal or outcome.interrupted:
        if outcome.fatal:
            print(f"sotflow: stopped early: {outcome.fatal}", file=sys.stderr)
            if outcome.fatal_type == "EndpointUnreachableError":
                print(f"sotflow: {_unreachable_hint(args, backend)}", file=sys.stderr)
        if outcome.unfinished and output is None:
            # Records on stdout are the caller's to keep; --resume needs a file.
            print(
                f"sotflow: {outcome.unfinished} item(s) not answered yet; the output went to "
                "stdout, so there is nothing to resume: write to a file (-o FILE) to be able "
                "to continue with --resume",
                file=sys.stderr,
            )
        elif outcome.unfinished:
            print(
                f"sotflow: {outcome.unfinished} item(s) not answered yet; continue with:\n"
                f"  {_resume_command(args)}",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED if outcome.interrupted else EXIT_USAGE
    return EXIT_FAILED if stats.failed else EXIT_OK


# -- route -----------------------------------------------------------------------------


# A route record's own fields; an input field of the same name is carried as input_<name>.
ROUTE_FIELDS = ("id", "question", *Decision.model_fields, "error")


def cmd_route(args: argparse.Namespace) -> int:
    target = args.input
    if target == "-" or Path(target).is_file():
        items = read_items(target)
    elif " " not in target and Path(target).suffix.lower() in (".jsonl", ".json", ".txt"):
        # A mistyped file name is not a question: routing the name would look like
        # success while deciding nothing the user asked for.
        raise FileNotFoundError(f"input file {target!r} does not exist")
    else:
        _refuse_empty(target)
        items = [InputItem(1, 1, target)]
    needs_model = args.router == "llm"
    backend = make_backend(args) if needs_model else None
    router = make_router(args, backend)
    writer = OutputWriter(args.output or "-", append=False)
    failed = 0

    async def run() -> None:
        try:
            await decide_all()
        finally:
            if backend is not None:
                # The LLM router's HTTP session; left open, aiohttp warns about it at exit.
                await backend.aclose()

    async def decide_all() -> None:
        nonlocal failed
        for item in items:
            record: dict[str, Any] = {"id": item.id, "question": item.question}
            if item.problem:
                record["error"] = {"type": "InputError", "message": item.problem}
                failed += 1
            else:
                try:
                    decision = await router.decide(item.question)
                    record.update(decision.model_dump())
                    record["error"] = None
                except Exception as exc:  # one bad question must not sink the rest
                    record["error"] = {"type": type(exc).__name__, "message": str(exc)}
                    failed += 1
            writer.write(carry(record, item.extra, ROUTE_FIELDS))

    try:
        anyio.run(run)
    finally:
        writer.close()
    return EXIT_FAILED if failed else EXIT_OK


# -- bench -----------------------------------------------------------------------------

DEFAULT_BENCH_QUESTIONS = (
    "How can I improve my time management skills?",
    "What are the main differences between Python and JavaScript?",
    "What factors should I consider when buying a used car?",
    "How can cities reduce air pollution?",
    "What are good habits for learning a new language?",
)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.input:
        questions = [i.question for i in read_items(args.input) if i.question][: args.n]
    else:
        questions = list(DEFAULT_BENCH_QUESTIONS[: args.n])
    if not questions:
        raise ConfigurationError("no questions to time; give a file with questions")
    backend = make_backend(args)
    direct = make_strategy("direct", max_tokens=args.max_tokens, temperature=args.temperature)
    sot = make_strategy(args.strategy, max_tokens=args.max_tokens, temperature=args.temperature)
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}

    async def run() -> None:
        # What the server does, measured (or read from the cache) before any timing.
        try:
            profile = await backend.profile()
        except BackendError as exc:
            # The timed calls will meet the same problem and report it per question.
            info["server_profile"] = None
            if not args.json:
                print(f"server: could not be measured ({type(exc).__name__}: {exc})", flush=True)
        else:
            info["server_profile"] = profile.to_dict()
            if not args.json:
                print(f"server: {profile.describe()}", flush=True)
                for note in profile.notes:
                    print(f"  note: {note}", flush=True)
        async with _engine(args, backend) as engine:
            # One untimed 1-token call first: it opens the connection (and the TLS
            # session on a real API), which would otherwise be charged to the first
            # question's direct answer alone and flatter SoT's speed-up.
            warm_up = make_strategy("direct", max_tokens=1)
            await engine.run(warm_up, questions[0], return_errors=True)
            for question in questions:
                a = await engine.run(direct, question, return_errors=True)
                b = await engine.run(sot, question, return_errors=True)
                rows.append(
                    {
                        "question": question,
                        "direct_s": a.latency_s,
                        "sot_s": b.latency_s,
                        "speedup": a.latency_s / b.latency_s if a.ok and b.ok else None,
                        "strategy": b.strategy,
                        "points": len(b.points or []),
                        "error": (a.error or b.error).message if (a.error or b.error) else None,
                    }
                )
                if not args.json:
                    r = rows[-1]
                    speed = f"{r['speedup']:.2f}x" if r["speedup"] else "failed"
                    print(
                        f"{question[:50]:<50}  direct {r['direct_s']:6.2f} s  "
                        f"{args.strategy} {r['sot_s']:6.2f} s  {speed:>7}  "
                        f"({r['points']} points)" + (f"  {r['error']}" if r["error"] else ""),
                        flush=True,
                    )

    anyio.run(run)
    speedups = [r["speedup"] for r in rows if r["speedup"]]
    if args.json:
        print(
            json.dumps(
                {
                    "server_profile": info.get("server_profile"),
                    "rows": rows,
                    "median_speedup": statistics.median(speedups) if speedups else None,
                },
                indent=2,
            )
        )
    elif speedups:
        median = statistics.median(speedups)
        print(f"median speed-up of {args.strategy} over a direct answer: {median:.2f}x")
    return EXIT_OK if len(speedups) == len(rows) else EXIT_FAILED


# -- serve, train-router ----------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import run

    return run(args)


def cmd_train_router(args: argparse.Namespace, rest: list[str]) -> int:
    from ..routing.train import main as train_main

    return int(train_main(rest) or 0)


def cmd_train_heads(args: argparse.Namespace, rest: list[str]) -> int:
    from .train_heads import main as train_main

    return train_main(rest)


# -- the parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sotflow",
        description="Answer questions faster with Skeleton-of-Thought and other strategies.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ask = sub.add_parser("ask", help="answer one question")
    ask.add_argument("question", help="the question to answer (quote it)")
    ask.add_argument("--stream", action="store_true", help="print the answer as it is written")
    ask.add_argument("--json", action="store_true", help="print the whole record as JSON")
    add_run_options(ask)
    add_backend_options(ask)

    batch = sub.add_parser("batch", help="answer every question in a JSONL or text file")
    batch.add_argument("input", help="JSONL with 'question' (or 'prompt') and 'id', .txt, or -")
    batch.add_argument("-o", "--output", required=True, help="JSONL file to write (or -)")
    # Both at once has no meaning (keep the file, or replace it): argparse refuses it.
    existing = batch.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume", action="store_true", help="keep answered items, redo the rest"
    )
    existing.add_argument("--overwrite", action="store_true", help="replace an existing output")
    batch.add_argument("--ordered", action="store_true", help="write in input order")
    batch.add_argument(
        "--quiet",
        action="store_true",
        help="nothing on stderr but errors: no progress, no loading lines, no summary",
    )
    batch.add_argument(
        "--status-every",
        type=non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="when stderr is not a terminal: print a status line this often (default 5; "
        "0 for none); a terminal gets a progress bar instead",
    )
    batch.add_argument("--prices", help="JSON file of USD per million tokens per model")
    batch.add_argument(
        "--price-in",
        type=float,
        metavar="USD",
        help="price of a million prompt tokens for this run's model (with --price-out)",
    )
    batch.add_argument(
        "--price-out",
        type=float,
        metavar="USD",
        help="price of a million completion tokens for this run's model (with --price-in)",
    )
    batch.add_argument("--grace", type=float, default=10.0, help="seconds to finish after Ctrl-C")
    cluster = batch.add_argument_group("Ray cluster")
    cluster.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="answer on a Ray cluster: its address (ray://host:10001, host:6379, auto), or "
        "none for $RAY_ADDRESS or a new local one; --max-calls, --rpm and --tpm then hold "
        "for the whole cluster. Put it after the input file, or give the address with =",
    )
    cluster.add_argument(
        "--ray-workers",
        type=positive_int,
        metavar="N",
        help="answering workers, one CPU each (default: one per node, at least 2)",
    )
    add_run_options(batch)
    add_backend_options(batch)

    route = sub.add_parser("route", help="show which strategy each question would get")
    route.add_argument("input", help="a question, a JSONL/.txt file, or -")
    route.add_argument("-o", "--output", help="JSONL file to write (default stdout)")
    route.add_argument(
        "--router",
        choices=("rules", "llm", "embedding"),
        default="rules",
        help="rules: named rules, no model call; llm: asks the model; embedding: a "
        "classifier on sentence embeddings, on this machine (default rules)",
    )
    add_backend_options(route)

    bench = sub.add_parser("bench", help="time SoT against a direct answer on your endpoint")
    bench.add_argument("input", nargs="?", help="questions (JSONL or .txt); default: built-in")
    bench.add_argument("-n", type=positive_int, default=5, help="how many questions")
    bench.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (a row per question and the median speed-up) instead "
        "of the table",
    )
    add_run_options(bench, default_strategy="sot")
    add_backend_options(bench)

    serve = sub.add_parser(
        "serve",
        help="serve a local model, or proxy an API with sotflow's strategies, as an "
        "OpenAI-compatible API",
    )
    serve_arguments(serve)

    sub.add_parser(
        "train-router",
        help="train the embedding router on labelled JSONL (see --help)",
        add_help=False,
    )
    sub.add_parser(
        "train-heads",
        help="train Medusa/Cerberus draft heads for a local model (see --help)",
        add_help=False,
    )
    return parser


def _unreachable_hint(args: argparse.Namespace, backend: Any) -> str:
    # Under --ray no backend lives in this process: the workers' URL is the same setting.
    url = getattr(backend, "base_url", None) or args.base_url or os.environ.get("OPENAI_BASE_URL")
    source = "--base-url" if args.base_url else "OPENAI_BASE_URL"
    return (
        f"no server answered at {url} (from {source}). Check OPENAI_BASE_URL / --base-url "
        "and that the server is running; every question not tried is left for --resume."
    )


def main(argv: list[str] | None = None) -> None:
    """The ``sotflow`` command. Unless ``--verbose`` is given, it quiets other libraries
    for the whole process (environment, loggers, warnings: see ``cli.quiet``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:
        show_third_party()
    else:
        hush_third_party()
    parser = build_parser()
    trainers = {"train-router": cmd_train_router, "train-heads": cmd_train_heads}
    if argv[:1] and argv[0] in trainers:
        # Each trainer owns its whole command line (its own parser and --help).
        try:
            code = trainers[argv[0]](argparse.Namespace(), argv[1:])
        except (ConfigurationError, FileNotFoundError, ValueError) as exc:
            print(f"sotflow: error: {exc}", file=sys.stderr)
            code = EXIT_USAGE
        sys.exit(code)
    args = parser.parse_args(argv)
    args.argv = argv
    commands = {
        "ask": cmd_ask,
        "batch": cmd_batch,
        "route": cmd_route,
        "bench": cmd_bench,
        "serve": cmd_serve,
    }
    if args.command is None:
        parser.print_help(sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        code = commands[args.command](args)
    except (ConfigurationError, FileNotFoundError) as exc:
        print(f"sotflow: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        # Ctrl-C outside a batch's own handling (ask, route, bench, start-up): no
        # traceback; batch handles it itself, finishing in-flight work first.
        print("sotflow: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`sotflow ask ... | head`); nothing left to say to it.
        silence_stdout()
        code = EXIT_READER_GONE
    sys.exit(code)
