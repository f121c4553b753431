"""Third-party output on the command line: hidden unless ``--verbose``.

Loading a local model drives libraries that each print their own progress bars and log
lines (transformers' weight loading, llama.cpp's model loader, Ray Data's operators).
On a terminal they push sotflow's own progress around; in a log they bury it. The CLI
shows what it does in its own words instead ("loading ...", "loaded in 2.1 s"), and
keeps the libraries quiet:

- before they are imported, through the environment variables they read (children,
  Ray workers among them, inherit them); a variable the user set is left as it is;
- through their loggers and Python warnings, for what they log after import;
- while a model loads, by catching whatever is written to file descriptor 2, which is
  where C libraries such as llama.cpp write. What was caught is shown if loading
  fails: nothing that explains a failure is lost.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["hush_third_party", "loading", "show_third_party"]

# What each library reads at import to decide whether to show bars and chatter.
QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub and transformers' tqdm bars
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TQDM_DISABLE": "1",  # any other tqdm bar (tqdm reads TQDM_* defaults)
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # else a warning on every fork after tokenizing
}

THIRD_PARTY_LOGGERS = (
    "transformers",
    "huggingface_hub",
    "sentence_transformers",
    "llama-cpp-python",
    "ray",
    "torch",
    "accelerate",
    "filelock",
    "urllib3",
    "httpx",
)


def hush_third_party() -> None:
    """Keep other libraries' bars, log lines and warnings off stderr (not ``--verbose``)."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Warnings raised on behalf of other packages are theirs to fix. sotflow's own keep
    # Python's standard filters (which, for one, hide ResourceWarning outside -X dev).
    warnings.filterwarnings("ignore", module=r"(?!sotflow(\.|$))")
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:  # imported before we could set its variables
        transformers_logging.disable_progress_bar()


def show_third_party() -> None:
    """``--verbose``: let the libraries speak, llama.cpp's model loader included (the
    llama.cpp runtime keeps its log to itself unless ``SOTFLOW_VERBOSE`` is set)."""
    os.environ.setdefault("SOTFLOW_VERBOSE", "1")


@contextmanager
def _caught_fd2() -> Iterator[None]:
    """Send what is written to fd 2 into a file while the block runs; replay it if the
    block fails."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr to redirect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                caught = sink.read()
                if caught:
                    sys.stderr.write(caught.decode("utf-8", "replace"))
                    sys.stderr.flush()


@contextmanager
def loading(what: str, *, quiet: bool = False, verbose: bool = False) -> Iterator[list[str]]:
    """Say that ``what`` is loading and, after, how long it took.

    Yields a list the caller may append details to (shown on the "loaded" line, e.g. the
    decoding mode that was chosen). Without ``verbose``, the libraries' own output while
    loading is caught (see the module docstring).
    """
    details: list[str] = []
    if not quiet:
        print(f"sotflow: loading {what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    if verbose:
        yield details
    else:
        with _caught_fd2():
            yield details
    if not quiet:
        took = time.perf_counter() - start
        extra = f" ({'; '.join(details)})" if details else ""
        print(f"sotflow: loaded {what} in {took:.1f} s{extra}", file=sys.stderr, flush=True)
