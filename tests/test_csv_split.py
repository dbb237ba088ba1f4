"""batchcore.processors.csv.split: record-aligned byte ranges found by quote parity (no parsing)."""

from __future__ import annotations

import csv
import io
import itertools
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from csv_helpers import csv_text, write_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcore.processors.csv.split import (
    STEP,
    WINDOW,
    BlockScan,
    CsvBlock,
    CsvRange,
    align_block,
    blocks,
    ends_inside_quotes,
    line_of,
    plan_ranges,
    scan_block,
    unterminated_record,
)

QUOTE = ord('"')


def split(
    path: Path, data_start: int, chunk_bytes: int, quote: int | None = QUOTE
) -> list[CsvRange]:
    """Phase 1 and 2 exactly as CSVBatchNode.split runs them, in this process."""
    size = path.stat().st_size
    scans = [scan_block(str(path), a, b, quote) for a, b in blocks(data_start, size, chunk_bytes)]
    return plan_ranges(str(path), data_start, size, scans, quote)


def record_ends(data: bytes, start: int = 0) -> set[int]:
    """Offsets just after every newline that is outside quotes (true record boundaries)."""
    ends = set()
    inside = False
    for offset in range(start, len(data)):
        byte = data[offset]
        if byte == QUOTE:
            inside = not inside
        elif byte == 10 and not inside:
            ends.add(offset + 1)
    return ends


def check_ranges(data: bytes, data_start: int, ranges: list[CsvRange]) -> None:
    """Ranges tile ``data_start..len(data)`` in order, each one is non-empty, starts and ends on
    a record boundary, and parses to whole records (the same records as the whole data)."""
    size = len(data)
    if data_start == size:
        assert ranges == []
        return
    assert [r.index for r in ranges] == list(range(len(ranges)))
    assert ranges[0].start == data_start
    assert ranges[-1].end == size
    for left, right in itertools.pairwise(ranges):
        assert left.end == right.start
    boundaries = record_ends(data, data_start) | {size}
    for r in ranges:
        assert r.size > 0
        assert r.end in boundaries, (r, data[max(r.end - 5, 0) : r.end + 5])
        assert data[r.start : r.end].count(b'"') % 2 == 0
    whole = list(csv.reader(io.StringIO(data[data_start:].decode(), newline="")))
    pieces = []
    for r in ranges:
        pieces += list(csv.reader(io.StringIO(data[r.start : r.end].decode(), newline="")))
    assert pieces == whole


