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
Pieces are read in place into a buffer, used again once no chunk of it is held, and a chunk is
a slice of it, so memory stays about ``2 x chunk_bytes`` (the buffer being filled, and the chunk
before it) plus the chunks the caller still holds, unless a record is longer; no record may be
longer than ``max_record_bytes``.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from .split import (
    BUFFER_GRAIN,
    NEWLINE,
    STEP,
    RecordTooLong,
    count_in,
    first_end,
    raise_mmap_threshold,
)

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
    1-based ``line`` (every newline byte counted, as ``split.line_of`` does). ``data`` is an
    Arrow buffer (``split_header``'s pieces are ``bytes``): it goes to a worker uncopied."""

    index: int
    data: pa.Buffer | bytes
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


class _Buffers:
    """Chunk buffers, each filled again once nothing holds it any more (its reference count
    says so: a chunk handed on, or a worker's view of it, holds it); shared by the streams of
    a process (the parts of a folder, read by several threads).

    A fresh 16 MiB buffer per chunk costs a page fault per page: ~0.55 s of system time per GB
    from Arrow's jemalloc (which returns freed pages at once), and up to 6 ms per MiB where
    fresh huge pages must be backed anew (numpy advises them from 4 MiB; measured on the 2-core
    benchmark VM). A ``bytearray`` is plain malloc'ed memory: it writes zeros over itself once
    (~7,000 more page faults on a 20 MB file), but a 1 GB gzip job then took 4.28 CPU s against
    4.78 with pooled jemalloc buffers (same run, 6 each), with half the page faults (57,000
    against 116,000): glibc served the job's per-range numpy temporaries from memory it held."""

    def __init__(self, keep: int, idle: int) -> None:
        self.keep = keep
        self.idle = idle
        self.arrays: list[bytearray] = []
        self.streams = 0
        self.lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes that nothing else holds."""
        with self.lock:
            small = None
            for index in range(len(self.arrays)):
                if sys.getrefcount(self.arrays[index]) == FREE:
                    if len(self.arrays[index]) >= size:
                        return self.arrays[index]
                    small = index
            array = bytearray((size // BUFFER_GRAIN + 1) * BUFFER_GRAIN)
            raise_mmap_threshold(len(array))
            if small is not None:  # a free buffer too small for a long record: replaced
                self.arrays[small] = array
            elif len(self.arrays) < self.keep:
                self.arrays.append(array)
            return array

    def opened(self) -> None:
        with self.lock:
            self.streams += 1

    def closed(self) -> None:
        """A stream ended: with none left, keep only ``idle`` buffers (for the next file)."""
        with self.lock:
            self.streams -= 1
            if not self.streams:
                del self.arrays[self.idle :]


FREE = 2  # sys.getrefcount of a buffer only ``_Buffers.arrays`` holds (and the call's argument)
# Kept for reuse while streams run: the chunks in flight (a thread batch reads ~8 ahead); and
# when none runs, as many as two streams need (parts read one after another, the next ahead:
# each a buffer being filled and one being parsed), ~68 MiB left after a job.
BUFFERS = _Buffers(keep=16, idle=4)


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
    BUFFERS.opened()
    try:
        yield from _chunks(stream, quote, chunk_bytes, max_record_bytes)
    finally:
        BUFFERS.closed()


def _chunks(
    stream: BinaryIO, quote: int | None, chunk_bytes: int, max_record_bytes: int
) -> Iterator[StreamChunk]:
    """``record_chunks``' loop, after its checks."""
    carried: bytes | memoryview = b""  # the partial record after the last chunk (or more)
    inside = False  # the quote state at the end of what is scanned (all of ``carried``)
    newlines = 0  # newline bytes in ``carried``
    offset = 0  # uncompressed offset of carried[0], always a record start
    line = 1  # the line carried[0] is on
    index = 0
    while True:
        # Each piece goes into a buffer nothing else holds: a chunk is a slice of it, handed on
        # uncopied (one ``bytes`` copy less per chunk), and its buffer is filled again once
        # whichever worker parsed it has let it go.
        scanned = len(carried)
        array = BUFFERS.take(scanned + chunk_bytes)
        buffer = pa.py_buffer(array)
        view = memoryview(array)
        view[:scanned] = carried
        got = _fill(stream, view[scanned : scanned + chunk_bytes])
        if not got:
            break
        filled = buffer.slice(0, scanned + got)
        record, before_record, inside, newlines = _scan(
            filled, scanned, quote, inside, newlines, max_record_bytes, offset, line
        )
        if len(filled) - record > max_record_bytes:
            raise StreamRecordTooLong(offset + record, max_record_bytes, line + before_record)
        if not record:  # no record ends here yet: read on, this and more
            carried = view[: len(filled)]
            continue
        carried = view[record : len(filled)].tobytes()  # lets the chunk's buffer go with it
        yield StreamChunk(index, buffer.slice(0, record), offset, line)
        index += 1
        offset += record
        line += before_record
        newlines -= before_record
    if inside:
        raise UnterminatedQuote(offset, line)
    if carried:
        yield StreamChunk(index, pa.py_buffer(carried), offset, line)


def _fill(stream: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` (less only at its end); how many bytes. Read in place, so
    no second copy of a piece is ever held."""
    readinto = getattr(stream, "readinto", None)
    filled = 0
    while filled < len(view):
        if readinto is None:  # a reader with only read()
            piece = stream.read(len(view) - filled)
            view[filled : filled + len(piece)] = piece
            got = len(piece)
        else:
            got = readinto(view[filled:])
        if not got:
            break
        filled += got
    return filled


def _scan(
    buffer: pa.Buffer,
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

    Counting is all that touches every byte (``count_in``: numpy ``count_nonzero``, several
    GB/s, into the thread's one scratch array: ~100,000 page faults per 200 MB fewer where
    Dask sets malloc's thresholds). Record ends are searched only near the end and near each
    block start, as ``split.py`` does."""
    array = np.frombuffer(buffer, dtype=np.uint8)
    grain = max(1, min(STEP, limit // 2))  # a record over ``limit`` covers a whole block
    starts = list(range(scanned, len(buffer), grain))
    quotes = [0] * len(starts)
    found = [0] * len(starts)
    for which, start in enumerate(starts):
        block = array[start : start + grain]
        found[which] = count_in(block, NEWLINE)
        if quote is not None:
            quotes[which] = count_in(block, quote)
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
    """The offset after the first newline outside quotes in ``array[start:stop]``, or -1."""
    found = first_end(array[start:stop], quote, inside)
    return start + found if found >= 0 else -1


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
    data = bytes(chunk.data)  # the head only: small (and no copy when it is bytes already)
    array = np.frombuffer(data, dtype=np.uint8)
    found = np.flatnonzero(array == NEWLINE)
    if quote is not None:
        quotes = np.flatnonzero(array == quote)
        found = found[(np.searchsorted(quotes, found) & 1) == 0]
    end = int(found[0]) + 1 if found.size else len(data)
    header = data[:end]
    if end == len(data):
        return header, None
    line = chunk.line + header.count(b"\n")  # a quoted header field may hold newlines
    return header, StreamChunk(chunk.index, data[end:], chunk.offset + end, line)
