"""The pandas-chunk CSV job (batchcore.processors.csv.seed) and the sales data generator
(data/make_sales.py)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest

from batchcore.processors.csv import seed as seed_csv
from batchcore.processors.csv.seed import format_stats, sales_stats
from batchcore.processors.errors import DataError, UnknownColumnError

ROOT = Path(__file__).resolve().parents[1]
SALES = ROOT / "data" / "sales.csv"
HEADER = "order_id,ts,region,product,qty,amount,note"


@pytest.fixture(scope="module")
def make_sales() -> ModuleType:
    """data/make_sales.py, imported from its path (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_sales", ROOT / "data" / "make_sales.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def pandas_stats(path: Path, columns: list[str]) -> dict[str, Any]:
    """The same statistics, computed by plain pandas on the whole file."""
    frame = pd.read_csv(path)
    result: dict[str, Any] = {"rows": len(frame), "columns": {}}
    for column in columns:
        values = frame[column]
        count = int(values.count())
        result["columns"][column] = {
            "sum": values.sum(),
            "count": count,
            "mean": values.mean() if count else None,
            "min": values.min() if count else None,
            "max": values.max() if count else None,
        }
    return result


def assert_same_stats(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got["rows"] == expected["rows"]
    assert list(got["columns"]) == list(expected["columns"])
    for column, want in expected["columns"].items():
        have = got["columns"][column]
        assert set(have) == {"sum", "count", "mean", "min", "max"}
        assert have["count"] == want["count"], column
        assert have["min"] == want["min"], column  # min and max are exact: no arithmetic
        assert have["max"] == want["max"], column
        assert have["sum"] == pytest.approx(want["sum"], rel=1e-12), column  # chunked order
        if want["mean"] is None:
            assert have["mean"] is None
        else:
            assert have["mean"] == pytest.approx(want["mean"], rel=1e-12), column


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- statistics equal plain pandas ----------------------------------------------------------


def test_sales_csv_matches_pandas_on_every_backend(backend: str) -> None:
    columns = ["amount", "qty", "order_id"]
    # 700 does not divide 5,000: the last chunk is a short one.
    got = sales_stats(SALES, columns, backend=backend, workers=2, chunk_rows=700)
    assert_same_stats(dict(got), pandas_stats(SALES, columns))
    assert got["rows"] == 5000
    assert isinstance(got["columns"]["qty"]["sum"], int)


def test_nulls_are_counted_in_rows_and_skipped_elsewhere(backend: str, tmp_path: Path) -> None:
    path = write(tmp_path / "nulls.csv", "amount,qty\n,1\n2.50,\n,3\n4.25,\n,\n")
    got = sales_stats(path, ["amount", "qty"], backend=backend, workers=2, chunk_rows=2)
    assert_same_stats(dict(got), pandas_stats(path, ["amount", "qty"]))
    assert got["rows"] == 5
    assert got["columns"]["amount"] == {
        "sum": 6.75,
        "count": 2,
        "mean": 3.375,
        "min": 2.5,
        "max": 4.25,
    }


def test_a_column_with_no_values_has_no_mean_min_or_max(tmp_path: Path) -> None:
    path = write(tmp_path / "empty_column.csv", "amount,qty\n,1\n,2\n")
    got = sales_stats(path, ["amount"], chunk_rows=1)
    assert got == {
        "rows": 2,
        "columns": {"amount": {"sum": 0, "count": 0, "mean": None, "min": None, "max": None}},
    }


def test_header_only_file_has_zero_rows(tmp_path: Path) -> None:
    got = sales_stats(write(tmp_path / "header.csv", "amount,qty\n"), ["amount"])
    assert got["rows"] == 0
    assert got["columns"]["amount"]["count"] == 0


def test_no_columns_still_counts_rows() -> None:
    assert sales_stats(SALES, [], chunk_rows=2000) == {"rows": 5000, "columns": {}}


def test_repeated_columns_are_reported_once() -> None:
    got = sales_stats(SALES, ["qty", "amount", "qty"], chunk_rows=5000)
    assert list(got["columns"]) == ["qty", "amount"]


# --- quoting --------------------------------------------------------------------------------


def test_quoted_commas_and_doubled_quotes_do_not_shift_columns(tmp_path: Path) -> None:
    text = (
        "note,amount,qty\n"
        '"gift wrap, please",1.50,1\n'
        '"said ""ASAP"", twice",2.25,2\n'
        "plain,3.00,3\n"
        '"size 27"" monitor, ""Sales, Inc.""",4.00,4\n'
    )
    path = write(tmp_path / "quoted.csv", text)
    got = sales_stats(path, ["amount", "qty"], chunk_rows=3)
    assert got["rows"] == 4
    assert got["columns"]["amount"]["sum"] == pytest.approx(10.75)
    assert got["columns"]["qty"]["sum"] == 10
    notes = pd.read_csv(path)["note"].tolist()
    assert notes[1] == 'said "ASAP", twice'
    assert notes[3] == 'size 27" monitor, "Sales, Inc."'


def test_sales_csv_quotes_notes_and_pandas_reads_what_csv_wrote() -> None:
    with SALES.open(newline="", encoding="ascii") as handle:
        records = list(csv.reader(handle))
    assert ",".join(records[0]) == HEADER
    rows = records[1:]
    assert len(rows) == 5000
    assert all(len(row) == 7 for row in rows)
    notes = [row[6] for row in rows]
    assert sum("," in note for note in notes) > 500
    assert sum('"' in note for note in notes) > 500
    assert not any("\n" in note or "\r" in note for note in notes)
    frame = pd.read_csv(SALES)
    assert frame["note"].fillna("").tolist() == notes
    assert [f"{value:.2f}" for value in frame["amount"]] == [row[5] for row in rows]


# --- errors, raised before any work ---------------------------------------------------------


@pytest.fixture
def no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the CSV is opened for chunked reading (the errors must come first)."""

    def refuse(*args: object) -> None:
        raise AssertionError("read_chunks ran before the input was checked")

    monkeypatch.setattr(seed_csv, "read_chunks", refuse)


@pytest.mark.usefixtures("no_reading")
def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match=r"nope\.csv") as info:
        sales_stats(missing)
    assert info.value.filename == str(missing)


@pytest.mark.usefixtures("no_reading")
def test_missing_column_names_it_and_lists_the_available_ones() -> None:
    with pytest.raises(KeyError) as info:
        sales_stats(SALES, ["amount", "amout"], backend="process")
    assert isinstance(info.value, UnknownColumnError)
    message = str(info.value)
    assert "'amout'" in message
    assert "amount, note, order_id, product, qty, region, ts" in message
    assert str(SALES) in message


@pytest.mark.usefixtures("no_reading")
def test_a_directory_is_not_a_csv_file(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        sales_stats(tmp_path)


def test_empty_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"empty\.csv"):
        sales_stats(write(tmp_path / "empty.csv", ""))


def test_text_column_is_a_data_error_naming_file_and_column() -> None:
    with pytest.raises(DataError) as info:
        sales_stats(SALES, ["amount", "note"], chunk_rows=1000)
    assert isinstance(info.value, ValueError)
    assert str(SALES) in str(info.value)
    assert "'note'" in str(info.value)


def test_bad_value_in_a_later_chunk_names_its_row_on_every_backend(
    backend: str, tmp_path: Path
) -> None:
    lines = ["id,amount"] + [f"{i},{i}.50" for i in range(1, 21)]
    lines[15] = "15,n/a?"
    path = write(tmp_path / "bad.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad.csv: column 'amount' .*'n/a\?' in data row 15"):
        sales_stats(path, ["amount"], backend=backend, workers=2, chunk_rows=4)


def test_ragged_row_is_a_data_error(backend: str, tmp_path: Path) -> None:
    lines = ["id,amount,note"] + [f"{i},{i}.50,x" for i in range(1, 21)]
    lines[12] = "12,1.00,x,extra"
    path = write(tmp_path / "ragged.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ragged.csv: malformed CSV: .*line 13"):
        sales_stats(path, ["amount"], backend=backend, workers=2, chunk_rows=4)


@pytest.mark.parametrize(
    ("chunk_rows", "error"),
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)],
)
def test_chunk_rows_must_be_a_positive_int(chunk_rows: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="chunk_rows"):
        sales_stats(SALES, chunk_rows=chunk_rows)


# --- the report -----------------------------------------------------------------------------


def test_format_stats_is_an_aligned_table() -> None:
    text = format_stats(sales_stats(SALES, ["amount", "qty"], chunk_rows=5000))
    lines = text.splitlines()
    assert lines[0] == "rows: 5000"
    assert lines[1].split() == ["column", "sum", "count", "mean", "min", "max"]
    assert lines[2].split() == ["amount", "3827726.62", "5000", "765.55", "1.59", "2948.88"]
    assert lines[3].split() == ["qty", "32779", "5000", "6.56", "1", "12"]
    assert len({len(line) for line in lines[1:]}) == 1


def test_show_stats_puts_the_report_in_shared_and_prints_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from batchcore import Flow

    first = seed_csv.SalesChunkStats(["amount"], chunk_rows=2500)
    first - "show_stats" >> seed_csv.ShowStats()
    shared: dict[str, Any] = {"input_file": str(SALES)}
    Flow(start=first).run(shared)
    assert shared["report"] == format_stats(shared["statistics"])
    assert first.batch_stats.items == 2
    assert capsys.readouterr() == ("", "")


# --- the generator --------------------------------------------------------------------------


def test_generator_is_deterministic(make_sales: ModuleType, tmp_path: Path) -> None:
    first = make_sales.write_sales(tmp_path / "a.csv", rows=300, seed=7)
    second = make_sales.write_sales(tmp_path / "b.csv", rows=300, seed=7)
    other = make_sales.write_sales(tmp_path / "c.csv", rows=300, seed=8)
    data = (tmp_path / "a.csv").read_bytes()
    assert data == (tmp_path / "b.csv").read_bytes()
    assert data != (tmp_path / "c.csv").read_bytes()
    assert first.rows == second.rows == other.rows == 300
    assert first.size == len(data)


def test_generator_rows_are_a_prefix_of_longer_runs(make_sales: ModuleType, tmp_path: Path) -> None:
    make_sales.write_sales(tmp_path / "short.csv", rows=100, seed=3)
    make_sales.write_sales(tmp_path / "long.csv", rows=250, seed=3)
    short = (tmp_path / "short.csv").read_text().splitlines()
    long = (tmp_path / "long.csv").read_text().splitlines()
    assert len(short) == 101
    assert short == long[:101]


def test_generated_columns_have_the_documented_shape(
    make_sales: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "sales.csv"
    make_sales.write_sales(path, rows=2000, seed=11)
    assert path.read_text().splitlines()[0] == HEADER
    frame = pd.read_csv(path)
    assert len(frame) == 2000
    assert frame["order_id"].tolist() == list(range(1, 2001))
    ts = pd.to_datetime(frame["ts"], format="ISO8601")
    assert ts.is_monotonic_increasing
    assert set(frame["region"]) <= set(make_sales.REGIONS)
    assert len(make_sales.REGIONS) == 6
    assert len(set(make_sales.PRODUCTS)) == 50
    assert frame["qty"].between(1, 12).all()
    amounts = path.read_text().splitlines()[1:]
    assert all(len(next(csv.reader([line]))[5].split(".")[1]) == 2 for line in amounts)


def test_size_mode_stops_at_the_first_whole_row_past_the_size(
    make_sales: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "sized.csv"
    written = make_sales.write_sales(path, size=20_000, seed=5)
    data = path.read_bytes()
    assert written.size == len(data) >= 20_000
    assert data.endswith(b"\n")
    last_line = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    assert len(data) - len(last_line) - 1 < 20_000  # without the last row it would be short
    assert written.rows == data.count(b"\n") - 1
    prefix = tmp_path / "prefix.csv"
    make_sales.write_sales(prefix, rows=written.rows, seed=5)
    assert prefix.read_bytes() == data


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1GB", 10**9),
        ("100MB", 10**8),
        ("500kb", 500_000),
        ("2MiB", 2 * 2**20),
        ("1.5G", 15 * 10**8),
    ],
)
def test_parse_size(make_sales: ModuleType, text: str, size: int) -> None:
    assert make_sales.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "1TB", "-1MB", "0"])
def test_parse_size_rejects_nonsense(make_sales: ModuleType, text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        make_sales.parse_size(text)


def test_generator_cli(
    make_sales: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.csv"
    assert make_sales.main([str(out), "--rows", "50", "--seed", "3"]) == 0
    assert "50 rows" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 51
    with pytest.raises(SystemExit) as info:
        make_sales.main([str(out), "--rows", "5", "--size", "1MB"])
    assert info.value.code == 2
