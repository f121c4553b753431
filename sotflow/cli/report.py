"""What a batch run shows a person: progress while it runs, a summary at the end.

Progress fits where it runs: the rich bar on a terminal; on anything else (a log file,
CI, a pipe) one plain status line every few seconds, which a terminal bar's redraws
would turn into noise there; nothing with ``--quiet``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from ..errors import ConfigurationError

__all__ = [
    "PRICES",
    "BatchStats",
    "Progress",
    "ProgressBar",
    "StatusLines",
    "load_prices",
    "progress_for",
]

# USD per million tokens (prompt, completion), as published by OpenAI in 2025, for its own
# endpoint only: the same model name on another server (a proxy, a local stand-in) costs
# what that server charges, which sotflow cannot know. Prices of your own apply anywhere:
# --price-in/--price-out, or --prices FILE / $SOTFLOW_PRICES: {"model": [prompt, completion]}.
PRICES_HOST = "api.openai.com"
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


def load_prices(path: str | None) -> dict[str, tuple[float, float]]:
    """The user's own prices (``--prices FILE`` or ``$SOTFLOW_PRICES``); valid on any endpoint."""
    prices: dict[str, tuple[float, float]] = {}
    path = path or os.environ.get("SOTFLOW_PRICES")
    if not path:
        return prices
    try:
        data = json.loads(Path(path).read_text())
        for model, pair in data.items():
            prompt, completion = pair
            prices[str(model)] = (float(prompt), float(completion))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"could not read prices from {path!r}: {exc}. Expected JSON like "
            '{"my-model": [0.15, 0.60]} (USD per million prompt and completion tokens)'
        ) from exc
    return prices


@dataclass
class BatchStats:
    total: int
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    in_flight: int = 0
    calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    strategies: Counter[str] = field(default_factory=Counter)
    """What answered the answered items; failed items are counted in ``failures``."""
    failures: Counter[str] = field(default_factory=Counter)
    """Failed items by error type."""
    started: float = field(default_factory=time.monotonic)
    estimated: bool = False
    """Some token counts are sotflow's estimates (the server reported none)."""

    def add(self, record: dict[str, Any]) -> None:
        error = record.get("error")
        if error:
            self.failed += 1
            self.failures[str(error.get("type") or "error")] += 1
        else:
            self.ok += 1
            self.latencies.append(float(record.get("latency_s") or 0.0))
            if record.get("strategy"):
                self.strategies[record["strategy"]] += 1
        self.calls += int(record.get("calls") or 0)
        self.retries += int(record.get("retries") or 0)
        usage = record.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        self.estimated = self.estimated or bool(usage.get("estimated"))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def finished(self) -> int:
        """Items this run finished, answered or failed (not those already done)."""
        return self.ok + self.failed

    def status(self) -> str:
        """One line for a log: done, failed, in flight, rate and time left."""
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = self.finished / elapsed
        left = self.total - self.skipped - self.finished
        eta = f"ETA {_duration(left / rate)}" if rate > 0 else "ETA unknown"
        return (
            f"sotflow: {self.skipped + self.finished}/{self.total} done, {self.failed} failed, "
            f"{self.in_flight} in flight, {rate:.2f} questions/s, {eta}"
        )

    def summary(
        self,
        model: str,
        prices: dict[str, tuple[float, float]],
        *,
        local: bool = False,
        base_url: str | None = None,
    ) -> str:
        """The lines printed after a batch. ``prices`` are the user's own (valid on any
        endpoint); the published table is used only on its provider's endpoint."""
        elapsed = time.monotonic() - self.started
        done = self.ok + self.failed
        lines = [
            f"sotflow: {self.ok} answered, {self.failed} failed"
            + (f", {self.skipped} already done" if self.skipped else "")
            + f" (of {self.total}) in {elapsed:.1f} s"
        ]
        if self.strategies:
            mix = ", ".join(f"{name} {count}" for name, count in self.strategies.most_common())
            lines.append(f"answered by: {mix}")
        if self.failures:
            kinds = ", ".join(f"{name} {count}" for name, count in self.failures.most_common())
            lines.append(f"failed with: {kinds}")
        if done:
            lines.append(f"model calls: {self.calls:,} ({self.retries:,} retries)")
        estimate = "; estimated: the server reported no usage" if self.estimated else ""
        lines.append(
            f"tokens: {self.tokens:,} (prompt {self.prompt_tokens:,}, "
            f"completion {self.completion_tokens:,}{estimate})"
        )
        if self.latencies:
            ordered = sorted(self.latencies)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            lines.append(f"latency: p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s")
        host = (base_url or "").split("//", 1)[-1].split("/", 1)[0].lower()
        price = prices.get(model)
        if price is None and host == PRICES_HOST:
            price = PRICES.get(model)
        if price is not None:
            cost = (self.prompt_tokens * price[0] + self.completion_tokens * price[1]) / 1e6
            lines.append(
                f"cost: {'about ' if self.estimated else ''}${cost:,.4f} ({model} at "
                f"${price[0]:g} / ${price[1]:g} per million prompt / completion tokens)"
            )
        elif local:
            lines.append("cost: no API charge (a model on this machine)")
        elif done:
            where = f" at {host}" if host else ""
            lines.append(
                f"cost: unknown (no known price for {model!r}{where}); set one with "
                "--price-in and --price-out (USD per million prompt / completion tokens) "
                "or --prices FILE"
            )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _say(line: str) -> bool:
    """Write one line to stderr; False once stderr is gone (its reader closed it)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):  # ValueError: stderr already closed
        return False
    return True


class Progress:
    """What a running batch shows: nothing; subclasses show a bar or status lines."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self) -> None:
        """An item finished."""

    async def run(self) -> None:
        """Runs beside the batch (in its task group) until cancelled."""


