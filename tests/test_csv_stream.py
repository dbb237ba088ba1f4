"""batchcore.processors.csv.stream: a front-to-back stream cut into chunks of whole records (quote
parity carried across pieces), each knowing its byte offset and line, in bounded memory."""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from csv_helpers import ROOT, csv_text, faults_in_child
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcore.processors.compression import open_input
from batchcore.processors.csv import stream as stream_module
from batchcore.processors.csv.split import RecordTooLong
from batchcore.processors.csv.stream import (
    StreamChunk,
    StreamRecordTooLong,
    UnterminatedQuote,
    record_chunks,
    split_header,
)
from batchcore.processors.errors import CompressedDataError

QUOTE = ord('"')
MiB = 1 << 20


class Trickle(io.RawIOBase):
    """A stream whose reads return at most ``most`` bytes (a socket, a decompressor)."""

    def __init__(self, data: bytes, most: int) -> None:
        super().__init__()
        self.data = io.BytesIO(data)
        self.most = most

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        return self.data.readinto(memoryview(buffer)[: self.most])


def chunks(
    data: bytes, chunk_bytes: int, quote: int | None = QUOTE, most: int = 0
) -> list[StreamChunk]:
    stream = Trickle(data, most) if most else io.BytesIO(data)
    return as_bytes(
        record_chunks(
            stream,  # type: ignore[arg-type]
            quote=quote,
            chunk_bytes=chunk_bytes,
            max_record_bytes=1 << 16,
        )
    )


def as_bytes(found: Iterable[StreamChunk]) -> list[StreamChunk]:
    """The chunks with their data as ``bytes``, to compare; each must be an Arrow buffer, which
    reaches a worker uncopied."""
    found = list(found)
    assert all(isinstance(chunk.data, pa.Buffer) for chunk in found)
    return [replace(chunk, data=memoryview(chunk.data).tobytes()) for chunk in found]


def parse(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline=""), strict=True))


def check(data: bytes, found: list[StreamChunk]) -> None:
    """The chunks tile ``data`` in order, each ends at a record end (parsed alone it gives the
    same rows as in the whole), and each knows its offset and line."""
    assert b"".join(chunk.data for chunk in found) == data
    assert [chunk.index for chunk in found] == list(range(len(found)))
    assert all(chunk.data for chunk in found)
    offset = 0
    for chunk in found:
        assert chunk.offset == offset
        assert chunk.line == data[:offset].count(b"\n") + 1
        offset += len(chunk.data)
    assert [row for chunk in found for row in parse(chunk.data)] == parse(data)


# --- the property ---

FIELD = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\xe9')), max_size=8)


@st.composite
def csv_texts(draw: st.DrawFn) -> bytes:
    width = draw(st.integers(1, 4))
    rows = draw(st.lists(st.lists(FIELD, min_size=width, max_size=width), max_size=12))
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    records = [csv_text([row], terminator, quoting=quoting) for row in rows]
    for _ in range(draw(st.integers(0, 3))):  # empty lines between records
        records.insert(draw(st.integers(0, len(records))), terminator)
    text = "".join(records)
    if draw(st.booleans()) and text.endswith(terminator):
        text = text[: -len(terminator)]  # no final newline
    return text.encode()


@settings(max_examples=400)
@given(
    data=csv_texts(),
    chunk_bytes=st.one_of(st.integers(1, 64), st.integers(65, 4096)),
    most=st.sampled_from([0, 1, 3, 7]),
)
def test_chunks_tile_the_stream_and_parse_to_the_same_rows(
    data: bytes, chunk_bytes: int, most: int
) -> None:
    check(data, chunks(data, chunk_bytes, most=most))


