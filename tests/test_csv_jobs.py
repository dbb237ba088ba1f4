"""batchcore.processors.csv.jobs: csv_stats equals pandas; csv_to_parquet writes complete, atomic
datasets (what failed, killed and overlapping runs leave: test_durable_outputs.py)."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from csv_helpers import (
    SALES,
    CrashingParquetNode,
    FailingParquetNode,
    nulls_sales,
    pandas_stats,
    write_bytes,
    writes_in_flight,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import batchcore
from batchcore.processors.csv import jobs as csv_jobs
from batchcore.processors.csv.jobs import ColumnStats, CsvStats, csv_stats, csv_to_parquet
from batchcore.processors.csv.seed import sales_stats
from batchcore.processors.errors import CsvFormatError, UnknownColumnError

CHUNKS = [20_000, 150_000, 32 << 20]


def same_number(got: Any, want: Any) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return got is None
    return bool(got == pytest.approx(want, rel=1e-12))


def assert_column(got: ColumnStats, want: dict[str, Any], label: str) -> None:
    assert got.count == want["count"], label
    assert same_number(got.sum, want["sum"]), (label, got.sum, want["sum"])
    assert same_number(got.mean, want["mean"]), (label, got.mean, want["mean"])
    assert same_number(got.min, want["min"]), (label, got.min, want["min"])  # exact in practice
    assert same_number(got.max, want["max"]), (label, got.max, want["max"])


def assert_stats(got: CsvStats, want: dict[str, Any], group_by: str | None = None) -> None:
    assert got.rows == want["rows"]
    assert list(got.columns) == list(want["columns"])
    for name, column in want["columns"].items():
        assert_column(got.columns[name], column, name)
    if group_by is not None:
        assert got.group_by == group_by
        assert set(got.groups) == set(want["groups"])
        for key, group in want["groups"].items():
            assert got.groups[key].rows == group["rows"], key
            for name, column in group["columns"].items():
                assert_column(got.groups[key].columns[name], column, f"{key}/{name}")


# --- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", CHUNKS)
def test_stats_on_sales_equal_pandas(backend: str, chunk_bytes: int) -> None:
    sums = ["amount", "qty"]
    got = csv_stats(
        SALES, sums, group_by="region", backend=backend, workers=2, chunk_bytes=chunk_bytes
    )
    assert_stats(got, pandas_stats(SALES, sums, "region"), "region")
    assert got.rows == 5000
    assert isinstance(got.columns["qty"].sum, int)
    assert got.skipped_rows == 0


@pytest.mark.parametrize("chunk_bytes", [997, 30_000])
def test_stats_with_nulls_equal_pandas(backend: str, chunk_bytes: int, tmp_path: Path) -> None:
    path = nulls_sales(tmp_path / "nulls.csv")
    sums = ["amount", "qty"]
    got = csv_stats(
        path, sums, group_by="region", backend=backend, workers=2, chunk_bytes=chunk_bytes
    )
    want = pandas_stats(path, sums, "region")
    assert_stats(got, want, "region")
    frame = pd.read_csv(path)
    assert got.rows == len(frame) == 3000  # rows with a missing amount are still rows
    assert got.columns["amount"].count == frame["amount"].count() < 3000


def test_stats_grouped_by_a_column_with_missing_keys(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "g.csv", "k,v\n1,10\n,20\n1,\n2,5\n,1\n")
    got = csv_stats(path, ["v"], group_by="k", chunk_bytes=6)
    assert set(got.groups) == {1, 2, None}
    assert (got.groups[None].rows, got.groups[None].columns["v"].sum) == (2, 21)
    assert (got.groups[1].rows, got.groups[1].columns["v"].count) == (2, 1)
    report = got.as_json()
    assert report["groups"]["null"] == {
        "rows": 2,
        "sum": {"v": 21},
        "columns": {"v": {"sum": 21, "count": 2, "mean": 10.5, "min": 1, "max": 20}},
    }
    assert list(report["groups"]) == ["1", "2", "null"]


def test_stats_of_a_column_without_values(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "e.csv", "a,b\n1,\n2,\n")
    got = csv_stats(path, ["b"], column_types={"b": "float64"})
    assert got.rows == 2
    assert got.columns["b"].as_dict() == {
        "sum": 0,
        "count": 0,
        "mean": None,
        "min": None,
        "max": None,
    }


def test_a_sum_column_without_values_is_summable(tmp_path: Path) -> None:
    """An all-empty column (or a header-only file) holds no text either: like pandas, its sum is 0
    and its count 0, rather than a "not a number" error."""
    path = write_bytes(tmp_path / "e.csv", "a,b\n1,\n2,\n")
    got = csv_stats(path, ["b"])
    assert (got.rows, got.columns["b"].count, got.columns["b"].sum) == (2, 0, 0)
    header_only = write_bytes(tmp_path / "h.csv", "a,b\n")
    got = csv_stats(header_only, ["a"], group_by="b")
    assert (got.rows, got.columns["a"].count, got.groups) == (0, 0, {})


SUM_TYPES = {
    "int32": pa.int32(),
    "uint16": pa.uint16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "decimal": pa.decimal128(12, 2),
}


@pytest.mark.parametrize("kind", list(SUM_TYPES))
def test_grouped_stats_for_every_numeric_type(kind: str, tmp_path: Path) -> None:
    """Whatever numeric type a sum column has, the grouped statistics add up to the ungrouped
    ones and match a plain computation per key."""
    lines = ["key,v"] + [
        f"{'abc'[i % 3]},{i % 50}" if i % 7 else f"{'abc'[i % 3]}," for i in range(300)
    ]
    path = write_bytes(tmp_path / "t.csv", "\n".join(lines) + "\n")
    kind_type = SUM_TYPES[kind]
    got = csv_stats(path, ["v"], group_by="key", column_types={"v": kind_type}, chunk_bytes=256)
    for key in "abc":
        values = [i % 50 for i in range(300) if i % 3 == "abc".index(key) and i % 7]
        stats = got.groups[key].columns["v"]
        assert got.groups[key].rows == 100
        assert (stats.count, stats.sum, stats.min, stats.max) == (
            len(values),
            sum(values),
            min(values),
            max(values),
        ), key
    assert sum(group.columns["v"].sum for group in got.groups.values()) == got.columns["v"].sum


@pytest.mark.parametrize("key", ["flag", "n", "word"])
def test_group_keys_of_any_type_equal_pandas(key: str, tmp_path: Path) -> None:
    lines = ["flag,n,word,v"]
    for i in range(200):
        flag = "" if i % 11 == 0 else ("true" if i % 2 else "false")
        n = "" if i % 13 == 0 else str(i % 4)
        lines.append(f"{flag},{n},w{i % 5},{i}.25")
    path = write_bytes(tmp_path / "k.csv", "\n".join(lines) + "\n")
    got = csv_stats(path, ["v"], group_by=key, chunk_bytes=300)
    frame = pd.read_csv(path)
    expected = frame.groupby(key, dropna=False)["v"].agg(["size", "sum"])
    assert len(got.groups) == len(expected)
    for value, row in expected.iterrows():
        group_key = None if pd.isna(value) else (bool(value) if key == "flag" else value)
        if key == "n" and group_key is not None:
            group_key = int(group_key)
        group = got.groups[group_key]
        assert group.rows == row["size"]
        assert group.columns["v"].sum == pytest.approx(row["sum"], rel=1e-12)


def test_group_stats_on_sliced_and_chunked_tables() -> None:
    """``group_stats`` reads Arrow buffers directly: offsets, chunks and null bitmaps must count."""
    table = pa.table(
        {
            "k": pa.chunked_array([["a", "b", None], ["a", "c", "a", "b"]]),
            "v": pa.chunked_array([[1.0, None, 2.0], [3.0, 4.0, None, 6.0]]),
        }
    ).slice(1, 5)  # b, None, a, c, a
    got = csv_jobs.group_stats(table, "k", ["v"])
    assert {key: group.rows for key, group in got.items()} == {"a": 2, "b": 1, "c": 1, None: 1}
    assert got["a"].columns["v"].as_dict() == {
        "sum": 3.0,
        "count": 1,
        "mean": 3.0,
        "min": 3.0,
        "max": 3.0,
    }
    assert got["b"].columns["v"].count == 0
    assert got[None].columns["v"].sum == 2.0


def reference_group_stats(
    keys: list[Any], columns: dict[str, tuple[list[Any], bool]]
) -> dict[Any, tuple[int, dict[str, tuple[Any, int, Any, Any, float]]]]:
    """What ``group_stats`` promises, the slow way: per key, each column's non-null values in
    file order; a float column (``floating``) summed by ``careful_sum``, an integer one exactly."""
    result: dict[Any, tuple[int, dict[str, tuple[Any, int, Any, Any, float]]]] = {}
    for key in dict.fromkeys(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        stats = {}
        for name, (values, floating) in columns.items():
            kept = [values[i] for i in rows if values[i] is not None]
            if floating:
                total, residual = csv_jobs.careful_sum(np.array(kept, dtype=np.float64))
            else:
                total, residual = sum(kept), 0.0
            low, high = (min(kept), max(kept)) if kept else (None, None)
            stats[name] = (total, len(kept), low, high, residual)
        result[key] = (len(rows), stats)
    return result


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 400).flatmap(
        lambda size: st.tuples(
            st.lists(st.one_of(st.none(), st.integers(0, 300)), min_size=size, max_size=size),
            st.lists(
                st.one_of(st.none(), st.floats(-1e12, 1e12).map(lambda x: x + 0.0)),
                min_size=size,
                max_size=size,
            ),
            st.lists(
                st.one_of(st.none(), st.integers(-(2**40), 2**40)), min_size=size, max_size=size
            ),
            st.integers(0, size - 1),
        )
    )
)
def test_group_stats_equal_each_groups_values_summed_in_file_order(
    drawn: tuple[list[int | None], list[float | None], list[int | None], int],
) -> None:
    """Bit for bit (sums, residuals, minima, maxima): whatever ``group_stats`` does to be fast,
    each group's statistics are those of its values in file order, so every backend and cut
    that hands it the same rows gets the same bits. Up to 301 keys: past 256 codes too."""
    codes, floats, ints, cut = drawn
    keys = [None if code is None else f"k{code}" for code in codes]
    table = pa.table(
        {"k": keys, "f": pa.array(floats, pa.float64()), "i": pa.array(ints, pa.int64())}
    )
    table = pa.concat_tables([table.slice(0, cut), table.slice(cut)])  # two chunks
    got = csv_jobs.group_stats(table, "k", ["f", "i"])
    want = reference_group_stats(keys, {"f": (floats, True), "i": (ints, False)})
    assert set(got) == set(want)
    for key, (rows, columns) in want.items():
        assert got[key].rows == rows, key
        for name, (total, count, low, high, residual) in columns.items():
            stats = got[key].columns[name]
            assert (stats.count, stats.min, stats.max) == (count, low, high), (key, name)
            assert (stats.sum, stats.residual) == (total, residual), (key, name)
            assert type(stats.sum) is type(total), (key, name)


def test_stats_without_sum_columns_count_rows(backend: str) -> None:
    got = csv_stats(SALES, [], backend=backend, workers=2, chunk_bytes=50_000)
    assert (got.rows, got.columns) == (5000, {})


def test_stats_equal_the_seed_pattern(backend: str) -> None:
    """The byte-range job and the seed's pandas-chunk job agree on every backend."""
    sums = ["amount", "qty", "order_id"]
    ours = csv_stats(SALES, sums, backend=backend, workers=2, chunk_bytes=64 << 10)
    seed = sales_stats(SALES, sums, backend=backend, workers=2, chunk_rows=700)
    assert ours.rows == seed["rows"]
    for name in sums:
        assert ours.columns[name].count == seed["columns"][name]["count"]
        assert ours.columns[name].sum == pytest.approx(seed["columns"][name]["sum"], rel=1e-12)
        assert ours.columns[name].min == seed["columns"][name]["min"]
        assert ours.columns[name].max == seed["columns"][name]["max"]


