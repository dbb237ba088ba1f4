"""CSV jobs on objects in a real S3-compatible server (moto, ``tests/s3server.py``): the same
results as local files on every backend, ranged reads, and no secret in anything a user sees."""

from __future__ import annotations

import json
import logging
import pickle
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from csv_helpers import SALES, faults_in_child

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from batchcore import shutdown as batchcore_shutdown
from batchcore.processors import storage
from batchcore.processors.cli import main
from batchcore.processors.csv.jobs import csv_stats, csv_to_parquet
from batchcore.processors.csv.node import CSVBatchNode
from batchcore.processors.errors import CsvFormatError

HEADER, *ROWS = SALES.read_bytes().splitlines(keepends=True)
REFERENCE = csv_stats(SALES, ["amount", "qty"], group_by="region")


def same_stats(got: Any) -> None:
    assert got.rows == REFERENCE.rows
    for name, column in REFERENCE.columns.items():
        assert got.columns[name].as_dict() == pytest.approx(column.as_dict())
    for key, group in REFERENCE.groups.items():
        assert got.groups[key].rows == group.rows
        for name, column in group.columns.items():
            assert got.groups[key].columns[name].as_dict() == pytest.approx(column.as_dict())


@pytest.fixture
def s3_sales(s3_bucket: str, s3_storage_options: dict[str, Any]) -> str:
    """The sales file as one object and as three parts under ``parts/``; yields the bucket URL."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.pipe(f"{s3_bucket}/sales.csv", SALES.read_bytes())
    for number, rows in enumerate((ROWS[:1000], ROWS[1000:3333], ROWS[3333:])):
        fs.pipe(f"{s3_bucket}/parts/p{number}.csv", HEADER + b"".join(rows))
    fs.pipe(f"{s3_bucket}/parts/_SUCCESS", b"")
    return f"s3://{s3_bucket}"


def test_an_object_and_a_prefix_of_parts_equal_the_local_file(
    backend: str, s3_sales: str, s3_storage_options: dict[str, Any]
) -> None:
    for inputs in (f"{s3_sales}/sales.csv", f"{s3_sales}/parts/", f"{s3_sales}/parts/p*.csv"):
        got = csv_stats(
            inputs,
            ["amount", "qty"],
            group_by="region",
            backend=backend,
            workers=2,
            chunk_bytes=40_000,
            storage_options=s3_storage_options,
        )
        same_stats(got)
    assert got.files == [f"{s3_sales}/parts/p{i}.csv" for i in range(3)]


def test_to_parquet_from_an_object(
    parallel_backend: str, s3_sales: str, s3_storage_options: dict[str, Any], tmp_path: Path
) -> None:
    result = csv_to_parquet(
        f"{s3_sales}/parts/",
        tmp_path / "ds",
        backend=parallel_backend,
        chunk_bytes=40_000,
        storage_options=s3_storage_options,
    )
    assert result["rows"] == REFERENCE.rows
    assert pq.read_table(tmp_path / "ds").num_rows == REFERENCE.rows


def test_the_parent_reads_a_few_bytes_per_range_and_workers_the_rest(
    s3_sales: str, s3_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On processes and Dask the client fetches headers, the inference head and a window per
    range start, never the ranges themselves (workers are other processes: not counted)."""
    fetched: list[int] = []
    real_open, real_read = storage.Source.open, storage.Source.read
    real_readinto = storage.Source.readinto

    class Counting:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def read(self, size: int = -1) -> bytes:
            data: bytes = self.handle.read(size)
            fetched.append(len(data))
            return data

        def readinto(self, buffer: Any) -> int:
            got: int = self.handle.readinto(buffer)
            fetched.append(got)
            return got

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    def counting_open(self: storage.Source, block_size: int = 1 << 20, **kwargs: Any) -> Any:
        return Counting(real_open(self, block_size, **kwargs))

    def counting_readinto(self: storage.Source, start: int, buffer: memoryview) -> int:
        got = real_readinto(self, start, buffer)
        fetched.append(got)
        return got

    def counting_read(self: storage.Source, start: int, end: int) -> bytes:
        data = real_read(self, start, end)
        fetched.append(len(data))
        return data

    monkeypatch.setattr(storage.Source, "open", counting_open)
    monkeypatch.setattr(storage.Source, "read", counting_read)
    monkeypatch.setattr(storage.Source, "readinto", counting_readinto)
    import s3fs

    big = HEADER + b"".join(ROWS) * 12  # ~5 MB: five 1 MB ranges
    s3fs.S3FileSystem(**s3_storage_options).pipe(f"{s3_sales[5:]}/big.csv", big)
    chunk = 1 << 20
    for backend in ("process", "dask"):
        if backend == "dask":
            pytest.importorskip("distributed")
        fetched.clear()
        got = csv_stats(
            f"{s3_sales}/big.csv",
            ["amount"],
            backend=backend,
            workers=2,
            chunk_bytes=chunk,
            storage_options=s3_storage_options,
        )
        assert got.rows == REFERENCE.rows * 12
        ranges = len(big) // chunk + 1
        # the 64 KiB header window, the 1 MiB inference head, and up to two 64 KiB windows per
        # range start: far from the 5 MB a client-side quote count would read
        assert sum(fetched) <= (1 << 16) + (1 << 20) + ranges * (2 << 16) < len(big) // 2, backend


SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_a_secret_never_shows(
    s3_sales: str,
    s3_storage_options: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """Not in the JSON summary, progress bar, errors or log lines of a run, nor in a pickled
    node or task; yet the workers can use it."""
    options = {**s3_storage_options, "secret": SECRET}  # moto accepts any secret
    flags = [f"--storage-option={key}={value}" for key, value in options.items()]
    caplog.set_level(logging.DEBUG)
    argv = ["csv", "stats", f"{s3_sales}/sales.csv", "--sum", "amount", *flags]
    assert main([*argv, "--json", "--progress", "--backend", "process"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["rows"] == REFERENCE.rows
    missing = f"{s3_sales}/nope.csv"
    assert main(["csv", "stats", missing, "--sum", "amount", *flags]) != 0
    out2, err2 = capsys.readouterr()
    assert "nope.csv" in err2
    node = CSVBatchNode(f"{s3_sales}/sales.csv", storage_options=options)
    node.split(f"{s3_sales}/sales.csv")
    blobs = [pickle.dumps(node), pickle.dumps(node.csv_plans), pickle.dumps(node.csv_plans[0])]
    for text in (out, err, out2, err2, caplog.text, repr(node.csv_plans), *map(repr, blobs)):
        assert SECRET not in text
    for blob in blobs:
        assert SECRET.encode() not in blob


# --- what goes wrong: missing, denied, a server that stops --------------------------------------


def test_a_missing_key_or_bucket_is_named(
    s3_sales: str, s3_storage_options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from batchcore.processors.storage_errors import StorageNotFoundError

    for url, said in (
        (f"{s3_sales}/nope.csv", f"{s3_sales}/nope.csv: no such key"),
        ("s3://no-such-bucket-here/sales.csv", "s3://no-such-bucket-here: no such bucket"),
    ):
        with pytest.raises(StorageNotFoundError) as info:
            csv_stats(url, ["amount"], storage_options=s3_storage_options)
        assert str(info.value) == said
    flags = [f"--storage-option={k}={v}" for k, v in s3_storage_options.items()]
    assert main(["csv", "stats", f"{s3_sales}/nope.csv", "--sum", "amount", *flags]) == 2
    assert f"{s3_sales}/nope.csv: no such key" in capsys.readouterr().err


def test_wrong_credentials_are_denied_naming_the_url_never_the_secret(
    s3_auth_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import uuid

    import s3fs

    from batchcore.processors.storage_errors import StoragePermissionError

    right = s3_auth_server.storage_options()
    bucket = f"auth-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**right)
    fs.mkdir(bucket)
    fs.pipe(f"{bucket}/sales.csv", SALES.read_bytes())
    url = f"s3://{bucket}/sales.csv"
    assert csv_stats(url, ["amount"], storage_options=right).rows == REFERENCE.rows
    wrong = {**right, "secret": SECRET}
    with pytest.raises(StoragePermissionError) as info:
        csv_stats(url, ["amount"], storage_options=wrong)
    assert str(info.value).startswith(f"{url}: access denied")
    flags = [f"--storage-option={k}={v}" for k, v in wrong.items()]
    assert main(["csv", "stats", url, "--sum", "amount", *flags]) == 2
    err = capsys.readouterr().err
    assert "access denied" in err and url in err and SECRET not in err
    fs.rm(bucket, recursive=True)


def test_a_server_stopped_mid_run_fails_the_ranges_it_could_not_serve(
    stoppable_s3_server: Any,
) -> None:
    """Each range that cannot be read after its retries fails as its own item, naming the URL;
    ranges read before the outage succeed; the run ends within the retries' bound."""
    import time
    import uuid

    import s3fs

    from batchcore.processors.storage_errors import StorageConnectionError, failure_bound

    options = stoppable_s3_server.storage_options()
    bucket = f"stop-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(bucket)
    fs.pipe(f"{bucket}/sales.csv", SALES.read_bytes())
    url = f"s3://{bucket}/sales.csv"
    outcomes: list[Any] = []

    class StopsTheServer(CSVBatchNode):
        def exec(self, table: Any) -> int:
            rng = self.current_range
            assert rng is not None
            if rng.index == 1:
                stoppable_s3_server.kill()
            return int(table.num_rows)

        def post(self, shared: Any, prep_res: Any, exec_res: list[Any]) -> None:
            outcomes.extend(exec_res)

    node = StopsTheServer(
        url,
        chunk_bytes=110_000,  # 4 ranges: 2 read, then 2 that fail (each after its retries)
        storage_options=options,
        backend="thread",
        workers=1,
        on_error="collect",
    )
    began = time.monotonic()
    node.run({})
    assert time.monotonic() - began < failure_bound() + 30
    failed = node.batch_stats.failures
    assert outcomes and failed  # ranges read before the outage, and those after
    assert sum(outcomes) < REFERENCE.rows
    assert len(outcomes) + len(failed) == node.csv_report.ranges
    for failure in failed:
        assert isinstance(failure.exception, StorageConnectionError)
        assert str(failure.exception).startswith(url)


def test_on_dask_workers_decompress_compressed_objects_the_client_reads_their_head(
    s3_sales: str,
    s3_storage_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A compressed object on Dask is one item per file, decompressed by its worker; the client
    reads its first bytes (header and the inference head) only."""
    pytest.importorskip("distributed")
    import gzip

    import s3fs

    body = b"".join(ROWS) * 40  # ~17 MB of CSV, ~4 MB of gzip
    compressed = gzip.compress(HEADER + body, compresslevel=1)
    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.pipe(f"{s3_sales[5:]}/gz/a.csv.gz", compressed)
    fs.pipe(f"{s3_sales[5:]}/gz/b.csv", HEADER + b"".join(ROWS))  # plain, beside it
    fetched: list[int] = []
    real_open = storage.Source.open

    def counting_open(self: storage.Source, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, *args, **kwargs)
        real_read = handle.read

        def read(size: int = -1) -> bytes:
            data: bytes = real_read(size)
            fetched.append(len(data))
            return data

        handle.read = read
        return handle

    monkeypatch.setattr(storage.Source, "open", counting_open)
    got = csv_stats(
        f"{s3_sales}/gz/",
        ["amount"],
        backend="dask",
        workers=2,
        chunk_bytes=1 << 20,
        storage_options=s3_storage_options,
    )
    assert got.rows == REFERENCE.rows * 41
    assert sum(fetched) < 2 << 20 < len(compressed) // 2
    result = csv_to_parquet(
        f"{s3_sales}/gz/a.csv.gz",
        tmp_path / "ds",
        backend="dask",
        workers=2,
        chunk_bytes=4 << 20,
        storage_options=s3_storage_options,
    )
    names = sorted(p.name for p in (tmp_path / "ds").glob("part-*"))
    assert names[:2] == ["part-00000-00000.parquet", "part-00000-00001.parquet"]
    assert result["rows"] == pq.read_table(tmp_path / "ds").num_rows == REFERENCE.rows * 40


# --- a plain object is read once: blocks cut by their workers (``CsvBlock``) -----------------

# ``n`` is summed; each note holds newlines and lines that parse as rows of their own, so a
# block guessed to start outside quotes when it is inside one parses to wrong rows: the parent
# must drop such a result and cut the block again, or the sums come out wrong.
TRICKY = b"n,note\n" + b"".join(
    b'%d,"a\n%d,b\n%d,c ""quoted"", d"\n' % (i, i * 3, i * 5) for i in range(6000)
)


def tricky_reference(tmp_path: Path) -> Any:
    local = tmp_path / "tricky.csv"
    local.write_bytes(TRICKY)
    return csv_stats(local, ["n"], group_by="note", backend="sequential")


def test_blocks_cut_by_a_wrong_guess_are_cut_again_on_every_backend(
    backend: str, s3_put: Any, s3_storage_options: dict[str, Any], tmp_path: Path
) -> None:
    reference = tricky_reference(tmp_path)
    got = csv_stats(
        s3_put("tricky.csv", TRICKY),
        ["n"],
        group_by="note",
        backend=backend,
        workers=2,
        chunk_bytes=2000,
        storage_options=s3_storage_options,
    )
    assert got.rows == reference.rows == 6000
    assert got.columns["n"].as_dict() == reference.columns["n"].as_dict()
    assert {key: group.rows for key, group in got.groups.items()} == {
        key: group.rows for key, group in reference.groups.items()
    }


def test_a_plain_object_is_read_once_and_wrong_guesses_are_dropped(
    s3_put: Any, s3_storage_options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each block is one GET of itself and a little more (no quote-count pass first); a block
    cut by a wrong guess may even parse, and its result is dropped for the rerun's."""
    from batchcore.processors.csv import node
    from batchcore.processors.csv.split import TAIL

    fetched: list[int] = []
    real_read, real_readinto = storage.Source.read, storage.Source.readinto
    runs: list[int] = []
    real_exec_range = node._ParsesRange._exec_range

    def counting_read(self: storage.Source, start: int, end: int) -> bytes:
        data = real_read(self, start, end)
        fetched.append(len(data))
        return data

    def counting_readinto(self: storage.Source, start: int, buffer: memoryview) -> int:
        got = real_readinto(self, start, buffer)
        fetched.append(got)
        return got

    def counting_exec(self: Any, plan: Any, rng: Any) -> Any:
        runs.append(rng.index)
        return real_exec_range(self, plan, rng)

    monkeypatch.setattr(storage.Source, "read", counting_read)
    monkeypatch.setattr(storage.Source, "readinto", counting_readinto)
    monkeypatch.setattr(node._ParsesRange, "_exec_range", counting_exec)
    chunk = 20_000
    big = HEADER + b"".join(ROWS) * 3  # quoted fields with commas, no newlines: guesses hold
    got = csv_stats(
        s3_put("big.csv", big),
        ["amount"],
        backend="sequential",
        chunk_bytes=chunk,
        storage_options=s3_storage_options,
    )
    assert got.rows == REFERENCE.rows * 3
    blocks = -(-(len(big) - len(HEADER)) // chunk)
    assert len(fetched) == blocks and sum(fetched) <= len(big) + blocks * TAIL

    reference = tricky_reference(tmp_path)
    runs.clear()
    got = csv_stats(
        s3_put("tricky.csv", TRICKY),
        ["n"],
        backend="sequential",
        chunk_bytes=chunk,
        storage_options=s3_storage_options,
    )
    assert got.rows == reference.rows
    assert got.columns["n"].as_dict() == reference.columns["n"].as_dict()
    assert len(runs) > -(-len(TRICKY) // chunk)  # wrong guesses parsed, ran, and ran again


def test_a_resumed_remote_stats_reads_no_block_again(
    s3_put: Any, s3_storage_options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a journal, every block's result (a wrong guess's too, and its rerun's) is kept: a
    rerun takes them all from it, and reads no block of the object."""
    reference = tricky_reference(tmp_path)
    url = s3_put("tricky.csv", TRICKY)
    options: dict[str, Any] = {"chunk_bytes": 20_000, "storage_options": s3_storage_options}
    options |= {"backend": "sequential", "checkpoint": tmp_path / "j.sqlite"}
    fetched: list[int] = []
    real_read, real_readinto = storage.Source.read, storage.Source.readinto

    def counting_read(self: storage.Source, start: int, end: int) -> bytes:
        fetched.append(end - start)
        return real_read(self, start, end)

    def counting_readinto(self: storage.Source, start: int, buffer: memoryview) -> int:
        fetched.append(len(buffer))
        return real_readinto(self, start, buffer)

    monkeypatch.setattr(storage.Source, "read", counting_read)
    monkeypatch.setattr(storage.Source, "readinto", counting_readinto)
    first = csv_stats(url, ["n"], group_by="note", **options)
    assert first.ran > first.ranges  # blocks cut by wrong guesses ran twice
    assert sum(fetched) >= len(TRICKY) - 100  # every block was read (the header aside)
    fetched.clear()
    again = csv_stats(url, ["n"], group_by="note", **options)
    assert not fetched and again.ran == 0 and again.resumed == first.ran
    assert again.rows == reference.rows
    assert again.columns["n"].as_dict() == reference.columns["n"].as_dict()
    assert {key: group.rows for key, group in again.groups.items()} == {
        key: group.rows for key, group in reference.groups.items()
    }


@pytest.mark.parametrize("backend", ["sequential", "process"])
def test_errors_in_blocks_cut_by_their_workers_name_the_line(
    backend: str, s3_put: Any, s3_storage_options: dict[str, Any]
) -> None:
    # past the 1 MiB head that inference reads (and checks), so the workers meet each fault
    good = b"".join(b'%d,"note %d, with a comma"\n' % (i, i) for i in range(40_000))
    cases = {
        "open.csv": (b"n,note\n" + good + b'7,"never closed\n' + good, "never closed"),
        "bad.csv": (b"n,note\n" + good + b"x,y\n" + good, "does not fit"),
        "long.csv": (b"n,note\n" + good + b'1,"' + b"z" * 9000 + b'"\n' + good, "longer than"),
    }
    line = good.count(b"\n") + 2  # the header, the good rows, then the bad one
    for name, (data, reason) in cases.items():
        with pytest.raises(CsvFormatError, match=reason) as caught:
            csv_stats(
                s3_put(name, data),
                ["n"],
                backend=backend,
                workers=2,
                chunk_bytes=100_000,
                max_record_bytes=5000,
                column_types={"n": "int64"},
                storage_options=s3_storage_options,
            )
        assert caught.value.line == line, (name, str(caught.value))
        assert name in str(caught.value)


def test_a_process_pool_for_urls_starts_with_the_store_client_imported(
    s3_sales: str,
    s3_storage_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers boot, the store's client imported, while the parent lists and reads headers:
    Arrow's S3 client for one plain object (workers only read its ranges), s3fs otherwise."""
    from batchcore.backends.process import ProcessBackend
    from batchcore.processors.arrow_s3 import SWITCH

    asked: list[tuple[str, ...]] = []
    real = ProcessBackend.start

    def recording(self: ProcessBackend, imports: Any = ()) -> None:
        asked.append(tuple(imports))
        real(self, imports)

    monkeypatch.setattr(ProcessBackend, "start", recording)
    for switch, client in (("1", "pyarrow.fs"), ("0", "s3fs")):
        monkeypatch.setenv(SWITCH, switch)
        asked.clear()
        same_stats(
            csv_stats(
                f"{s3_sales}/sales.csv",
                ["amount", "qty"],
                group_by="region",
                backend="process",
                chunk_bytes=40_000,
                storage_options=s3_storage_options,
            )
        )
        assert asked[0] == (client,)
    monkeypatch.delenv(SWITCH)
    options = s3_storage_options
    assert storage.reader_modules(["a.csv", "s3://b/k", "memory://x"], options) == [
        "fsspec.implementations.memory",
        "pyarrow.fs",
    ]
    assert storage.reader_modules(["s3://b/k.csv.gz"], options) == ["pyarrow.fs"]  # one object
    for other in ("s3://b/parts/", "s3://b/*.csv"):  # listed by s3fs
        assert storage.reader_modules([other], options) == ["s3fs"], other
    assert storage.reader_modules(["s3://b/k"], {**options, "profile": "p"}) == ["s3fs"]
    assert storage.reader_modules(["s3://b/k"]) == ["s3fs"]  # no credentials given


def test_workers_read_one_object_without_importing_s3fs(
    s3_sales: str, s3_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrow's client reads a plain object's ranges: no worker pays s3fs's import (~0.3 s CPU)
    or a botocore client (~0.15 s); with ``BATCHCORE_ARROW_S3=0`` s3fs reads, as before."""
    from batchcore.processors.arrow_s3 import SWITCH

    class ImportsOfTheWorker(CSVBatchNode):  # defined here: sent by value, this module unseen
        speculative_ranges = True

        def exec(self, table: Any) -> bool:

            return "s3fs" in sys.modules or "botocore" in sys.modules

        def post(self, shared: Any, prep_res: Any, exec_res: list[bool]) -> None:
            shared["imported"] = exec_res

    for switch, imported in (("1", False), ("0", True)):
        monkeypatch.setenv(SWITCH, switch)
        node = ImportsOfTheWorker(
            chunk_bytes=40_000, storage_options=s3_storage_options, backend="process", workers=2
        )
        shared: dict[str, Any] = {"input_file": f"{s3_sales}/sales.csv"}
        node.run(shared)
        assert shared["imported"] and set(shared["imported"]) == {imported}, switch
        assert node.csv_report.rows == REFERENCE.rows
        batchcore_shutdown()  # the next pool's zygote preloads the other client


def test_one_object_is_found_by_arrow_as_s3fs_finds_it(
    s3_sales: str, s3_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same size and version (the ETag: checkpoint keys do not change with the client)."""
    from batchcore.processors.arrow_s3 import SWITCH

    url = f"{s3_sales}/sales.csv"
    [arrow] = storage.expand(url, s3_storage_options)
    monkeypatch.setenv(SWITCH, "0")
    [fsspec] = storage.expand(url, s3_storage_options)
    assert (
        (arrow.size, arrow.version)
        == (fsspec.size, fsspec.version)
        == (
            len(SALES.read_bytes()),
            fsspec.version,
        )
    )
    assert arrow.version.strip('"')


BLOCK_FAULTS_CHILD = """
import json, resource, sys
from batchcore.processors.csv.jobs import csv_stats

url, options = sys.argv[1], json.loads(sys.argv[2])
run = dict(backend="sequential", chunk_bytes=4 << 20, storage_options=options)
first = csv_stats(url, ["amount"], **run)  # the read buffer and the parse's memory faulted in
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = csv_stats(url, ["amount"], **run)
assert again.rows == first.rows, (again.rows, first.rows)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize("trim", [None, "65536"], ids=["malloc-default", "malloc-trim-set"])
def test_the_blocks_of_an_object_are_read_into_one_buffer_not_fresh_memory(
    s3_put: Any, s3_storage_options: dict[str, Any], trim: str | None
) -> None:
    """Each block (4 MiB here, 16 MiB by default) is one ranged GET into the thread's reused
    read buffer: a fresh ``bytes`` per block was faulted in page by page, every block (74,000
    page faults and ~0.4 s of system time for 300 MB on S3), with glibc's thresholds as they
    come and as Dask sets them."""
    big = HEADER + b"".join(ROWS) * 120  # ~50 MB: twelve blocks
    url = s3_put("big.csv", big)
    options = json.dumps(s3_storage_options)
    faults = faults_in_child(BLOCK_FAULTS_CHILD, url, options, trim=trim)
    fresh = len(big) // 4096  # every page of every block faulted in afresh
    assert faults < fresh // 4, f"{faults} page faults over {len(big):,} bytes (afresh: {fresh})"


PARQUET_FAULTS_CHILD = """
import json, os, resource, sys, tempfile
from batchcore.processors.csv.jobs import csv_to_parquet

url, options = sys.argv[1], json.loads(sys.argv[2])
run = dict(backend="sequential", chunk_bytes=4 << 20, storage_options=options)
with tempfile.TemporaryDirectory() as folder:
    csv_to_parquet(url, os.path.join(folder, "first"), **run)  # buffers faulted in
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    csv_to_parquet(url, os.path.join(folder, "again"), **run)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_the_quote_count_of_an_object_reads_into_the_same_buffer(
    s3_put: Any, s3_storage_options: dict[str, Any]
) -> None:
    """to-parquet counts each block's quotes before it parses (one ranged GET per block): into
    the thread's read buffer, counted there. A fresh ``bytes`` per block, copied on through a
    file object, was faulted in page by page where glibc's thresholds are set (as Dask sets
    them): 85,000 page faults for 300 MB, 16,500 now, most of them the Parquet writer's."""
    big = HEADER + b"".join(ROWS) * 120  # ~50 MB: twelve blocks
    url = s3_put("big.csv", big)
    options = json.dumps(s3_storage_options)
    faults = faults_in_child(PARQUET_FAULTS_CHILD, url, options, trim="65536")
    fresh = len(big) // 4096  # every page of every block faulted in afresh
    assert faults < fresh // 2, f"{faults} page faults over {len(big):,} bytes (afresh: {fresh})"