@settings(max_examples=100)
@given(
    rows=st.lists(st.text(alphabet="ab,\r\n ", max_size=10), max_size=20),
    chunk_bytes=st.integers(1, 64),
)
def test_without_a_quote_byte_every_newline_ends_a_record(
    rows: list[str], chunk_bytes: int
) -> None:
    data = "\n".join(rows).encode()
    found = chunks(data, chunk_bytes, quote=None)
    assert b"".join(chunk.data for chunk in found) == data
    assert all(chunk.data.endswith(b"\n") for chunk in found[:-1])
    assert [c.line for c in found] == [data[: c.offset].count(b"\n") + 1 for c in found]


def reference_records(data: bytes) -> tuple[list[tuple[int, int]], bool]:
    """Each record's [start, end) by a byte-at-a-time walk, and whether it ends inside quotes."""
    spans, start, inside = [], 0, False
    for position, byte in enumerate(data):
        if byte == QUOTE:
            inside = not inside
        elif byte == 10 and not inside:
            spans.append((start, position + 1))
            start = position + 1
    if start < len(data):
        spans.append((start, len(data)))
    return spans, inside


@settings(max_examples=400)
@given(
    data=st.binary(max_size=200).map(lambda raw: bytes(b'a,"\n\r'[b % 5] for b in raw)),
    chunk_bytes=st.integers(1, 64),
    limit=st.integers(1, 40),
)
def test_any_bytes_give_the_first_long_record_or_the_open_quote_or_whole_records(
    data: bytes, chunk_bytes: int, limit: int
) -> None:
    spans, open_quote = reference_records(data)
    long = [start for start, end in spans if end - start > limit]
    stream = io.BytesIO(data)
    run = record_chunks(stream, quote=QUOTE, chunk_bytes=chunk_bytes, max_record_bytes=limit)
    if long:
        with pytest.raises(StreamRecordTooLong) as caught:
            list(run)
        assert caught.value.position == long[0]
        assert caught.value.line == data[: long[0]].count(b"\n") + 1
    elif open_quote:
        with pytest.raises(UnterminatedQuote) as unterminated:
            list(run)
        assert unterminated.value.position == spans[-1][0]
    else:
        found = as_bytes(run)
        assert b"".join(chunk.data for chunk in found) == data
        ends = {end for _, end in spans}
        assert all(chunk.offset + len(chunk.data) in ends for chunk in found)


# --- examples ---


def test_a_quoted_newline_doubled_quotes_and_crlf_stay_inside_their_record() -> None:
    data = b'a,b\r\n1,"x\r\ny ""z""\n"\r\n\r\n2,q'
    for chunk_bytes in range(1, len(data) + 2):
        found = chunks(data, chunk_bytes)
        check(data, found)
        assert b"x\r\ny" not in b"".join(c.data[-3:] for c in found[:-1])


def test_chunks_are_about_chunk_bytes_long() -> None:
    data = b"".join(b"%08d,row\n" % i for i in range(10_000))  # 13-byte records
    found = chunks(data, 4096)
    assert all(4096 - 13 < len(chunk.data) <= 4096 + 13 for chunk in found[:-1])
    check(data, found)


def test_an_empty_stream_has_no_chunks() -> None:
    assert chunks(b"", 10) == []


def test_an_unterminated_quote_names_the_line_its_record_starts_on() -> None:
    data = b'h\n1,ok\n2,"fine\nstill"\n3,"never\nclosed\n4,x\n'
    for chunk_bytes in (1, 5, 64, 4096):
        with pytest.raises(UnterminatedQuote) as caught:
            chunks(data, chunk_bytes)
        assert (caught.value.position, caught.value.line) == (data.index(b"3,"), 5)
        assert "line 5" in str(caught.value) and "unterminated quote" in str(caught.value)
        assert pickle.loads(pickle.dumps(caught.value)).line == 5