def test_stats_skip_bad_rows_and_report_them(backend: str, tmp_path: Path) -> None:
    lines = ["region,amount"] + [f"r{i % 3},{i}.5" for i in range(400)]
    lines[50] = "r0,1,2"
    lines[333] = "r1"
    path = write_bytes(tmp_path / "bad.csv", "\n".join(lines) + "\n")
    with pytest.raises(CsvFormatError) as info:
        csv_stats(path, ["amount"], backend=backend, workers=2, chunk_bytes=512)
    assert info.value.line == 51
    got = csv_stats(path, ["amount"], bad_rows="skip", backend=backend, workers=2, chunk_bytes=512)
    at = [(str(path), 51), (str(path), 334)]
    assert (got.rows, got.skipped_rows, got.skipped_lines) == (398, 2, at)
    assert got.rows + got.skipped_rows == len(lines) - 1
    kept = [i for i in range(400) if i + 1 not in (50, 333)]
    assert got.columns["amount"].sum == pytest.approx(sum(i + 0.5 for i in kept))
    report = got.as_json()
    lines_json = [{"file": str(path), "line": 51}, {"file": str(path), "line": 334}]
    assert (report["skipped_rows"], report["skipped_lines"]) == (2, lines_json)


def test_a_text_column_cannot_be_summed(tmp_path: Path) -> None:
    with pytest.raises(CsvFormatError, match="not a number") as info:
        csv_stats(SALES, ["region"])
    assert (info.value.path, info.value.column) == (str(SALES), "region")
    got = csv_stats(SALES, ["qty"], column_types={"qty": "float64"})
    assert isinstance(got.columns["qty"].sum, float)


