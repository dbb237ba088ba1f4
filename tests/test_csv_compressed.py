"""Compressed CSV inputs: gzip, bzip2, xz and zstd are known by their first bytes and read as the
plain file would be, on every backend; a broken or foreign file is an error naming it."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from csv_helpers import SALES, write_bytes

from batchcore.processors.cli import main
from batchcore.processors.csv.jobs import csv_stats, csv_to_parquet
from batchcore.processors.csv.node import CSVBatchNode
from batchcore.processors.errors import CompressedDataError, CsvFormatError, NotCsvError

PLAIN = SALES.read_bytes()
HEADER, *ROWS = PLAIN.splitlines(keepends=True)
REFERENCE = csv_stats(SALES, ["amount", "qty"], group_by="region")


def zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as stream:
        stream.write(data)
    return bytes(sink.getvalue().to_pybytes())


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zstd": zstd,
}


def same_stats(got: Any) -> None:
    assert got.rows == REFERENCE.rows
    for name, column in REFERENCE.columns.items():
        assert got.columns[name].as_dict() == pytest.approx(column.as_dict(), rel=1e-12)
    assert {k: g.rows for k, g in got.groups.items()} == {
        k: g.rows for k, g in REFERENCE.groups.items()
    }


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_every_format_reads_as_the_plain_file(backend: str, kind: str, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "sales.csv", COMPRESS[kind](PLAIN))  # the name says nothing
    got = csv_stats(path, ["amount", "qty"], group_by="region", backend=backend, chunk_bytes=30_000)
    same_stats(got)


def test_parts_mixed_compressed_and_plain_read_as_one(
    parallel_backend: str, tmp_path: Path
) -> None:
    cuts = [0, 700, 2100, 2101, 3900, len(ROWS)]
    kinds = ["gzip", None, "zstd", "xz", "bz2"]
    (tmp_path / "in").mkdir()
    for number, kind in enumerate(kinds):
        data = HEADER + b"".join(ROWS[cuts[number] : cuts[number + 1]])
        write_bytes(tmp_path / "in" / f"part-{number}.csv", COMPRESS[kind](data) if kind else data)
    got = csv_stats(
        tmp_path / "in",
        ["amount", "qty"],
        group_by="region",
        backend=parallel_backend,
        chunk_bytes=9_000,
    )
    same_stats(got)
    result = csv_to_parquet(tmp_path / "in", tmp_path / "ds", backend=parallel_backend)
    table = pq.read_table(tmp_path / "ds")
    assert result["rows"] == table.num_rows == len(ROWS)
    assert table["order_id"].to_pylist() == [int(row.split(b",")[0]) for row in ROWS]


def test_chunks_are_numbered_in_file_order_and_located(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "s.csv.gz", gzip.compress(PLAIN))
    seen: list[tuple[int, int, int | None]] = []

    class Where(CSVBatchNode):
        def exec(self, table: Any) -> tuple[int, int, int | None]:
            rng = self.current_range
            assert rng is not None
            return rng.index, table["order_id"][0].as_py(), rng.line

        def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            seen.extend(exec_res)

    Where(str(path), chunk_bytes=40_000, backend="thread").run({})
    assert [index for index, _, _ in seen] == list(range(len(seen))) and len(seen) > 5
    for _, first_id, line in seen:  # each chunk's first line holds its first row
        assert line is not None and PLAIN.splitlines()[line - 1].startswith(b"%d," % first_id)


def test_a_bad_row_is_located_by_its_line_in_the_decompressed_file(
    parallel_backend: str, tmp_path: Path
) -> None:
    lines = PLAIN.splitlines(keepends=True)
    lines[3001] = b"ragged\n"
    path = write_bytes(tmp_path / "s.csv.xz", lzma.compress(b"".join(lines)))
    with pytest.raises(CsvFormatError) as info:
        csv_stats(path, ["amount"], backend=parallel_backend, chunk_bytes=20_000)
    assert (info.value.path, info.value.line) == (str(path), 3002)
    got = csv_stats(path, ["amount"], bad_rows="skip", backend=parallel_backend, chunk_bytes=20_000)
    assert got.skipped_lines == [(str(path), 3002)] and got.rows == len(ROWS) - 1


def test_header_bom_quotes_and_no_header(tmp_path: Path) -> None:
    text = b'\xef\xbb\xbfa,b\n1,"x\ny"\n2,"he said ""hi"""\n3,z'
    path = write_bytes(tmp_path / "q.gz", gzip.compress(text))
    rows: list[Any] = []

    class Rows(CSVBatchNode):
        def exec(self, table: Any) -> Any:
            return table.to_pylist()

        def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            rows.extend(row for part in exec_res for row in part)

    Rows(str(path), chunk_bytes=3).run({})
    assert rows == [{"a": 1, "b": "x\ny"}, {"a": 2, "b": 'he said "hi"'}, {"a": 3, "b": "z"}]
    rows.clear()
    raw = write_bytes(tmp_path / "n.gz", gzip.compress(b"1,2\n3,4\n"))
    Rows(str(raw), header=False).run({})
    assert rows == [{"f0": 1, "f1": 2}, {"f0": 3, "f1": 4}]