@pytest.mark.parametrize("chunk_bytes", [1, 7, 100, 1000])
@pytest.mark.parametrize("last", [True, False])
def test_a_record_longer_than_max_record_bytes_is_an_error_where_it_starts(
    chunk_bytes: int, last: bool
) -> None:
    long = b'3,"' + b"x\n" * 30 + b'"\n'  # 65 bytes, 31 lines
    data = b"h\n1,a\n2,b\n" + long + (b"" if last else b"4,d\n")
    with pytest.raises(StreamRecordTooLong) as caught:
        list(
            record_chunks(
                io.BytesIO(data), quote=QUOTE, chunk_bytes=chunk_bytes, max_record_bytes=64
            )
        )
    error = caught.value
    assert isinstance(error, RecordTooLong)
    assert (error.position, error.limit, error.line) == (data.index(b"3,"), 64, 4)
    assert pickle.loads(pickle.dumps(error)).line == 4
    ok = as_bytes(
        record_chunks(io.BytesIO(data), quote=QUOTE, chunk_bytes=chunk_bytes, max_record_bytes=65)
    )
    check(data, ok)


def test_a_record_without_an_end_stops_growing_at_max_record_bytes() -> None:
    endless = b"h\n" + b'"' + b"x" * (1 << 20)  # a binary file, or a quote never closed
    with pytest.raises(StreamRecordTooLong) as caught:
        list(
            record_chunks(io.BytesIO(endless), quote=QUOTE, chunk_bytes=1024, max_record_bytes=4096)
        )
    assert (caught.value.position, caught.value.line) == (2, 2)


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("chunk_bytes", 0, ValueError),
        ("chunk_bytes", 1.5, TypeError),
        ("max_record_bytes", -1, ValueError),
        ("max_record_bytes", True, TypeError),
    ],
)
def test_sizes_are_checked(name: str, value: object, error: type[Exception]) -> None:
    sizes = {"chunk_bytes": 10, "max_record_bytes": 10, name: value}
    with pytest.raises(error, match=name):
        list(record_chunks(io.BytesIO(b"a\n"), quote=QUOTE, **sizes))  # type: ignore[arg-type]


def test_split_header_gives_the_header_and_the_rest_with_its_line() -> None:
    data = b'a,"b\nc"\n1,2\n3,4\n'
    first = chunks(data, 1 << 10)[0]
    header, rest = split_header(first, QUOTE)
    assert header == b'a,"b\nc"\n'
    assert rest == StreamChunk(0, b"1,2\n3,4\n", len(header), 3)
    assert split_header(chunks(b"a,b\n", 10)[0], QUOTE) == (b"a,b\n", None)
    assert split_header(chunks(b"a,b", 10)[0], QUOTE) == (b"a,b", None)


# --- through a decompressor ---


def test_a_gzip_stream_is_chunked_like_the_plain_text() -> None:
    data = b"".join(b'%d,"note %d\nsecond line"\n' % (i, i) for i in range(50_000))
    kind, stream = open_input(io.BytesIO(gzip.compress(data)))
    found = as_bytes(
        record_chunks(stream, quote=QUOTE, chunk_bytes=64 << 10, max_record_bytes=1024)
    )
    assert kind == "gzip"
    check(data, found)


