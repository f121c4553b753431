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

__all__ = ["AnswerReader", "AppendOnlyText", "EventSink"]

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


class AppendOnlyText:
    """Text that may be withdrawn, released to a reader who cannot take anything back.

    The engine may withdraw text (``AnswerReset``: a retried stream, a failed part); a
    LangChain chunk or an OpenAI stream chunk, once sent, stays sent. So text goes out
    while it extends what went out before; after a withdrawal it waits until the new
    text has caught up again (a retry that writes the same text streams on seamlessly;
    one that writes other text releases nothing more, and ``finish`` says so). With
    ``stops``, a tail that could be the start of a stop sequence is held back, and
    nothing from the first stop sequence on goes out.
    """

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.current = ""
        self.sent = ""
        self.differs_at: int | None = None
        """The first position where ``current`` is not what was sent, if any."""
        self.stop_at: int | None = None
        """Where the first stop sequence in ``current`` starts, if one is there."""

    def cut(self, text: str) -> tuple[str, bool]:
        """``text`` up to its first stop sequence, and whether one was found."""
        positions = [p for p in (text.find(s) for s in self.stops) if p >= 0]
        return (text[: min(positions)], True) if positions else (text, False)

    def add(self, text: str) -> str:
        """Append ``text``; returns what can go out now (maybe nothing)."""
        start = len(self.current)
        self.current += text
        sent = self.sent
        if self.differs_at is None and start < len(sent):
            end = min(len(self.current), len(sent))
            if self.current[start:end] != sent[start:end]:
                self.differs_at = next(i for i in range(start, end) if self.current[i] != sent[i])
        if self.stops and self.stop_at is None:
            # Only a stop sequence that ends in the new text can be new.
            found = self.cut(self.current[max(0, start - self.hold) :])
            if found[1]:
                self.stop_at = max(0, start - self.hold) + len(found[0])
        return self._release()

    def withdraw(self, chars: int) -> None:
        """Take back the last ``chars`` characters (not yet read, or read and kept)."""
        self.current = self.current[: max(0, len(self.current) - chars)]
        if self.differs_at is not None and self.differs_at >= len(self.current):
            self.differs_at = None
        if self.stop_at is not None and self.stop_at + self.hold >= len(self.current):
            # The stop sequence may have lost characters: look again.
            self.stop_at = None
            text, stopped = self.cut(self.current)
            self.stop_at = len(text) if stopped else None

    def feed(self, item: AnswerDelta | AnswerReset) -> str:
        """An answer event in; what can go out now."""
        if isinstance(item, AnswerDelta):
            return self.add(item.text)
        self.withdraw(item.chars)
        return self._release()

    def _release(self) -> str:
        if self.differs_at is not None:
            return ""
        visible = self.stop_at if self.stop_at is not None else len(self.current) - self.hold
        if visible <= len(self.sent):
            return ""
        new = self.current[len(self.sent) : visible]
        self.sent += new
        return new

    @property
    def stopped(self) -> bool:
        """A stop sequence was reached in what went out: nothing more will."""
        return (
            self.stop_at is not None
            and self.differs_at is None
            and (len(self.sent) >= self.stop_at)
        )

    def finish(self, text: str) -> tuple[str, bool]:
        """The rest of the final ``text``, and whether what went out adds up to it."""
        final, _ = self.cut(text)
        if final.startswith(self.sent):
            rest = final[len(self.sent) :]
            self.sent = final
            return rest, True
        return "", False