def test_an_unterminated_quote_is_located(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "u.gz", gzip.compress(PLAIN + b'9,"open,1\n2,3\n'))
    with pytest.raises(CsvFormatError, match="unterminated quote") as info:
        csv_stats(path, ["amount"], chunk_bytes=50_000)
    assert info.value.line == len(ROWS) + 2


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_a_truncated_file_is_an_error_never_short_data(
    parallel_backend: str, kind: str, tmp_path: Path
) -> None:
    data = COMPRESS[kind](PLAIN)
    path = write_bytes(tmp_path / "cut.csv", data[: len(data) * 2 // 3])
    with pytest.raises(CompressedDataError) as info:
        csv_stats(path, ["amount"], backend=parallel_backend, chunk_bytes=30_000)
    assert info.value.path == str(path) and info.value.kind == kind


def test_foreign_files_say_what_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "sales.csv.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("sales.csv", PLAIN)
    with pytest.raises(NotCsvError, match="zip archive"):
        csv_stats(archive, ["amount"])
    pq.write_table(pa.table({"amount": [1.0]}), tmp_path / "sales.csv")
    assert main(["csv", "stats", str(tmp_path / "sales.csv"), "--sum", "amount"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'sales.csv'}: is a Parquet file" in err


def test_the_cli_reads_a_gzip_file_it_used_to_misread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's report: the header came out as garbage ('\\x1f\\x8b\\x08...')."""
    path = write_bytes(tmp_path / "sales.csv.gz", gzip.compress(PLAIN))
    assert main(["csv", "stats", str(path), "--sum", "amount", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == REFERENCE.rows
    assert report["sum"]["amount"] == REFERENCE.columns["amount"].sum
    broken = write_bytes(tmp_path / "broken.csv.gz", gzip.compress(PLAIN)[:-100])
    assert main(["csv", "stats", str(broken), "--sum", "amount"]) == 1
    err = capsys.readouterr().err
    assert str(broken) in err and "gzip" in err and "truncated" in err


class WhereChunksRun(CSVBatchNode):
    def exec(self, table: Any) -> tuple[int, str | None, int | None, int]:
        import os
        import threading

        rng = self.current_range
        assert rng is not None
        return os.getpid(), self.current_file, rng.chunk, threading.get_ident()

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["where"] = exec_res


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_as_many_compressed_parts_as_workers_are_each_inflated_by_one_worker(
    tmp_path: Path, backend: str
) -> None:
    """With a part per worker or more, each part is one item: its worker inflates it and runs
    its chunks in order, so no decompressed byte travels and every worker inflates."""
    for number in range(4):
        data = HEADER + b"".join(ROWS[number * 800 : (number + 1) * 800])
        write_bytes(tmp_path / f"part-{number}.csv.gz", gzip.compress(data))
    shared: dict[str, Any] = {}
    node = WhereChunksRun(str(tmp_path), chunk_bytes=5_000, backend=backend, workers=2)
    node.run(shared)
    by_file: dict[str | None, list[tuple[int, int | None, int]]] = {}
    for pid, file, chunk, thread in shared["where"]:
        by_file.setdefault(file, []).append((pid, chunk, thread))
    assert sorted(by_file) == [str(tmp_path / f"part-{n}.csv.gz") for n in range(4)]
    for runs in by_file.values():
        assert len(runs) > 1  # several chunks per part
        assert [chunk for _, chunk, _ in runs] == list(range(len(runs)))
        assert len({(pid, thread) for pid, _, thread in runs}) == 1  # one worker per part
    assert node.csv_report.ranges == len(shared["where"])
    assert node.csv_report.rows == 3200


def test_several_parts_are_decompressed_at_once_and_stopped_with_the_batch(
    tmp_path: Path,
) -> None:
    """In the parent (here: the sequential backend), the next compressed part is decompressing
    while this one's chunks run; a batch that fails stops every such thread."""
    import threading

    for number in range(6):
        data = HEADER + b"".join(ROWS[number * 800 : (number + 1) * 800])
        write_bytes(tmp_path / f"part-{number}.csv.gz", gzip.compress(data))
    got = csv_stats(tmp_path, ["amount", "qty"], group_by="region", chunk_bytes=5_000)
    assert got.rows == 4800

    seen_threads: list[int] = []

    class Fails(CSVBatchNode):
        def exec(self, table: Any) -> None:
            seen_threads.append(
                sum(t.name == "batchcore-decompress" for t in threading.enumerate())
            )
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        Fails(str(tmp_path), chunk_bytes=5_000, backend="sequential").run({})
    assert max(seen_threads) >= 2  # the next part was decompressing already
    assert not [t for t in threading.enumerate() if t.name == "batchcore-decompress"]
