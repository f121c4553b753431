"""The answer in reading order, released while its parts are still being written.

A strategy marks calls as parts of the answer (``graph.Part``) with a sort key. The
reader streams the first unfinished part live, holds later parts back until everything
before them is out, and, when a retried stream or a late part with a smaller key
changes text already sent, withdraws it with ``AnswerReset`` and sends it again, so
the deltas always add up to ``answer.text``.
"""

from __future__ import annotations

from collections.abc import Callable

from .events import AnswerDelta, AnswerReset, Event
from .graph import PartKey, part_text

__all__ = ["AnswerReader", "EventSink"]

EventSink = Callable[[Event], None]


class AnswerReader:
    """Releases answer parts in key order while later parts are still being written."""

    def __init__(self, run_id: str, emit: EventSink) -> None:
        self.run_id = run_id
        self.emit = emit
        self.order: list[tuple[PartKey, str]] = []
        self.released: list[tuple[PartKey, str]] = []  # parts wholly sent, in key order
        self.keys: dict[str, PartKey] = {}
        self.buffers: dict[str, list[str]] = {}
        self.done: set[str] = set()
        self.prefix: dict[str, str] = {}
        self.suffix: dict[str, str] = {}
        self.lead: dict[str, str] = {}
        self.leading: set[str] = set()  # parts whose first words have not come yet
        self.live: str | None = None
        self.live_chars = 0
        self.any_parts = False

    def add(
        self, node_id: str, key: PartKey, prefix: str, suffix: str, lead: str | None = None
    ) -> None:
        """A new part: ``node_id``'s text, between ``prefix`` and ``suffix``, at ``key``
        (its leading whitespace replaced by ``lead`` when that is set)."""
        self.any_parts = True
        if lead is not None:
            self.lead[node_id] = lead
            self.leading.add(node_id)
        position = len(self.order)
        while position > 0 and self.order[position - 1][0] > key:
            position -= 1
        self.order.insert(position, (key, node_id))
        self.keys[node_id] = key
        self.buffers[node_id] = []
        self.prefix[node_id] = prefix
        self.suffix[node_id] = suffix
        if (self.live is not None and key < self.keys[self.live]) or (
            self.released and key < self.released[-1][0]
        ):
            self._rewind(key)
        elif self.live is None:
            self._advance()

    def _rewind(self, key: PartKey) -> None:
        """A part was added before text already sent: withdraw the text of every part
        after it (the live one included) and send it all again in key order."""
        pulled = [item for item in self.released if item[0] > key]
        self.released = self.released[: len(self.released) - len(pulled)]
        shown = sum(
            len(self.prefix[n]) + sum(len(t) for t in self.buffers[n]) + len(self.suffix[n])
            for _, n in pulled
        )
        if self.live is not None:
            shown += len(self.prefix[self.live]) + self.live_chars
            self.live = None
            self.live_chars = 0
        if shown:
            self.emit(AnswerReset(self.run_id, shown))
        self.order = sorted(self.order + pulled, key=lambda item: item[0])
        self._advance()

    def _send(self, text: str) -> None:
        if text:
            self.emit(AnswerDelta(self.run_id, text))

    def _advance(self) -> None:
        while self.order and self.live is None:
            nid = self.order[0][1]
            self._send(self.prefix[nid] + "".join(self.buffers[nid]))
            self.live_chars = sum(len(t) for t in self.buffers[nid])
            if nid in self.done:
                self._send(self.suffix[nid])
                self.released.append(self.order.pop(0))
                continue
            self.live = nid

    def delta(self, nid: str, text: str) -> None:
        if nid in self.leading:
            text = part_text(text, self.lead[nid])
            if not text:
                return  # whitespace before the first words: replaced by the lead
            self.leading.discard(nid)
        if nid in self.buffers:
            # Kept even while live: a part added later with a smaller key sends it again.
            self.buffers[nid].append(text)
        if nid == self.live:
            self.live_chars += len(text)
            self._send(text)

    def reset(self, nid: str) -> None:
        if nid == self.live:
            if self.live_chars:
                self.emit(AnswerReset(self.run_id, self.live_chars))
            self.live_chars = 0
        if nid in self.buffers:
            self.buffers[nid].clear()
        if nid in self.lead:
            self.leading.add(nid)

    def finish(self, nid: str, ok: bool) -> None:
        if nid not in self.buffers:
            return
        if not ok:
            # A failed or cancelled part contributes nothing; withdraw what it showed,
            # its prefix included (already sent if the part was live).
            if nid == self.live:
                shown = len(self.prefix[nid]) + self.live_chars
                if shown:
                    self.emit(AnswerReset(self.run_id, shown))
                self.live_chars = 0
            self.buffers[nid].clear()
            self.prefix[nid] = self.suffix[nid] = ""
        self.done.add(nid)
        if nid == self.live:
            self._send(self.suffix[nid])
            self.order = [item for item in self.order if item[1] != nid]
            self.released.append((self.keys[nid], nid))
            self.live = None
            self._advance()
