"""A large read of a remote object is several ranged GETs in flight at once, into one buffer:
the pieces, the pool that fetches them, and reads of a real S3 server (moto) through it."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from csv_helpers import SALES, run_script, script_says
from hypothesis import given
from hypothesis import strategies as st

from batchcore.processors import arrow_s3, parallel_reads, storage
from batchcore.processors.csv.jobs import csv_stats
from batchcore.processors.parallel_reads import GET_PIECE, MAX_GETS, pieces, run_all
from batchcore.processors.storage_errors import StorageError


@given(start=st.integers(0, 1 << 40), length=st.integers(0, 64 << 20), count=st.integers(1, 16))
def test_pieces_cover_the_read_exactly_in_order(start: int, length: int, count: int) -> None:
    spans = pieces(start, length, count)
    assert spans[0][0] == start and spans[-1][1] == start + length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert 1 <= len(spans) <= count
    if len(spans) > 1:
        assert all(end - at >= GET_PIECE // 2 for at, end in spans)
        assert max(e - a for a, e in spans) - min(e - a for a, e in spans) <= len(spans)


def test_a_block_is_cut_into_max_gets_pieces_and_a_short_read_is_one() -> None:
    assert len(pieces(0, 16 << 20, MAX_GETS)) == MAX_GETS
    assert pieces(5, GET_PIECE * 2 - 1, MAX_GETS) == [(5, 5 + GET_PIECE * 2 - 1)]
    assert pieces(7, 0, MAX_GETS) == [(7, 7)]


def test_run_all_returns_in_order_and_waits_for_every_piece_even_when_one_fails() -> None:
    ended: list[int] = []

    def slow(value: int) -> int:
        time.sleep(0.2)
        ended.append(value)
        return value

    assert run_all([lambda: 1, lambda: slow(2), lambda: slow(3)]) == [1, 2, 3]

    def fail() -> int:
        raise ValueError("first piece")

    ended.clear()
    with pytest.raises(ValueError, match="first piece"):
        run_all([fail, lambda: slow(2), lambda: slow(3)])
    assert sorted(ended) == [2, 3]  # the others had ended (their buffer is the caller's)

    def fail_later() -> int:
        raise KeyError("third piece")

    with pytest.raises(KeyError, match="third piece"):
        run_all([lambda: 1, lambda: slow(2), fail_later])


def test_a_forked_child_reads_with_a_pool_of_its_own() -> None:
    assert run_all([lambda: 1, lambda: 2]) == [1, 2]  # this process's pool has threads now
    pid = os.fork()
    if pid == 0:  # the parent's threads are not here: the child must start its own
        try:
            code = 0 if run_all([lambda: 1, lambda: 2]) == [1, 2] else 1
        finally:
            os._exit(locals().get("code", 1))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on its parent's pool")


# --- reads of a real S3 server ------------------------------------------------------------------

pytest.importorskip("s3fs")
pytest.importorskip("moto")

SIZE = 9 << 20  # two pieces of 4.5 MiB


@pytest.fixture
def big_object(
    s3_bucket: str, s3_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[storage.Source, bytes]:
    """A 9 MiB object, read in pieces whatever its store's speed (``FIXED_GETS``)."""
    import s3fs

    monkeypatch.setattr(parallel_reads, "FIXED_GETS", MAX_GETS)
    data = bytes(range(251)) * (SIZE // 251 + 1)
    data = data[:SIZE]
    s3fs.S3FileSystem(**s3_storage_options).pipe(f"{s3_bucket}/big.bin", data)
    return storage.Source(f"s3://{s3_bucket}/big.bin", SIZE, s3_storage_options), data


def spy_gets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """The ranged GETs Arrow's client makes: ``(start, length, thread)`` each."""
    gets: list[tuple[int, int, int]] = []
    real = arrow_s3.read_into

    def counting(*args: Any) -> int | None:
        start, buffer = args[-2], args[-1]
        gets.append((start, len(buffer), threading.get_ident()))
        return real(*args)

    monkeypatch.setattr(arrow_s3, "read_into", counting)
    return gets


def test_a_large_read_is_pieces_fetched_at_once_into_the_buffer(
    big_object: tuple[storage.Source, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, data = big_object
    gets = spy_gets(monkeypatch)
    buffer = memoryview(bytearray(SIZE + 1000))  # longer than the object: the size bounds it
    assert source.readinto(0, buffer) == SIZE
    assert bytes(buffer[:SIZE]) == data
    assert sorted((start, length) for start, length, _ in gets) == [
        (0, SIZE // 2),
        (SIZE // 2, SIZE // 2),
    ]
    assert len({thread for *_, thread in gets}) == 2  # the second piece in the pool

    gets.clear()
    tail = memoryview(bytearray(1 << 20))  # a short read near the end: one GET
    assert source.readinto(SIZE - 1000, tail) == 1000
    assert bytes(tail[:1000]) == data[-1000:] and len(gets) == 1


def test_a_piece_that_fails_once_is_retried_alone(
    big_object: tuple[storage.Source, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, data = big_object
    gets = spy_gets(monkeypatch)
    spied = arrow_s3.read_into
    failed: list[int] = []

    def flaky(*args: Any) -> int | None:
        if args[-2] > 0 and not failed:
            failed.append(args[-2])
            raise ConnectionResetError("connection reset by peer")
        return spied(*args)

    monkeypatch.setattr(arrow_s3, "read_into", flaky)
    monkeypatch.setattr("batchcore.processors.storage_errors.BASE_DELAY", 0.01)
    buffer = memoryview(bytearray(SIZE))
    assert source.readinto(0, buffer) == SIZE and bytes(buffer) == data
    assert failed == [SIZE // 2]
    assert sorted(start for start, *_ in gets) == [0, SIZE // 2]  # the first piece read once


def test_a_piece_that_keeps_failing_fails_the_read_naming_the_url_after_the_others_end(
    big_object: tuple[storage.Source, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = big_object
    real = arrow_s3.read_into
    ended: list[float] = []

    def denied_first(*args: Any) -> int | None:
        if args[-2] == 0:  # the piece this thread reads
            raise PermissionError("AWS Error ACCESS_DENIED during GetObject operation")
        got = real(*args)
        time.sleep(0.3)  # the pool's piece still writes into the buffer well after
        ended.append(time.monotonic())
        return got

    monkeypatch.setattr(arrow_s3, "read_into", denied_first)
    with pytest.raises(StorageError, match=r"big\.bin") as raised:
        source.readinto(0, memoryview(bytearray(SIZE)))
    assert ended, "readinto returned while the first piece was still being written"
    assert "denied" in str(raised.value).lower()


def test_without_the_pool_every_read_is_one_get(
    big_object: tuple[storage.Source, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One GET per read turns the pieces off: what the pool adds is the only change."""
    source, data = big_object
    monkeypatch.setattr(parallel_reads, "FIXED_GETS", 1)
    gets = spy_gets(monkeypatch)
    buffer = memoryview(bytearray(SIZE))
    assert source.readinto(0, buffer) == SIZE and bytes(buffer) == data
    assert [(start, length) for start, length, _ in gets] == [(0, SIZE)]


def test_csv_stats_of_an_object_read_in_pieces_equals_the_local_file(
    backend: str,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocks of 8 MiB: the same statistics as the file on disk. In this process (sequential,
    thread) each block is two GETs at once; process and Dask workers read as their store's
    speed says (one GET from this fast server)."""
    import s3fs

    monkeypatch.setattr(parallel_reads, "FIXED_GETS", MAX_GETS)  # in this process: threads
    header, *rows = SALES.read_bytes().splitlines(keepends=True)
    data = header + b"".join(rows) * 40  # ~17 MB: three blocks
    (tmp_path / "big.csv").write_bytes(data)
    s3fs.S3FileSystem(**s3_storage_options).pipe(f"{s3_bucket}/big.csv", data)
    kwargs: dict[str, Any] = {"group_by": "region", "chunk_bytes": 8 << 20}
    want = csv_stats(tmp_path / "big.csv", ["amount", "qty"], **kwargs)
    got = csv_stats(
        f"s3://{s3_bucket}/big.csv",
        ["amount", "qty"],
        backend=backend,
        storage_options=s3_storage_options,
        **kwargs,
    )
    assert got.rows == want.rows and got.ranges == want.ranges >= 2
    assert {k: g.rows for k, g in got.groups.items()} == {k: g.rows for k, g in want.groups.items()}
    for name, column in want.columns.items():
        assert got.columns[name].as_dict() == pytest.approx(column.as_dict())


@pytest.mark.parametrize(("value", "count"), [("1", 1), ("8", 8), ("0", None), ("many", None)])
def test_the_gets_per_read_come_from_the_environment(value: str, count: int | None) -> None:
    """``BATCHCORE_GETS_PER_READ``: 1 turns the pieces off, more suits a farther store; a value
    that is no whole number >= 1 is named in a warning and the store's speed decides."""
    script = "from batchcore.processors import parallel_reads as p; print(p.FIXED_GETS)"
    done = run_script(script, env={**os.environ, parallel_reads.GETS_ENV: value})
    assert done.stdout.strip() == str(count)
    assert (value in done.stderr) == (count is None)


@pytest.mark.parametrize("slow", [True, False], ids=["slow-store", "fast-store"])
def test_a_store_is_read_in_pieces_once_a_whole_read_of_it_came_slow(
    big_object: tuple[storage.Source, bytes], monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    """Unset ``GETS_PER_READ``: one GET per read until one came slower than ``SLOW_RATE``
    (then pieces for every read of that bucket in this process); a fast store never pays the
    pieces' extra requests."""
    source, data = big_object
    monkeypatch.setattr(parallel_reads, "FIXED_GETS", None)
    monkeypatch.setattr(parallel_reads, "_slow", set())
    monkeypatch.setattr(parallel_reads, "SLOW_RATE", 1e15 if slow else 1.0)
    gets = spy_gets(monkeypatch)
    buffer = memoryview(bytearray(SIZE))
    for _ in range(2):
        assert source.readinto(0, buffer) == SIZE and bytes(buffer) == data
    assert len(gets) == (1 + 2 if slow else 2)  # the first read tells; the second in pieces
    gets.clear()
    short = memoryview(bytearray(GET_PIECE))  # a read too short for pieces never marks a store
    monkeypatch.setattr(parallel_reads, "_slow", set())
    source.readinto(0, short)
    assert parallel_reads.gets_per_read(source.url) == 1 and len(gets) == 1


class SpyHandle:
    """An Arrow file handle whose ``read_at`` calls are recorded (``(start, thread)``), and
    whose GETs of ``failing`` starts fail once in a pool thread."""

    def __init__(self, handle: Any, failing: set[int] | None = None) -> None:
        self.handle = handle
        self.calls: list[tuple[int, int]] = []
        self.failing = set(failing or ())

    def read_at(self, size: int, start: int) -> bytes:
        self.calls.append((start, threading.get_ident()))
        if start in self.failing and threading.current_thread() is not threading.main_thread():
            self.failing.discard(start)
            raise ConnectionResetError("connection reset by peer")
        data: bytes = self.handle.read_at(size, start)
        return data


def stream_of(source: storage.Source, failing: set[int] | None = None) -> Any:
    opened = source._arrow_open(1 << 20, True, 3)
    assert opened is not None
    opened.handle = SpyHandle(opened.handle, failing)
    return opened


def test_a_stream_gets_each_block_once_the_next_ones_fetched_ahead(
    big_object: tuple[storage.Source, bytes],
) -> None:
    """A compressed object is read front to back: each 1 MiB block one GET, the next three
    already in flight in the pool while the reader works on this one."""
    source, data = big_object
    stream = stream_of(source)
    got = b"".join(iter(lambda: stream.read(65536), b""))
    assert got == data
    starts = sorted(start for start, _ in stream.handle.calls)
    assert starts == [n << 20 for n in range(SIZE >> 20)]
    assert {thread for _, thread in stream.handle.calls} - {threading.get_ident()}
    stream.seek(5)  # back to the start: read again, correctly
    assert stream.read(100) == data[5:105] and stream.read(3 << 20) == data[105 : 105 + (3 << 20)]
    stream.close()
    assert not stream.coming


def test_a_block_whose_fetch_ahead_failed_is_fetched_again_when_read(
    big_object: tuple[storage.Source, bytes],
) -> None:
    source, data = big_object
    stream = stream_of(source, failing={2 << 20})
    assert b"".join(iter(lambda: stream.read(1 << 19), b"")) == data
    refetched = [thread for start, thread in stream.handle.calls if start == 2 << 20]
    assert len(refetched) == 2 and refetched[-1] == threading.get_ident()
    stream.close()


def test_a_compressed_object_is_read_by_arrow_without_importing_s3fs(
    s3_bucket: str, s3_storage_options: dict[str, Any], tmp_path: Path
) -> None:
    """One ``.csv.gz`` object: found, decompressed and summed through Arrow's client, blocks
    fetched ahead; no s3fs or botocore in the process (their import costs ~0.3 CPU s, a client
    ~0.15 s more); the same statistics as the local file."""
    import gzip
    import json

    import s3fs

    header, *rows = SALES.read_bytes().splitlines(keepends=True)
    packed = gzip.compress(header + b"".join(rows) * 20, compresslevel=1)
    (tmp_path / "sales.csv.gz").write_bytes(packed)
    s3fs.S3FileSystem(**s3_storage_options).pipe(f"{s3_bucket}/sales.csv.gz", packed)
    script = (
        "import json, sys\n"
        "from batchcore.processors.csv.jobs import csv_stats\n"
        "got = csv_stats(sys.argv[1], ['amount', 'qty'], group_by='region', chunk_bytes=1 << 20,"
        " storage_options=json.loads(sys.argv[2]))\n"
        "print(json.dumps([got.rows, 's3fs' in sys.modules or 'botocore' in sys.modules]))\n"
    )
    url, options = f"s3://{s3_bucket}/sales.csv.gz", json.dumps(s3_storage_options)
    rows, imported = script_says(script, url, options, timeout=120)
    assert rows == csv_stats(tmp_path / "sales.csv.gz", ["amount"]).rows and not imported
