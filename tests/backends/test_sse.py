"""The SSE decoder: line endings, multi-line data, comments, and chunk boundaries anywhere."""

from __future__ import annotations

import random

import pytest

from sotflow.backends.sse import SSEDecoder


def decode(*chunks: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.flush())
    return out


def test_one_event_per_data_line() -> None:
    assert decode(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [b'{"a":1}', b"[DONE]"]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    body = b"data: one" + eol + eol + b"data: two" + eol + b"data: three" + eol + eol
    assert decode(body) == [b"one", b"two\nthree"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode(b"data: a\ndata: b\ndata:c\n\n") == [b"a\nb\nc"]


def test_only_one_leading_space_is_removed() -> None:
    assert decode(b"data:   x\n\n") == [b"  x"]


def test_comments_and_other_fields_are_skipped() -> None:
    body = b": keep-alive\n\nevent: message\nid: 7\nretry: 100\ndata: x\n: note\n\n"
    # The comment-only event dispatches nothing; the second carries only its data.
    assert decode(body) == [b"x"]


def test_event_with_empty_data_is_not_dispatched() -> None:
    # The SSE spec dispatches nothing for an empty data buffer; a keep-alive written as
    # "data:" must not surface as an empty (and so invalid JSON) event.
    assert decode(b"data:\n\ndata: x\n\n") == [b"x"]


def test_unterminated_final_event_is_flushed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b") == [b"a"]
    assert decoder.pending == b"data: b"
    assert decoder.flush() == [b"b"]
    assert decoder.flush() == []


def test_crlf_split_between_chunks_is_one_line_ending() -> None:
    # "\r" ends one chunk and "\n" starts the next: one line ending, not two, so the two
    # data lines belong to a single event.
    assert decode(b"data: a\r", b"\ndata: b\r\n\r\n") == [b"a\nb"]


def test_cr_at_the_very_end_still_ends_the_line() -> None:
    assert decode(b"data: a\r\r") == [b"a"]


def test_multibyte_utf8_split_across_chunks() -> None:
    body = "data: héllo wörld ✓\n\n".encode()
    for cut in range(len(body) + 1):
        assert decode(body[:cut], body[cut:]) == ["héllo wörld ✓".encode()]


# -- property: any split of any well-formed stream decodes to the same events ------------

_ALPHABET = 'ab {}:"é✓,\\'  # includes the field separator and multi-byte characters


def _random_stream(rng: random.Random) -> tuple[bytes, list[bytes]]:
    body = ""
    expected: list[bytes] = []
    for _ in range(rng.randint(1, 6)):
        lines = [
            "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 8)))
            for _ in range(rng.randint(1, 3))
        ]
        fields: list[str] = []
        if rng.random() < 0.3:
            fields.append(": comment " + rng.choice(_ALPHABET))
        if rng.random() < 0.3:
            fields.append("event: message")
        values = []
        for line in lines:
            raw = (" " if rng.random() < 0.7 else "") + line
            fields.append("data:" + raw)
            values.append(raw.removeprefix(" "))  # the spec drops one leading space
        if rng.random() < 0.3:
            fields.append("id: 42")
        eols = [rng.choice(["\n", "\r\n", "\r"]) for _ in fields]
        # The blank line that ends the event: after a lone "\r", a "\n" would merge with
        # it into one "\r\n" line ending, so it is never "\n" there.
        blank = rng.choice(["\r\n", "\r"] if eols[-1] == "\r" else ["\n", "\r\n", "\r"])
        body += "".join(f + e for f, e in zip(fields, eols, strict=True)) + blank
        data = "\n".join(values)
        if data:  # an empty data buffer dispatches nothing
            expected.append(data.encode())
    return body.encode(), expected


def _random_split(rng: random.Random, body: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(body) + 1), k=min(len(body) + 1, rng.randint(0, 12))))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(body[last:cut])
        last = cut
    pieces.append(body[last:])
    return pieces


def test_property_any_chunking_decodes_the_same() -> None:
    rng = random.Random(20240601)
    for _ in range(3000):
        body, expected = _random_stream(rng)
        assert decode(body) == expected, body
        chunks = _random_split(rng, body)
        assert decode(*chunks) == expected, chunks


def test_property_byte_by_byte() -> None:
    rng = random.Random(7)
    for _ in range(300):
        body, expected = _random_stream(rng)
        assert decode(*(body[i : i + 1] for i in range(len(body)))) == expected, body