def test_a_truncated_gzip_stream_fails_the_iteration_instead_of_ending_it_short() -> None:
    data = b"".join(b"%d,row\n" % i for i in range(1_000_000))
    blob = gzip.compress(data, compresslevel=1)
    _, stream = open_input(io.BytesIO(blob[: len(blob) // 2]))
    seen = 0
    with pytest.raises(CompressedDataError, match="gzip-compressed data is truncated"):
        for chunk in record_chunks(
            stream, quote=QUOTE, chunk_bytes=64 << 10, max_record_bytes=1024
        ):
            seen += len(chunk.data)
    assert 0 < seen < len(data)


# --- memory ---

# The child scripts' input: TOTAL bytes of CSV made on the fly (argv: TOTAL, CHUNK), no file and
# no copy of the whole held anywhere; whole records, so the stream ends at a record end.
ENDLESS = """
import io, sys

TOTAL, CHUNK = int(sys.argv[1]), int(sys.argv[2])
ROW = b'%d,2024-01-01,"a note, with\\na newline",%d.5\\n'
PATTERN = b"".join(ROW % (i, i) for i in range(30_000))
TOTAL -= TOTAL % len(PATTERN)

class Endless(io.RawIOBase):
    def __init__(self):
        self.left = TOTAL
        self.at = 0
    def readable(self):
        return True
    def readinto(self, buffer):
        size = min(len(buffer), self.left, len(PATTERN) - self.at)
        buffer[:size] = memoryview(PATTERN)[self.at : self.at + size]  # no copy of its own
        self.at = (self.at + size) % len(PATTERN)
        self.left -= size
        return size
"""

MEMORY_CHILD = ENDLESS + textwrap.dedent(
    """
    import io, sys
    from batchcore.processors.csv.stream import record_chunks


    stream = io.BufferedReader(Endless(), 1 << 20)
    chunks = record_chunks(stream, quote=34, chunk_bytes=CHUNK, max_record_bytes=1 << 20)
    def status(field):  # kB from /proc: VmHWM is this process's own peak (ru_maxrss is not:
        # Linux carries the parent's peak over fork and exec)
        with open("/proc/self/status") as lines:
            return next(int(l.split()[1]) * 1024 for l in lines if l.startswith(field))

    total = len(next(chunks).data)  # numpy and the first buffers are warm
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # start the peak (VmHWM) afresh from here
    base = status("VmRSS:")
    for chunk in chunks:
        total += len(chunk.data)
    assert total == TOTAL, total
    print(status("VmHWM:") - base)
    """
)


@pytest.mark.slow
def test_memory_stays_about_two_chunks_on_a_200_mb_stream() -> None:
    chunk_bytes = 4 * MiB
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(200 * 10**6), str(chunk_bytes)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout.strip())
    bound = 3 * chunk_bytes + 8 * MiB  # the chunk handed out, the buffer being filled, a margin
    assert growth < bound, (
        f"peak RSS grew {growth / MiB:.1f} MiB over 200 MB, bound {bound / MiB:.0f} MiB"
    )


FAULTS_CHILD = ENDLESS + textwrap.dedent(
    """
    import io, resource, sys
    from batchcore.processors.csv.stream import record_chunks


    chunks = record_chunks(Endless(), quote=34, chunk_bytes=CHUNK, max_record_bytes=1 << 20)
    total = sum(len(next(chunks).data) for _ in range(3))  # the buffers in use are faulted in
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for chunk in chunks:
        total += len(chunk.data)
    assert total == TOTAL, total
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("trim", [None, "65536"], ids=["malloc-default", "malloc-trim-set"])
def test_chunk_buffers_are_used_again_not_faulted_in_afresh(trim: str | None) -> None:
    """A fresh buffer per chunk costs a page fault per 4 KiB page (and far more where huge
    pages must be backed anew): ~0.5 s of system time per GB. Chunks of 16 MiB (the default;
    Arrow's jemalloc, used before, kept smaller ones) over 200 MB, one held at a time: the
    buffers are faulted in once, not per chunk. Also where glibc's thresholds are set (Dask sets
    ``MALLOC_TRIM_THRESHOLD_`` for the processes it starts), which maps every temporary array
    over 128 KiB afresh."""
    faults = faults_in_child(FAULTS_CHILD, str(200 * 10**6), str(16 * MiB), trim=trim, timeout=300)
    fresh = 200 * 10**6 // 4096  # every page of every chunk faulted in afresh
    assert faults < fresh // 10, f"{faults} page faults over 200 MB (afresh: {fresh})"


def test_a_chunk_still_held_is_never_filled_again() -> None:
    """Buffers are used again only when nothing holds them: a chunk, a slice of it or a numpy
    view of its bytes keeps its buffer from being refilled while later chunks are read."""
    data = b"".join(b'%d,"x, %d"\n' % (i, i * 7) for i in range(200_000))
    found = record_chunks(
        io.BytesIO(data), quote=QUOTE, chunk_bytes=64 << 10, max_record_bytes=1024
    )
    held: list[tuple[int, Any, bytes]] = []
    for number, chunk in enumerate(found):
        keeper: Any = chunk.data
        if number % 3 == 1:
            keeper = chunk.data.slice(5, 100)
        elif number % 3 == 2:
            keeper = np.frombuffer(chunk.data, dtype=np.uint8)
        held.append((number, keeper, bytes(memoryview(keeper))))
        del chunk, keeper
        if len(held) > 4:  # let the oldest go; check what is still held is unchanged
            held.pop(0)
        for at, keeper, copy in held:
            assert bytes(memoryview(keeper)) == copy, at


def test_streams_in_threads_share_buffers_safely() -> None:
    """The buffers are shared by the streams of a process (parts read by several threads):
    each stream's chunks still hold exactly its own bytes."""
    texts = [
        b"".join(b'%d,"%s, %d"\n' % (i, name, i) for i in range(100_000)) for name in (b"a", b"b")
    ]
    joined: dict[int, list[bytes]] = {0: [], 1: []}

    def read(which: int) -> None:
        stream = io.BytesIO(texts[which])
        held: list[pa.Buffer | bytes] = []
        for chunk in record_chunks(
            stream, quote=QUOTE, chunk_bytes=32 << 10, max_record_bytes=1024
        ):
            held = [*held[-2:], chunk.data]
            joined[which].append(bytes(chunk.data))
            assert all(
                bytes(data) == joined[which][-len(held) + at] for at, data in enumerate(held)
            )

    threads = [threading.Thread(target=read, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [b"".join(joined[which]) for which in (0, 1)] == texts


def test_streams_one_after_another_use_the_same_few_buffers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files read one after another, two streams under way at a time (the CSV node reads the
    next parts of a folder ahead), the last few chunks held: their chunk buffers come from the
    same few. A chunk of exactly ``chunk_bytes`` (a file's first, which carries nothing over)
    and the next, longer by the partial record carried into it, both fit."""
    made: list[int] = []

    def counted(size: int) -> bytearray:
        made.append(size)
        return bytearray(size)

    monkeypatch.setattr(stream_module, "bytearray", counted, raising=False)
    chunk_bytes = 1 << 20
    row = b'%d,"a note, with a comma",%d.5\n'
    rows = chunk_bytes // len(row % (0, 0))
    files = [  # of 2.5 to 4.5 chunks, so that no two end at the same turn
        b"".join(row % (i, part) for i in range(rows * (5 + part % 5) // 2)) for part in range(16)
    ]
    waiting = [
        record_chunks(io.BytesIO(data), quote=QUOTE, chunk_bytes=chunk_bytes, max_record_bytes=1024)
        for data in files
    ]
    running = [waiting.pop(0), waiting.pop(0)]
    held: list[StreamChunk] = []
    while running:  # a chunk from each running stream in turn; an ended one makes room
        for stream in list(running):
            chunk = next(stream, None)
            if chunk is None:
                running.remove(stream)
                running += waiting[:1]
                del waiting[:1]
            else:
                held = [*held[-3:], chunk]
    assert len(made) <= 8, [size >> 20 for size in made]


THRESHOLD_CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from batchcore.processors.csv.split import raise_mmap_threshold

    if sys.argv[1] == "raised":
        raise_mmap_threshold(17 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):  # a range's temporaries: made and written together, then freed
        arrays = [np.ones(200_000, dtype=np.int64) for _ in range(4)]
        del arrays
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_arrays_of_a_range_reuse_memory_once_the_threshold_is_raised() -> None:
    """The stats make a few 1.6 MB numpy arrays per range; glibc hands their pages back when
    they are freed (its trim threshold follows its mmap threshold, twice the largest block freed
    so far) and faults them in afresh for the next range, unless a larger malloc'ed block has
    been freed. The first chunk buffer (or read buffer) frees one."""
    faults = {mode: faults_in_child(THRESHOLD_CHILD, mode) for mode in ("default", "raised")}
    afresh = 100 * 4 * 200_000 * 8 // 4096
    assert faults["raised"] < afresh // 10 < faults["default"], faults
