"""What a batch run shows a person: a progress bar on a terminal, a summary at the end."""

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

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import ConfigurationError

__all__ = ["PRICES", "BatchStats", "ProgressBar", "load_prices"]

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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    strategies: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    estimated: bool = False
    """Some token counts are sotflow's estimates (the server reported none)."""

    def add(self, record: dict[str, Any]) -> None:
        if record.get("error"):
            self.failed += 1
        else:
            self.ok += 1
            self.latencies.append(float(record.get("latency_s") or 0.0))
        if record.get("strategy"):
            self.strategies[record["strategy"]] += 1
        usage = record.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        self.estimated = self.estimated or bool(usage.get("estimated"))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

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
            lines.append(f"strategies: {mix}")
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


class ProgressBar:
    """A rich progress bar on stderr, only when stderr is a terminal and not --quiet."""

    def __init__(self, stats: BatchStats, *, enabled: bool) -> None:
        self.stats = stats
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]answering"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]} failed"),
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
            tokens=f"{s.tokens:,}",
            rate=f"{(s.ok + s.failed) / elapsed:.1f}",
        )

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