def progress_for(stats: BatchStats, *, quiet: bool, every_s: float = 5.0) -> Progress:
    """The rich bar on a terminal; elsewhere (a log, a pipe, CI) a status line every
    ``every_s`` seconds; nothing with ``--quiet`` or ``every_s`` 0."""
    if quiet:
        return Progress()
    if sys.stderr.isatty():
        return ProgressBar(stats)
    if every_s > 0:
        return StatusLines(stats, every_s)
    return Progress()


class StatusLines(Progress):
    """A plain status line every few seconds, for a stderr that is not a terminal."""

    def __init__(self, stats: BatchStats, every_s: float) -> None:
        self.stats = stats
        self.every_s = every_s

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.every_s)
            if not _say(self.stats.status()):
                return


class ProgressBar(Progress):
    """A rich progress bar on stderr, for a terminal."""

    def __init__(self, stats: BatchStats) -> None:
        self.stats = stats
        self._progress: RichProgress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        self._progress = RichProgress(
            TextColumn("[bold]answering"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TextColumn("{task.fields[in_flight]} in flight"),
            TextColumn("{task.fields[tokens]} tokens"),
            TextColumn("{task.fields[rate]}/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task(
            "batch",
            total=self.stats.total,
            completed=self.stats.skipped,
            failed=0,
            in_flight=0,
            tokens=0,
            rate="0.0",
        )
        return self

    def update(self) -> None:
        if self._progress is None or self._task is None:
            return
        s = self.stats
        elapsed = max(1e-6, time.monotonic() - s.started)
        self._progress.update(
            self._task,
            completed=s.skipped + s.ok + s.failed,
            failed=s.failed,
            in_flight=s.in_flight,
            tokens=f"{s.tokens:,}",
            rate=f"{(s.ok + s.failed) / elapsed:.1f}",
        )

    async def run(self) -> None:
        # In flight changes between finishes too; refresh it now and then.
        while True:
            await anyio.sleep(0.5)
            self.update()

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
