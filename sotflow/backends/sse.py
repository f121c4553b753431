"""Server-sent events: bytes in, the ``data`` payload of each event out."""

from __future__ import annotations

__all__ = ["SSEDecoder"]


class SSEDecoder:
    """Incremental decoder for ``text/event-stream`` bodies.

    Only the ``data`` field matters for chat completions; comments, ``event:`` and
    ``id:`` lines are skipped. An event's data lines are joined with newlines.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk
        tail = b""
        if b"\r" in buffer:
            # A "\r" that ends the chunk may be the first half of a "\r\n" split across
            # chunks; keep it back until the next chunk (or flush) says which it is.
            if buffer.endswith(b"\r"):
                buffer, tail = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, rest = buffer.split(b"\n\n")
        self._buffer = rest + tail
        out: list[bytes] = []
        for event in events:
            # The common case: one "data: ..." line per event.
            if event.startswith(b"data: ") and b"\n" not in event:
                if len(event) > 6:
                    out.append(event[6:])
                continue
            data = [
                line[5:].removeprefix(b" ")
                for line in event.split(b"\n")
                if line.startswith(b"data:")
            ]
            joined = b"\n".join(data)
            if joined:  # an empty data buffer dispatches nothing (SSE spec)
                out.append(joined)
        return out

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not been terminated yet."""
        return self._buffer

    def flush(self) -> list[bytes]:
        """Decode a final event the server did not terminate with a blank line."""
        rest, self._buffer = self._buffer, b""
        events = self.feed(rest + b"\n\n") if rest.strip() else []
        self._buffer = b""
        return events