def test_unknown_sum_or_group_column(tmp_path: Path) -> None:
    with pytest.raises(UnknownColumnError, match="'amout'"):
        csv_stats(SALES, ["amout"])
    with pytest.raises(UnknownColumnError, match="'regio'"):
        csv_stats(SALES, ["amount"], group_by="regio")


def test_stats_json_shape() -> None:
    got = csv_stats(SALES, ["amount"], group_by="region", chunk_bytes=100_000)
    report = json.loads(json.dumps(got.as_json()))
    assert report["rows"] == 5000
    assert report["sum"] == {"amount": got.columns["amount"].sum}
    assert set(report["groups"]) == {"Central", "East", "North", "Online", "South", "West"}
    for group in report["groups"].values():
        assert set(group) >= {"rows", "sum"} and set(group["sum"]) == {"amount"}
    assert sum(group["rows"] for group in report["groups"].values()) == 5000


def test_column_stats_merge() -> None:
    total = ColumnStats()
    total.merge(ColumnStats(10, 2, 3, 7))
    total.merge(ColumnStats(0, 0, None, None))
    total.merge(ColumnStats(5, 1, 5, 5))
    assert total.as_dict() == {"sum": 15, "count": 3, "mean": 5.0, "min": 3, "max": 7}


# --- Parquet ---------------------------------------------------------------------------------


