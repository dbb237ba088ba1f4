"""Split a CSV file into byte ranges that start and end on real record boundaries.

A newline inside a quoted field is not a record boundary, so a naive split at "the next newline"
silently creates phantom rows. Whether a position is inside quotes depends on every quote before
it (RFC 4180 escapes a quote by doubling it, which keeps the count's parity right). So:

1. the quote bytes of each block of ``chunk_bytes`` are counted (by the workers; by the parent
   only while a cold pool boots, see ``CSVBatchNode.split``);
2. a prefix sum of those counts gives the quote state at every block start, and from there the
   next newline outside quotes is usually a few bytes away: it starts the range. The ranges are
   ``[boundary_k, boundary_k+1)``; a block that starts inside a quoted field longer than itself
   simply joins the range before it.

Counting runs with numpy over cache-sized steps (~10 GB/s), far faster than parsing, so the scan
costs a few percent of a parse. An odd total means an unterminated quote: an error names its line.
A record longer than ``max_record_bytes`` is an error too (``RecordTooLong``): the search for a
block's first record start gives up there instead of stretching a range over it.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..storage import InputFile, Source, SourceLike, open_input

__all__ = [
    "BUFFER_GRAIN",
    "Aligned",
    "BlockScan",
    "CsvBlock",
    "CsvItem",
    "CsvRange",
    "align_block",
    "count_in",
    "ends_inside_quotes",
    "RecordTooLong",
    "line_of",
    "long_record",
    "plan_ranges",
    "raise_mmap_threshold",
    "read_reusing",
    "scan_block",
    "unterminated_record",
]

NEWLINE = 10
STEP = 1 << 18  # bytes per numpy step: fits in cache, which is what makes counting fast
WINDOW = 1 << 16  # bytes read at a time while looking for a boundary
TAIL = 1 << 14  # bytes read past a block's end for the record that straddles it (at first)
# Buffer sizes: the size asked for, rounded up past a multiple of this. A chunk of exactly 16 MiB
# needs a bit more next time (the partial record carried over): without the headroom every
# other buffer of a stream was replaced (66 fresh buffers for 32 parts, sequential).
BUFFER_GRAIN = 1 << 20


@dataclass(frozen=True)
class CsvRange:
    """Bytes ``start..end-1`` of input file ``file`` hold whole records; ``index`` is the range's
    place among all the inputs' ranges.

    ``line`` is the 1-based line ``start`` is on, when the split counted lines (to report skipped
    rows by line without rereading the file up to the range)."""

    index: int
    start: int
    end: int
    line: int | None = field(default=None, compare=False)
    file: int = 0
    # The bytes themselves (bytes or a pyarrow Buffer), for a chunk of a compressed file
    # (decompressed by the parent).
    data: Any = field(default=None, compare=False, repr=False)
    # A whole compressed file, for its worker to decompress (``start``/``end``: its data part
    # and its compressed size); ``chunk``: a chunk's number within such a file.
    whole: bool = False
    chunk: int | None = None

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class BlockScan:
    """What phase 1 learns about one block: how many quote bytes it holds (and newlines, when
    asked)."""

    start: int
    end: int
    quotes: int
    newlines: int | None = None


@dataclass(frozen=True)
class CsvBlock:
    """Bytes ``start..end-1`` of input file ``file``, for a worker that finds the block's records
    and parses them after one read (no quote-count pass first: see ``align_block``).

    ``inside``: the quote state at ``start`` when known (a file's first block, or a block whose
    first guess was wrong); ``None``: the worker guesses, and the parent checks the guess."""

    index: int
    start: int
    end: int
    file: int = 0
    inside: bool | None = None
    opens: bool = False  # ``start`` is a record start: the file's first block

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Aligned:
    """Where a worker put a block's records: ``start..end-1``, assuming the quote state
    ``inside`` at the block's start; ``quotes``: the quote bytes in the block (the parent's
    prefix sum of them says whether the assumption was right)."""

    inside: bool
    quotes: int
    start: int
    end: int
    too_long: int | None = None  # no record end within ``limit`` after this offset


CsvItem = CsvRange | CsvBlock  # an item of a CSV batch: a range, or a block its worker cuts


def _outside_newlines(array: np.ndarray, quote: int | None, inside: bool) -> np.ndarray:
    """Offsets of the newlines in ``array`` outside quotes, given the quote state before it."""
    found = np.flatnonzero(array == NEWLINE)
    if quote is None or not found.size:
        return found
    quotes = np.flatnonzero(array == quote)
    outside: np.ndarray = found[((np.searchsorted(quotes, found) + int(inside)) & 1) == 0]
    return outside


def align_block(
    read: Callable[[int, int], bytes | memoryview],
    block: CsvBlock,
    size: int,
    quote: int | None,
    limit: int,
) -> tuple[Aligned, memoryview]:
    """The records of ``block`` (as ``plan_ranges`` would cut them, given the right quote
    state) and their bytes, from one read of the block and a little past it (``read(start,
    end)``; more only for a record that straddles the end by more than ``TAIL``).

    The quote state at the block's start is ``block.inside``, or else a guess: the state whose
    first record end comes sooner. A wrong state reads quoted text as unquoted and back, so its
    first "record end" is a newline inside a quoted field, which most files have few of: the
    right state usually wins. No record end within ``limit`` bytes past the block's end: an
    ``Aligned`` whose ``too_long`` says where, and no bytes.

    ``read`` may return a view of a buffer it reuses: its next call overwrites the last one's.
    """
    fetched = min(block.end + TAIL, size)
    data = read(block.start, fetched)
    length = block.size
    head = np.frombuffer(data, dtype=np.uint8)[:length]
    quotes = count_in(head, quote) if quote is not None else 0
    inside = _guess(head, quote) if block.inside is None else block.inside
    first = 0 if block.opens else first_end(head, quote, inside)
    state = inside ^ bool(quotes & 1)
    while True:  # the first record end at or after the block's end
        end = first_end(np.frombuffer(data, dtype=np.uint8)[length:], quote, state)
        end = block.end + end if end >= 0 else size if fetched >= size else -1
        if end - block.end > limit or (end < 0 and fetched - block.end > limit):
            opening = block.start + first if first >= 0 else block.end
            return Aligned(inside, quotes, opening, opening, block.end), memoryview(b"")
        if end >= 0:
            break
        more = min(fetched + max(TAIL, fetched - block.end), size)  # twice as far each time
        data = bytes(data) + read(fetched, more)  # rare: a record straddles by over ``TAIL``
        fetched = more
    # no record starts in the block: the one before it runs past its end, and owns it all
    start = block.start + first if first >= 0 else end
    view = memoryview(data)[start - block.start : end - block.start]
    return Aligned(inside, quotes, start, end), view


def _guess(head: np.ndarray, quote: int | None) -> bool:
    """The likelier quote state before ``head``: the one whose first record end comes sooner
    (looking at more of ``head`` only while neither has one)."""
    window = 1 << 12
    while True:
        part = head[:window]
        outside, inside = (first_end(part, quote, state) for state in (False, True))
        if outside >= 0 or inside >= 0 or window >= len(head):
            return outside < 0 <= inside or 0 <= inside < outside
        window *= 16


def first_end(array: np.ndarray, quote: int | None, inside: bool) -> int:
    """The offset just after the first newline outside quotes in ``array`` (given the quote
    state before it), or -1; looks a few KiB ahead first, as a record end is usually near."""
    start, window = 0, 1 << 12
    while start < len(array):
        part = array[start : start + window]
        ends = _outside_newlines(part, quote, inside)
        if ends.size:
            return start + int(ends[0]) + 1
        if quote is not None:
            inside ^= bool(np.count_nonzero(part == quote) & 1)
        start += len(part)
        window = STEP
    return -1


@functools.cache
def raise_mmap_threshold(size: int) -> None:
    """Free one block of ``size`` bytes from malloc, once per size: glibc then serves blocks up
    to that size (32 MiB at most) from memory it holds rather than mapping each afresh, as its
    mmap threshold follows the largest block freed. The per-range numpy arrays of the stats
    (~1.5 MB each for 16 MiB ranges) were mapped and faulted in anew every range: a 1 GB gzip
    job took 116,000 page faults without this, 56,000 with it. No effect where the thresholds
    are set (``MALLOC_TRIM_THRESHOLD_`` and friends): glibc then keeps them fixed."""
    np.empty(size, dtype=np.uint8)  # malloc'ed and freed at once, never touched


# This thread's reused memory: ``read`` (``read_reusing``'s buffer), ``counting`` (what
# ``count_bytes`` reads into) and ``scratch`` (``count_in``'s comparisons). Fresh buffers per
# block were mapped and faulted in anew each time: tens of thousands of page faults a job.
_THREAD = threading.local()


def _buffer(size: int) -> memoryview:
    """This thread's read buffer, at least ``size`` bytes. Made a grain longer than asked: the
    ranges of a file differ by a few bytes (16 MiB and the rest of a record), and a buffer of
    exactly the first range's size was made again, and faulted in again, 4-5 times a file."""
    buffer: bytearray | None = getattr(_THREAD, "read", None)
    if buffer is None or len(buffer) < size:
        buffer = bytearray((size // BUFFER_GRAIN + 1) * BUFFER_GRAIN)
        raise_mmap_threshold(len(buffer))  # the range's numpy arrays then reuse freed memory
        _THREAD.read = buffer
    return memoryview(buffer)[:size]


def read_reusing(source: Source, start: int, end: int) -> memoryview:
    """Bytes ``start..end-1`` of ``source`` (fewer at its end) in this thread's read buffer,
    which its next read overwrites: one positioned read or ranged GET, and no fresh pages. A
    fresh ``bytes`` per 16 MiB block was faulted in anew each time (74,000 page faults, 0.4 s
    of system CPU, in a 300 MB job on S3)."""
    view = _buffer(end - start)
    return view[: source.readinto(start, view)]


def count_in(array: np.ndarray, byte: int) -> int:
    """How many times ``byte`` occurs in ``array``, compared a step at a time into this
    thread's scratch array: not into a fresh temporary per step, which malloc maps and unmaps
    each time where its thresholds are set (``MALLOC_TRIM_THRESHOLD_``, as Dask sets it for its
    processes): 64 page faults per 256 KiB step, 73,000 for a 300 MB file's quote count."""
    scratch: np.ndarray | None = getattr(_THREAD, "scratch", None)
    if scratch is None:
        scratch = _THREAD.scratch = np.empty(STEP, dtype=bool)
    total = 0
    for start in range(0, len(array), STEP):
        part = array[start : start + STEP]
        total += int(np.count_nonzero(np.equal(part, byte, out=scratch[: len(part)])))
    return total


def count_bytes(handle: InputFile, start: int, end: int, targets: tuple[int, ...]) -> list[int]:
    """How many times each byte of ``targets`` occurs in ``start..end-1`` of an open binary file
    (one read of the range for all of them)."""
    buffer: bytearray | None = getattr(_THREAD, "counting", None)
    if buffer is None:  # the same each call: 4 MiB, 1,024 page faults, per call were fresh
        buffer = _THREAD.counting = bytearray(STEP * 16)
    view = memoryview(buffer)
    array = np.frombuffer(buffer, dtype=np.uint8)
    totals = [0] * len(targets)
    position = start
    handle.seek(start)
    while position < end:
        got = handle.readinto(view[: min(len(buffer), end - position)])
        if not got:
            break
        for offset in range(0, got, STEP):  # each step once through the cache, for all bytes
            step = array[offset : min(offset + STEP, got)]
            for which, byte in enumerate(targets):
                totals[which] += count_in(step, byte)
        position += got
    return totals


def count_byte(handle: InputFile, start: int, end: int, byte: int) -> int:
    """How many times ``byte`` occurs in ``start..end-1`` of an open binary file."""
    return count_bytes(handle, start, end, (byte,))[0]


class RecordTooLong(Exception):
    """No record starts within ``limit`` bytes of ``position``: the record there is too long."""

    def __init__(self, position: int, limit: int) -> None:
        super().__init__(position, limit)
        self.position = position
        self.limit = limit


def first_record_start(
    handle: InputFile, position: int, inside: bool, quote: int | None, limit: int | None = None
) -> int:
    """The offset just after the first newline at or after ``position`` that is outside quotes,
    given the quote state before ``position``; the file's size when there is none.

    ``limit``: ``RecordTooLong`` when none is found within that many bytes (a record that long
    would make a range, and its worker's memory, as long as itself)."""
    handle.seek(position)
    origin = position
    while True:
        if limit is not None and position - origin > limit:
            raise RecordTooLong(origin, limit)
        window = handle.read(WINDOW)
        if not window:
            return position
        data = np.frombuffer(window, dtype=np.uint8)
        newlines = np.flatnonzero(data == NEWLINE)
        if quote is None:
            if newlines.size:
                return position + int(newlines[0]) + 1
            position += len(window)
            continue
        quotes = np.flatnonzero(data == quote)
        if newlines.size:
            before = np.searchsorted(quotes, newlines)  # quotes before each newline
            outside = ((before + int(inside)) & 1) == 0
            hits = np.flatnonzero(outside)
            if hits.size:
                return position + int(newlines[hits[0]]) + 1
        inside ^= bool(quotes.size & 1)
        position += len(window)


def scan_block(
    source: SourceLike, start: int, end: int, quote: int | None, lines: bool = False
) -> BlockScan:
    """Phase 1 for one block (in a worker): count its quote bytes, and its newlines if ``lines``."""
    targets = ((quote,) if quote is not None else ()) + ((NEWLINE,) if lines else ())
    if not targets:
        return BlockScan(start, end, 0)
    if isinstance(source, Source) and not source.is_local:
        # one read of the whole block (its pieces' GETs at once, not a file object's one GET
        # per 4 MiB after another), into the thread's read buffer
        array = np.frombuffer(read_reusing(source, start, end), dtype=np.uint8)
        counts = [count_in(array, byte) for byte in targets]
    else:
        with open_input(source, STEP * 16) as handle:
            counts = count_bytes(handle, start, end, targets)
    return BlockScan(
        start, end, counts[0] if quote is not None else 0, counts[-1] if lines else None
    )


def last_record_start(handle: InputFile, start: int, position: int, quote: int | None) -> int:
    """The start of the record that ``position`` is in, walking forward from ``start`` (a record
    start before it)."""
    record = start
    inside = False
    handle.seek(start)
    while start < position:
        window = handle.read(min(WINDOW, position - start))
        if not window:
            break
        data = np.frombuffer(window, dtype=np.uint8)
        newlines = np.flatnonzero(data == NEWLINE)
        if quote is not None:
            quotes = np.flatnonzero(data == quote)
            newlines = newlines[((np.searchsorted(quotes, newlines) + int(inside)) & 1) == 0]
            inside ^= bool(quotes.size & 1)
        if newlines.size:
            record = start + int(newlines[-1]) + 1
        start += len(window)
    return record


def blocks(data_start: int, size: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """The nominal blocks ``[start, end)`` covering the data part of a file."""
    edges = [*list(range(data_start, size, chunk_bytes)), size]
    return list(itertools.pairwise(edges))


def plan_ranges(
    source: SourceLike,
    data_start: int,
    size: int,
    scans: list[BlockScan],
    quote: int | None,
    max_record_bytes: int | None = None,
    *,
    file: int = 0,
    first_index: int = 0,
) -> list[CsvRange]:
    """Turn ordered block scans into record-aligned ranges covering ``data_start..size`` of input
    ``file``, numbered from ``first_index``.

    ``data_start`` is a record start, so it is outside quotes; the quote state at each later block
    start is the parity of the quotes counted in the blocks before it. ``RecordTooLong`` when a
    block starts inside a record longer than ``max_record_bytes``.
    """
    starts = [data_start]
    quotes = 0
    with open_input(source, WINDOW) as handle:
        for previous, scan in itertools.pairwise(scans):
            quotes += previous.quotes
            inside = bool(quotes & 1)
            try:
                start = first_record_start(handle, scan.start, inside, quote, max_record_bytes)
            except RecordTooLong as exc:
                record = last_record_start(handle, starts[-1], scan.start, quote)
                raise RecordTooLong(record, exc.limit) from None
            starts.append(start)
    starts.append(size)
    ranges: list[CsvRange] = []
    for left, right in itertools.pairwise(starts):
        left = max(left, ranges[-1].end if ranges else data_start)
        if right > left:
            ranges.append(CsvRange(first_index + len(ranges), left, right, file=file))
    if scans and all(scan.newlines is not None for scan in scans):
        ranges = _with_lines(source, ranges, scans)
    return ranges


def _with_lines(
    source: SourceLike, ranges: list[CsvRange], scans: list[BlockScan]
) -> list[CsvRange]:
    """``ranges`` with the line each starts on, from the blocks' newline counts: only the header
    and the few bytes from a block's start to its range's start are counted again."""
    block_starts = [scan.start for scan in scans]
    before = list(itertools.accumulate((scan.newlines or 0 for scan in scans), initial=0))
    placed = []
    with open_input(source, WINDOW) as handle:
        header = count_byte(handle, 0, block_starts[0], NEWLINE)
        for rng in ranges:  # every range starts at or after the first block's start
            block = bisect.bisect_right(block_starts, rng.start) - 1
            newlines = header + before[block]
            newlines += count_byte(handle, block_starts[block], rng.start, NEWLINE)
            placed.append(replace(rng, line=newlines + 1))
    return placed


def long_record(data: bytes, quote: int | None, limit: int) -> int | None:
    """The offset in ``data`` (whole records) of the first record longer than ``limit`` bytes,
    or ``None``: newlines outside quotes are the record ends."""
    array = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(array == NEWLINE)
    if quote is not None:
        quotes = np.flatnonzero(array == quote)
        newlines = newlines[(np.searchsorted(quotes, newlines) & 1) == 0]
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines + 1, [len(data)]))
    longer = np.flatnonzero(ends - starts > limit)
    return int(starts[longer[0]]) if longer.size else None


def ends_inside_quotes(scans: list[BlockScan]) -> bool:
    """True when the data holds an odd number of quotes: a quoted field is never closed."""
    return sum(scan.quotes for scan in scans) % 2 == 1


def unterminated_record(source: SourceLike, data_start: int, quote: int) -> int:
    """The offset of the record whose quoted field never closes (only called when one doesn't).

    Walks the file once: the field opened at the last quote that left the quote state odd, and
    its record starts after the last newline seen outside quotes before that quote.
    """
    record = data_start
    inside = False
    opened_record = data_start
    position = data_start
    with open_input(source, STEP * 16) as handle:
        handle.seek(data_start)
        while True:
            window = handle.read(WINDOW)
            if not window:
                return opened_record
            data = np.frombuffer(window, dtype=np.uint8)
            marks = np.flatnonzero((data == quote) | (data == NEWLINE))
            for offset in marks.tolist():
                if data[offset] == quote:
                    if not inside:
                        opened_record = record
                    inside = not inside
                elif not inside:
                    record = position + offset + 1
            position += len(window)


def line_of(source: SourceLike, offset: int) -> int:
    """The 1-based line number (counting every newline byte) that ``offset`` is on."""
    with open_input(source, STEP * 16) as handle:
        return count_byte(handle, 0, offset, NEWLINE) + 1