# --- blocks and scans ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_start", "size", "chunk", "expected"),
    [
        (0, 10, 4, [(0, 4), (4, 8), (8, 10)]),
        (3, 10, 4, [(3, 7), (7, 10)]),
        (0, 10, 10, [(0, 10)]),
        (0, 10, 100, [(0, 10)]),
        (5, 5, 4, []),
        (0, 3, 1, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_blocks_cover_the_data_exactly(
    data_start: int, size: int, chunk: int, expected: list[tuple[int, int]]
) -> None:
    assert blocks(data_start, size, chunk) == expected


def test_scan_block_counts_quote_bytes(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "q.csv", b'a,"b""c"\n"x",y\n')
    assert path.stat().st_size == 15
    assert scan_block(str(path), 0, 15, QUOTE) == BlockScan(0, 15, 6)
    assert scan_block(str(path), 2, 9, QUOTE).quotes == 4
    assert scan_block(str(path), 0, 15, None) == BlockScan(0, 15, 0)


def test_scan_block_counts_across_numpy_steps(tmp_path: Path) -> None:
    """A block bigger than one numpy step and one read buffer counts every quote once."""
    data = (b'"' + b"x" * 1000 + b'"\n') * (STEP * 20 // 1000)
    path = write_bytes(tmp_path / "big.csv", data)
    assert len(data) > STEP * 16
    assert scan_block(str(path), 0, len(data), QUOTE).quotes == data.count(b'"')
    assert scan_block(str(path), 7, len(data) - 3, QUOTE).quotes == data[7:-3].count(b'"')


def test_ends_inside_quotes_is_the_parity_of_all_quotes() -> None:
    assert not ends_inside_quotes([BlockScan(0, 1, 1), BlockScan(1, 2, 3)])
    assert ends_inside_quotes([BlockScan(0, 1, 2), BlockScan(1, 2, 1)])
    assert not ends_inside_quotes([])


def test_line_of_counts_every_newline_byte(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "l.csv", b'a,b\r\n"x\ny",1\n2,3\n')
    assert line_of(str(path), 0) == 1
    assert line_of(str(path), 5) == 2  # just after the first CRLF
    assert line_of(str(path), 8) == 3  # inside the quoted field, after its newline
    assert line_of(str(path), 14) == 4


def test_unterminated_record_finds_the_record_that_opens_the_quote(tmp_path: Path) -> None:
    data = b'a,b\n1,"fine\nstill fine"\n2,3\n4,"never closed\n5,6\n7,8\n'
    path = write_bytes(tmp_path / "u.csv", data)
    offset = unterminated_record(str(path), 4, QUOTE)
    assert offset == data.index(b'4,"never')
    assert line_of(str(path), offset) == 5


def test_unterminated_record_across_read_windows(tmp_path: Path) -> None:
    head = b"a,b\n" + b"1,2\n" * (WINDOW // 2)  # the bad record starts past the first window
    data = head + b'3,"open' + b"x" * WINDOW + b"\n4,5\n"
    path = write_bytes(tmp_path / "u.csv", data)
    assert unterminated_record(str(path), 4, QUOTE) == len(head)


# --- plan_ranges -----------------------------------------------------------------------------


def test_a_newline_inside_quotes_is_not_a_boundary(tmp_path: Path) -> None:
    data = b'h\n"a\nb\nc\nd"\n"e\n"\nf\n'
    path = write_bytes(tmp_path / "n.csv", data)
    for chunk in range(1, len(data) + 2):
        ranges = split(path, 2, chunk)
        check_ranges(data, 2, ranges)
        assert {r.start for r in ranges} <= {2, 12, 17}


def test_crlf_split_between_blocks_stays_in_one_range(tmp_path: Path) -> None:
    data = b"h\r\n1\r\n2\r\n3\r\n"
    path = write_bytes(tmp_path / "crlf.csv", data)
    for chunk in range(1, 6):
        ranges = split(path, 3, chunk)
        check_ranges(data, 3, ranges)
        assert all(data[r.start : r.end].endswith(b"\r\n") for r in ranges)


def test_a_quoted_field_longer_than_a_block_joins_the_range_before(tmp_path: Path) -> None:
    long_field = b'"' + b"line\n" * 200 + b'"'
    data = b"h,i\n1,2\n" + long_field + b",3\n4,5\n"
    path = write_bytes(tmp_path / "long.csv", data)
    ranges = split(path, 4, 16)
    check_ranges(data, 4, ranges)
    assert len(ranges) < len(blocks(4, len(data), 16))  # blocks inside the field merged away
    assert any(long_field in data[r.start : r.end] for r in ranges)


def test_a_quoted_field_longer_than_the_read_window(tmp_path: Path) -> None:
    """The boundary search reads 64 KiB windows: the quote state must carry across them."""
    field = 'say "hi"\n' * (3 * WINDOW // 9)
    rows = [["h", "i"], ["1", "2"], [field, "3"], ["4", "5"]]
    data = csv_text(rows).encode()
    assert len(data) > 3 * WINDOW
    path = write_bytes(tmp_path / "window.csv", data)
    limit = csv.field_size_limit(len(data))  # the stdlib reader refuses such a field by default
    try:
        for chunk in (1000, WINDOW - 7, WINDOW + 13):
            ranges = split(path, 4, chunk)
            check_ranges(data, 4, ranges)
            assert ranges[-1].start == len(data) - 4  # "4,5" after the field: its own range
    finally:
        csv.field_size_limit(limit)


def test_no_quote_char_splits_at_every_newline(tmp_path: Path) -> None:
    data = b'h\n"a\nb"\nc\n'
    path = write_bytes(tmp_path / "nq.csv", data)
    ranges = split(path, 2, 1, quote=None)
    assert [(r.start, r.end) for r in ranges] == [(2, 5), (5, 8), (8, 10)]


def test_data_without_a_final_newline_keeps_its_last_record(tmp_path: Path) -> None:
    data = b"h\n1\n2\n3"
    path = write_bytes(tmp_path / "nofinal.csv", data)
    for chunk in range(1, 8):
        ranges = split(path, 2, chunk)
        check_ranges(data, 2, ranges)
        assert ranges[-1].end == len(data)


def test_header_only_gives_no_ranges(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "h.csv", b"a,b\n")
    assert split(path, 4, 3) == []


def test_csv_range_size() -> None:
    assert CsvRange(0, 10, 25).size == 15


# --- the property ----------------------------------------------------------------------------

FIELD = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\xe9\u20ac')), max_size=8)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    width = draw(st.integers(1, 4))
    rows = draw(st.lists(st.lists(FIELD, min_size=width, max_size=width), max_size=12))
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    header = [f"c{i}" for i in range(width)]
    text = csv_text([header, *rows], terminator, quoting=quoting)
    if not draw(st.booleans()) and text.endswith(terminator):
        text = text[: -len(terminator)]  # no final newline
    return text.encode()


@settings(max_examples=400)
@given(data=csv_files(), chunk_bytes=st.integers(1, 40))
def test_ranges_tile_the_data_and_parse_to_whole_records(data: bytes, chunk_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_bytes(Path(folder) / "p.csv", data)
        data_start = min(record_ends(data) | {len(data)})  # after the header record
        check_ranges(data, data_start, split(path, data_start, chunk_bytes))


@settings(max_examples=40)
@given(data=csv_files(), chunk_bytes=st.integers(1, 40), quoted=st.booleans())
def test_counted_lines_give_each_range_its_starting_line(
    data: bytes, chunk_bytes: int, quoted: bool
) -> None:
    # bad_rows="skip" counts newlines in phase 1, so skipped rows are located without rereading
    # the file from its start for every range.
    quote = QUOTE if quoted else None
    with tempfile.TemporaryDirectory() as folder:
        path = write_bytes(Path(folder) / "p.csv", data)
        data_start = min(record_ends(data) | {len(data)})
        size = len(data)
        spans = blocks(data_start, size, chunk_bytes)
        scans = [scan_block(str(path), a, b, quote, lines=True) for a, b in spans]
        assert [scan.newlines for scan in scans] == [data[a:b].count(b"\n") for a, b in spans]
        ranges = plan_ranges(str(path), data_start, size, scans, quote)
        assert [r.line for r in ranges] == [line_of(str(path), r.start) for r in ranges]
        plain = plan_ranges(
            str(path),
            data_start,
            size,
            [scan_block(str(path), a, b, quote) for a, b in spans],
            quote,
        )
        assert all(r.line is None for r in plain)


def cut_by_guessing(
    data: bytes, data_start: int, chunk_bytes: int, limit: int = 1 << 20
) -> tuple[list[CsvRange], int]:
    """Blocks cut as CSVBatchNode cuts a remote file: each by its worker after one read, with a
    guessed quote state, then the wrong guesses redone with the true state (the parent's
    check). The ranges, and how many guesses were wrong."""
    reads: list[tuple[int, int]] = []

    def read(start: int, end: int) -> bytes:
        reads.append((start, end))
        return data[start:end]

    ranges, wrong, inside = [], 0, False
    for index, (start, end) in enumerate(blocks(data_start, len(data), chunk_bytes)):
        opens = start == data_start
        block = CsvBlock(index, start, end, inside=False if opens else None, opens=opens)
        aligned, view = align_block(read, block, len(data), QUOTE, limit)
        if aligned.inside != inside:
            wrong += 1
            block = replace(block, inside=inside)
            aligned, view = align_block(read, block, len(data), QUOTE, limit)
        assert aligned.inside == inside and aligned.too_long is None
        assert bytes(view) == data[aligned.start : aligned.end]
        if aligned.end > aligned.start:
            ranges.append(CsvRange(len(ranges), aligned.start, aligned.end))
        inside ^= bool(aligned.quotes & 1)
    assert all(start < end for start, end in reads)
    return ranges, wrong


@settings(max_examples=300)
@given(data=csv_files(), chunk_bytes=st.integers(1, 40))
def test_blocks_cut_after_one_read_give_the_ranges_of_the_quote_count(
    data: bytes, chunk_bytes: int
) -> None:
    """Whatever the guesses, the checked blocks are the ranges the two-pass split finds."""
    with tempfile.TemporaryDirectory() as folder:
        path = write_bytes(Path(folder) / "p.csv", data)
        data_start = min(record_ends(data) | {len(data)})
        ranges, _ = cut_by_guessing(data, data_start, chunk_bytes)
        assert ranges == split(path, data_start, chunk_bytes)


def test_the_guess_is_right_where_quoted_fields_hold_no_newline() -> None:
    """Blocks that start inside a quoted field with commas (not newlines) are guessed right, so
    such files are read once; quoted newlines make wrong guesses, which the check redoes."""
    notes = ["gift wrap, please", 'size 27" monitor, "rush"', "", "fragile"]
    rows = [[i, "East", notes[i % 4] * (i % 7)] for i in range(3000)]
    data = csv_text([["id", "region", "note"], *rows]).encode()
    start = data.index(b"\n") + 1
    ranges, wrong = cut_by_guessing(data, start, 997)
    assert wrong == 0 and len(ranges) > 50
    lines = csv_text([["id", "note"], *([i, "a\nb\nc\nd"] for i in range(3000))]).encode()
    ranges, wrong = cut_by_guessing(lines, lines.index(b"\n") + 1, 997)
    assert wrong > 5
    check_ranges(lines, lines.index(b"\n") + 1, ranges)


def test_a_record_that_runs_past_the_limit_is_reported_not_read_on() -> None:
    data = b"h\n" + b"a\n" * 10 + b'"' + b"x" * 5000 + b'"\n' + b"b\n" * 10
    reads: list[tuple[int, int]] = []

    def read(start: int, end: int) -> bytes:
        reads.append((start, end))
        return data[start:end]

    block = CsvBlock(0, 2, 30, inside=False, opens=True)
    aligned, view = align_block(read, block, len(data), QUOTE, limit=1000)
    assert aligned.too_long == 30 and aligned.start == 2 and not len(view)
    assert max(end for _, end in reads) < 30 + 1000 + (1 << 16)


# --- who counts: the parent only while the pool boots ----------------------------------------


def test_an_idle_pool_knows_when_its_workers_have_booted() -> None:
    """``is_warm`` turns true once the workers are up, without a batch having run."""
    import time

    from batchcore.backends.process import ProcessBackend

    with ProcessBackend(2) as backend:
        backend.start()
        deadline = time.monotonic() + 60
        while not backend.is_warm() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.is_warm()


def test_workers_take_over_the_quote_count_once_booted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cold pool the parent counts blocks only until the workers are ready; they count the
    rest, and the ranges are the ones a count in one place gives."""
    import time

    from csv_helpers import RowsNode

    import batchcore.processors.csv.node as node_module
    from batchcore.backends.process import ProcessBackend

    rows = [["id", "text", "pad"]] + [[i, f"a\nb{i}", "x" * (i % 7)] for i in range(20_000)]
    path = write_bytes(tmp_path / "q.csv", csv_text(rows).encode())
    chunk_bytes = 2 << 10
    spans = blocks(len(b"id,text,pad\n"), path.stat().st_size, chunk_bytes)
    counted_here: list[int] = []
    scan = node_module.scan_block

    def slow_scan(*args: object, **kwargs: object) -> BlockScan:
        counted_here.append(1)
        time.sleep(0.02)  # the parent is far slower than the workers: they must take over
        return scan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(node_module, "scan_block", slow_scan)
    with ProcessBackend(2) as backend:
        node = RowsNode(str(path), chunk_bytes=chunk_bytes, backend=backend)
        shared: dict[str, Any] = {}
        node.run(shared)
        ranges = node.split(str(path))  # the pool is warm now: the workers count everything
    assert 0 < len(counted_here) < len(spans) > 100
    monkeypatch.undo()
    assert ranges == split(path, len(b"id,text,pad\n"), chunk_bytes)
    assert [r[0] for r in shared["rows"]] == list(range(20_000))
