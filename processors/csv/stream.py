"""Record-aligned chunks of a CSV that can only be read front to back (a decompressed stream).

A compressed file cannot be split by byte ranges the way ``split.py`` splits a plain one: its
bytes are known only once everything before them is decompressed. So one reader walks the
stream in ``chunk_bytes`` pieces and cuts each at its last newline outside quotes, carrying the
partial record after it into the next chunk; the chunks are whole records, ready for parse
workers while the reader decompresses on::

    stream --read(chunk_bytes)--> [tail | piece] --cut at last record end--> StreamChunk ...
                                          \\-- the partial record after it: the next tail --/

The quote state is carried across pieces as in ``split.py`` (a parity count, which RFC 4180's
doubled quotes keep right), and only the new piece is scanned, with numpy in cache-sized steps.
Memory stays about ``2 x chunk_bytes`` (the chunk handed out, the next being read) unless a
record is longer, and no record may be longer than ``max_record_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from .split import NEWLINE, STEP, RecordTooLong

__all__ = [
    "StreamChunk",
    "StreamRecordTooLong",
    "UnterminatedQuote",
    "record_chunks",
    "split_header",
]


@dataclass(frozen=True)
class StreamChunk:
    """Whole records: ``data`` starts at uncompressed byte ``offset`` of the stream, on the
    1-based ``line`` (every newline byte counted, as ``split.line_of`` does)."""

    index: int
    data: bytes
    offset: int
    line: int


class StreamRecordTooLong(RecordTooLong):
    """A record of the stream is longer than ``limit``: it starts at ``position`` (uncompressed),
    on ``line``."""

    def __init__(self, position: int, limit: int, line: int) -> None:
        super().__init__(position, limit)
        self.args = (position, limit, line)
        self.line = line


class UnterminatedQuote(ValueError):
    """The stream ends inside a quoted field; the record holding it starts at uncompressed byte
    ``position``, on ``line``."""

    def __init__(self, position: int, line: int) -> None:
        super().__init__(position, line)
        self.position = position
        self.line = line

    def __str__(self) -> str:
        return (
            f"a quoted field opened in the record at line {self.line} (byte {self.position:,}) "
            "is never closed (unterminated quote)"
        )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value!r}: must be at least 1")


def record_chunks(
    stream: BinaryIO, *, quote: int | None, chunk_bytes: int, max_record_bytes: int
) -> Iterator[StreamChunk]:
    """The stream's bytes as chunks of whole records, in order, each about ``chunk_bytes`` long
    (a chunk holds at least one record; the last may lack a final newline).

    ``quote`` is the quote byte (``None``: newlines always end records). Raises
    ``StreamRecordTooLong`` for a record longer than ``max_record_bytes`` and
    ``UnterminatedQuote`` when the stream ends inside a quoted field."""
    _check_positive("chunk_bytes", chunk_bytes)
    _check_positive("max_record_bytes", max_record_bytes)
    buffer = bytearray()  # the carried partial record, then the piece just read
    inside = False  # the quote state at the end of what is scanned (all of the buffer)
    newlines = 0  # newline bytes in the buffer
    offset = 0  # uncompressed offset of buffer[0], always a record start
    line = 1  # the line buffer[0] is on
    index = 0
    while True:
        piece = stream.read(chunk_bytes)
        if not piece:
            break
        scanned = len(buffer)
        buffer += piece
        del piece
        record, before_record, inside, newlines = _scan(
            buffer, scanned, quote, inside, newlines, max_record_bytes, offset, line
        )
        if len(buffer) - record > max_record_bytes:
            raise StreamRecordTooLong(offset + record, max_record_bytes, line + before_record)
        if record:
            with memoryview(buffer) as view:
                data = bytes(view[:record])
            del buffer[:record]
            yield StreamChunk(index, data, offset, line)
            del data
            index += 1
            offset += record
            line += before_record
            newlines -= before_record
    if inside:
        raise UnterminatedQuote(offset, line)
    if buffer:
        yield StreamChunk(index, bytes(buffer), offset, line)


def _scan(
    buffer: bytearray,
    scanned: int,
    quote: int | None,
    inside: bool,
    newlines: int,
    limit: int,
    offset: int,
    line: int,
) -> tuple[int, int, bool, int]:
    """Scan ``buffer[scanned:]`` (``buffer[0]`` is a record start; ``inside`` and ``newlines``
    describe ``buffer[:scanned]``): the start of its last record, the newline bytes before that
    start, and the quote state and newline count of the whole buffer. ``StreamRecordTooLong``
    for a whole record longer than ``limit``.

    A function of its own so numpy's views of ``buffer`` are gone when it returns (a bytearray
    cannot be resized while a view exists)."""
    array = np.frombuffer(buffer, dtype=np.uint8)
    record = 0
    before_record = 0
    for step in range(scanned, len(buffer), STEP):
        block = array[step : step + STEP]
        found = np.flatnonzero(block == NEWLINE)
        ends = found
        if quote is not None:
            quotes = np.flatnonzero(block == quote)
            ends = found[((np.searchsorted(quotes, found) + int(inside)) & 1) == 0]
            inside ^= bool(quotes.size & 1)
        if ends.size:
            ends = ends + (step + 1)
            lengths = np.diff(ends, prepend=record)
            longest = int(np.argmax(lengths))
            if lengths[longest] > limit:
                start = int(ends[longest] - lengths[longest])
                at = line + int(np.count_nonzero(array[:start] == NEWLINE))
                raise StreamRecordTooLong(offset + start, limit, at)
            before_record = newlines + int(np.searchsorted(found + step, ends[-1]))
            record = int(ends[-1])
        newlines += int(found.size)
    return record, before_record, inside, newlines


def split_header(chunk: StreamChunk, quote: int | None) -> tuple[bytes, StreamChunk | None]:
    """The header record of the first chunk, and the rest of the chunk (``None`` when the
    header is all there is): the head for type inference without reading the stream twice."""
    array = np.frombuffer(chunk.data, dtype=np.uint8)
    found = np.flatnonzero(array == NEWLINE)
    if quote is not None:
        quotes = np.flatnonzero(array == quote)
        found = found[(np.searchsorted(quotes, found) & 1) == 0]
    end = int(found[0]) + 1 if found.size else len(chunk.data)
    header = chunk.data[:end]
    if end == len(chunk.data):
        return header, None
    line = chunk.line + header.count(b"\n")  # a quoted header field may hold newlines
    return header, StreamChunk(chunk.index, chunk.data[end:], chunk.offset + end, line)