def whole_file(path: Path) -> pa.Table:
    return pacsv.read_csv(path)


def assert_dataset_equals_csv(out_dir: Path, csv_path: Path, parts: int) -> None:
    """The dataset reads back as exactly the CSV's rows, in order, and every part has one schema."""
    names = sorted(p.name for p in out_dir.glob("part-*.parquet"))
    assert names == [f"part-{i:05d}.parquet" for i in range(parts)]
    schemas = {pq.read_schema(out_dir / name) for name in names}
    assert len(schemas) == 1
    table = pq.read_table(out_dir)
    want = whole_file(csv_path)
    assert table.num_rows == want.num_rows
    assert table.column_names == want.column_names
    assert table.cast(want.schema).equals(want)  # Parquet stores timestamp[s] as [ms]
    frame = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
    assert table["order_id"].to_pylist() == frame["order_id"].tolist()
    assert table["amount"].to_pylist() == frame["amount"].tolist()
    assert (out_dir / "_SUCCESS").exists()


def test_to_parquet_reads_back_as_the_csv(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = csv_to_parquet(SALES, out, chunk_bytes=64 << 10, backend=backend, workers=2)
    assert result["rows"] == 5000 and result["parts"] == 7
    assert result["schema"] == whole_file(SALES).schema
    assert_dataset_equals_csv(out, SALES, 7)
    assert json.loads((out / "_SUCCESS").read_text()) == {
        "source": str(SALES),
        "rows": 5000,
        "parts": 7,
    }
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_to_parquet_with_quoted_newlines_and_nulls(backend: str, tmp_path: Path) -> None:
    path = nulls_sales(tmp_path / "nulls.csv", rows=2000)
    out = tmp_path / "ds"
    result = csv_to_parquet(path, out, chunk_bytes=4096, backend=backend, workers=2)
    table = pq.read_table(out)
    want = pacsv.read_csv(path)
    assert result["parts"] > 10
    assert table.equals(want)
    assert len({pq.read_schema(part) for part in out.glob("part-*.parquet")}) == 1


def test_to_parquet_columns_subset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, columns=["order_id", "amount"], chunk_bytes=100_000)
    table = pq.read_table(out)
    assert table.column_names == ["order_id", "amount"]
    assert table.num_rows == 5000


