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
Pieces are read in place into the buffer, so memory stays about ``2 x chunk_bytes`` (the
buffer being filled, and the chunk cut from it) plus the chunks the caller still holds, unless a
record is longer; no record may be longer than ``max_record_bytes``.
"""

from __future__ import annotations

import itertools
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
        scanned = len(buffer)
        if not _fill(stream, buffer, chunk_bytes):
            break
        record, before_record, inside, newlines = _scan(
            buffer, scanned, quote, inside, newlines, max_record_bytes, offset, line
        )
        if len(buffer) - record > max_record_bytes:
            raise StreamRecordTooLong(offset + record, max_record_bytes, line + before_record)
        if record:
            with memoryview(buffer) as view:
                data = bytes(view[:record])
                # a new buffer for the tail: growing one with a cut-off front would copy it whole
                tail = bytearray(view[record:])
            buffer = tail
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


def _fill(stream: BinaryIO, buffer: bytearray, size: int) -> int:
    """Append up to ``size`` bytes of ``stream`` to ``buffer`` (fewer only at its end); how
    many. Read in place, so no second copy of a piece is ever held."""
    readinto = getattr(stream, "readinto", None)
    if readinto is None:  # a reader with only read()
        piece = stream.read(size)
        buffer += piece
        return len(piece)
    start = len(buffer)
    buffer += bytes(size)  # calloc'd zeros: their pages are not touched, only the buffer's
    filled = 0
    with memoryview(buffer) as view:
        while filled < size:
            got = readinto(view[start + filled :])
            if not got:
                break
            filled += got
    del buffer[start + filled :]
    return filled


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

    Counting is all that touches every byte (numpy ``count_nonzero``, several GB/s); record
    ends are searched only near the end and near each block start, as ``split.py`` does. A
    function of its own so numpy's views of ``buffer`` are gone when it returns (a bytearray
    cannot be resized while a view exists)."""
    array = np.frombuffer(buffer, dtype=np.uint8)
    grain = max(1, min(STEP, limit // 2))  # a record over ``limit`` covers a whole block
    starts = list(range(scanned, len(buffer), grain))
    quotes = [0] * len(starts)
    found = [0] * len(starts)
    for which, start in enumerate(starts):
        block = array[start : start + grain]
        found[which] = int(np.count_nonzero(block == NEWLINE))
        if quote is not None:
            quotes[which] = int(np.count_nonzero(block == quote))
    states = [inside ^ bool(odd & 1) for odd in itertools.accumulate(quotes, initial=0)]
    record = 0
    before_record = 0
    for which in reversed(range(len(starts))):  # the last record end, usually in the last block
        start = starts[which]
        ends = _ends(array[start : start + grain], quote, states[which])
        if ends.size:
            record = start + int(ends[-1]) + 1
            block = array[start:record]
            before_record = newlines + sum(found[:which]) + int(np.count_nonzero(block == NEWLINE))
            break
    if record:
        _check_lengths(array, starts, states, grain, record, quote, limit, offset, line)
    return record, before_record, states[-1], newlines + sum(found)


def _ends(block: np.ndarray, quote: int | None, inside: bool) -> np.ndarray:
    """Offsets in ``block`` of the newlines outside quotes, given the quote state before it."""
    found = np.flatnonzero(block == NEWLINE)
    if quote is None or not found.size:
        return found
    quotes = np.flatnonzero(block == quote)
    outside: np.ndarray = found[((np.searchsorted(quotes, found) + int(inside)) & 1) == 0]
    return outside


def _first_end(array: np.ndarray, start: int, stop: int, quote: int | None, inside: bool) -> int:
    """The offset after the first newline outside quotes in ``array[start:stop]``, or -1; looks
    a few KiB ahead first (a record end is usually that close)."""
    window = 1 << 12
    while start < stop:
        block = array[start : min(stop, start + window)]
        ends = _ends(block, quote, inside)
        if ends.size:
            return start + int(ends[0]) + 1
        if quote is not None:
            inside ^= bool(np.count_nonzero(block == quote) & 1)
        start += len(block)
        window = STEP
    return -1


def _check_lengths(
    array: np.ndarray,
    starts: list[int],
    states: list[bool],
    grain: int,
    record: int,
    quote: int | None,
    limit: int,
    offset: int,
    line: int,
) -> None:
    """``StreamRecordTooLong`` if a record of ``array[:record]`` (whole records) is longer than
    ``limit``. The first may have begun in earlier pieces; every later one longer than
    ``limit`` covers a whole block without a record end, so only blocks are searched, and only
    a block without one is looked at record by record."""

    def too_long(start: int) -> StreamRecordTooLong:
        at = line + int(np.count_nonzero(array[:start] == NEWLINE))
        return StreamRecordTooLong(offset + start, limit, at)

    first = _first_end(array, starts[0], record, quote, states[0])
    if first > limit:
        raise too_long(0)
    for which, start in enumerate(starts):
        if start < first or start + grain > record:
            continue
        if _first_end(array, start, start + grain, quote, states[which]) < 0:
            break  # a long quoted field, or a long record: measure each record from ``first``
    else:
        return
    ends = _ends(array[first:record], quote, False) + first + 1
    lengths = np.diff(ends, prepend=first)
    over = np.flatnonzero(lengths > limit)
    if over.size:
        raise too_long(int(ends[over[0]] - lengths[over[0]]))


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