def test_non_empty_dir_without_overwrite_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, chunk_bytes=100_000)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    with pytest.raises(FileExistsError) as info:
        csv_to_parquet(SALES, out, chunk_bytes=50_000)
    assert info.value.filename == str(out)
    assert "overwrite" in str(info.value)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_overwrite_replaces_the_old_parts(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = csv_to_parquet(SALES, out, chunk_bytes=40_000)
    assert first["parts"] == 11
    second = csv_to_parquet(
        SALES, out, chunk_bytes=150_000, overwrite=True, backend=backend, workers=2
    )
    assert second["parts"] == 3
    assert_dataset_equals_csv(out, SALES, 3)  # parts 3..10 of the first run are gone


def test_overwrite_never_deletes_files_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        csv_to_parquet(SALES, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_bad_input_writes_nothing(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "bad.csv", 'a,b\n1,2\n"3,4\n')
    out = tmp_path / "ds"
    with pytest.raises(CsvFormatError):
        csv_to_parquet(path, out)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.csv"]  # no folder, lock or staging


def test_an_empty_output_dir_is_fine_and_a_file_is_not(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    assert csv_to_parquet(SALES, out)["parts"] == 1
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError):
        csv_to_parquet(SALES, target)


# --- atomic parts ----------------------------------------------------------------------------


_REAL_WRITE_TABLE = pq.write_table
_PAUSE = threading.local()  # ``ack_dir`` while a SlowWriteParquetNode writes in this thread


def _write_table_in_two_halves(table: pa.Table, where: Any, **kwargs: Any) -> None:
    """While a SlowWriteParquetNode writes: the first half of the file, then a pause until the
    watcher acknowledges it saw the file (5 s at most), then the rest. Otherwise pyarrow's own."""
    ack_dir = getattr(_PAUSE, "ack_dir", None)
    if ack_dir is None or not isinstance(where, str):
        _REAL_WRITE_TABLE(table, where, **kwargs)
        return
    sink = pa.BufferOutputStream()
    _REAL_WRITE_TABLE(table, sink, **kwargs)
    data = sink.getvalue().to_pybytes()
    ack = Path(ack_dir) / Path(where).name
    with open(where, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        deadline = time.monotonic() + 5
        while not ack.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        handle.write(data[len(data) // 2 :])


class SlowWriteParquetNode(csv_jobs.ParquetNode):
    """A ParquetNode whose every part write stays half done until the watcher has seen it."""

    def exec(self, table: pa.Table) -> tuple[str, int]:
        if pq.write_table is not _write_table_in_two_halves:
            # A worker process: installed for good, inert outside this node's exec.
            pq.write_table = _write_table_in_two_halves
        _PAUSE.ack_dir = str(Path(self.out_dir).parent / "acks")
        try:
            return super().exec(table)
        finally:
            _PAUSE.ack_dir = None


@dataclass
class Watched:
    """What the watcher saw: complete parts (rows), writes in progress, unreadable parts."""

    out: Path
    rows: list[int] = field(default_factory=list)
    in_progress: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


@pytest.fixture
def watcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Watched]:
    """Lists the output folder and its hidden siblings (staging) while a job runs, reads every
    visible part (each must be complete) and acknowledges every file it saw, which lets a paused
    write finish."""
    monkeypatch.setattr(csv_jobs, "ParquetNode", SlowWriteParquetNode)
    monkeypatch.setattr(pq, "write_table", _write_table_in_two_halves)  # threads in this process
    watched = Watched(tmp_path / "watched")
    acks = tmp_path / "acks"
    acks.mkdir()
    stop = threading.Event()
    read: set[tuple[str, int]] = set()  # (name, inode) of parts already read whole

    def look_at(folder: Path, name: str, hidden: bool) -> None:
        if hidden or name.startswith("."):
            watched.in_progress.add(str(folder / name))  # a temporary file or a staged part
        elif folder == watched.out and name.startswith("part-"):
            try:
                seen = (name, os.stat(folder / name).st_ino)
                if seen not in read:  # a rename gives a new inode: read it again
                    watched.rows.append(pq.read_table(folder / name).num_rows)
                    read.add(seen)
            except FileNotFoundError:
                return  # replaced by an overwrite meanwhile
            except Exception as exc:  # a partial part: record it, never raise in a thread
                watched.problems.append(f"{name}: {type(exc).__name__}: {exc}")
        (acks / name).touch()

    def watch() -> None:
        root = watched.out.parent
        while not stop.is_set():
            for folder, folders, names in os.walk(root):
                folders[:] = [f for f in folders if f != acks.name]
                hidden = any(part.startswith(".") for part in Path(folder).relative_to(root).parts)
                for name in sorted(names):
                    look_at(Path(folder), name, hidden)
            time.sleep(0.001)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield watched
    finally:
        stop.set()
        thread.join(5)


def test_parts_are_never_visible_half_written(backend: str, watcher: Watched) -> None:
    """Every part write is held half done until the watcher has listed the folder: the watcher
    must have seen writes in progress, and never a visible part it could not read whole."""
    for _ in range(3):
        csv_to_parquet(
            SALES, watcher.out, chunk_bytes=8 << 10, overwrite=True, backend=backend, workers=2
        )
    parts = len(list(watcher.out.glob("part-*.parquet")))
    assert watcher.problems == []
    assert len(watcher.in_progress) >= parts, (
        f"saw {len(watcher.in_progress)} writes in progress over 3 runs of {parts} parts"
    )
    assert watcher.rows  # and it read complete parts
    assert_dataset_equals_csv(watcher.out, SALES, parts)


def test_a_failed_write_leaves_no_partial_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails halfway (disk full) leaves neither a visible part nor a temp file."""
    real = pq.write_table
    calls: list[str] = []

    def half_then_fail(table: pa.Table, where: Any, **kwargs: Any) -> None:
        calls.append(str(where))
        if len(calls) == 3:
            sink = pa.BufferOutputStream()
            real(table, sink)
            data = sink.getvalue().to_pybytes()
            Path(where).write_bytes(data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", half_then_fail)  # the module csv_jobs imports in exec
    out = tmp_path / "ds"
    with pytest.raises(OSError, match="No space left"):
        csv_to_parquet(SALES, out, chunk_bytes=50_000)
    assert len(calls) == 3
    assert all(Path(where).name.startswith(".part-") for where in calls)
    assert list(tmp_path.iterdir()) == []  # no dataset, no staging folder, no temp file, no lock


def test_nothing_is_written_after_a_failed_run_returns(
    backend: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """When one range fails, the job must not return while other ranges are still writing: a
    part that appears later could land in the next run's dataset (``overwrite=True`` right after
    a failure) and silently replace one of its parts."""
    out = tmp_path / "ds"
    marks = tmp_path_factory.mktemp("marks")
    node = FailingParquetNode(
        str(SALES),
        str(out),
        0,
        0.1,
        0.5,
        marker_dir=str(marks),
        chunk_bytes=50_000,
        backend=backend,
        workers=2,
    )
    with pytest.raises(OSError, match="No space left"):
        node.run({})
    right_after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    deadline = time.monotonic() + 10  # every write under way ends (or its process is gone)
    while writes_in_flight(marks) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writes_in_flight(marks) == []
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == right_after
    assert right_after == []


def test_a_worker_dying_mid_write_leaves_nothing(tmp_path: Path) -> None:
    """The half-written part stays in the staging folder, which the failed run removes."""
    out = tmp_path / "ds"
    node = CrashingParquetNode(
        str(SALES), str(out), crash_index=3, chunk_bytes=50_000, backend="process", workers=2
    )
    with pytest.raises(batchcore.WorkerCrashedError):
        node.run({})
    assert list(tmp_path.iterdir()) == []
    result = csv_to_parquet(SALES, out, chunk_bytes=50_000, backend="process", workers=2)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert_dataset_equals_csv(out, SALES, result["parts"])
