"""CSVBatchNode on every backend: options, RFC 4180 files, located errors, skipped rows."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from csv_helpers import (
    SALES,
    ProbeNode,
    RowsNode,
    SeedLikeTotal,
    csv_text,
    python_rows,
    write_bytes,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcore import Flow, Node
from batchcore.processors.csv.node import CSVBatchNode, CsvReport
from batchcore.processors.csv.split import CsvRange
from batchcore.processors.errors import CsvFormatError, UnknownColumnError


def rows_of(path: Path, backend: str, **options: Any) -> list[list[Any]]:
    shared: dict[str, Any] = {}
    RowsNode(str(path), backend=backend, workers=2, **options).run(shared)
    rows: list[list[Any]] = shared["rows"]
    return rows


def probes(path: Path, backend: str, **options: Any) -> list[dict[str, Any]]:
    shared: dict[str, Any] = {}
    ProbeNode(str(path), backend=backend, workers=2, **options).run(shared)
    result: list[dict[str, Any]] = shared["probes"]
    return result


# --- the seed's shape ------------------------------------------------------------------------


class ShowTotal(Node):
    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["statistics"]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["shown"] = True


def test_subclassed_like_the_seed_csv_processor(backend: str) -> None:
    node = SeedLikeTotal(chunk_bytes=16 << 10, columns=["amount"], backend=backend, workers=2)
    node - "show_stats" >> ShowTotal()
    shared: dict[str, Any] = {"input_file": str(SALES)}
    Flow(start=node).run(shared)
    frame = pd.read_csv(SALES)
    assert shared["shown"] is True
    assert shared["statistics"]["rows"] == len(frame) == 5000
    assert shared["statistics"]["count"] == frame["amount"].count()
    assert shared["statistics"]["sum"] == pytest.approx(frame["amount"].sum(), rel=1e-12)
    assert node.csv_report.ranges > 10  # 16 KiB ranges of a ~400 KB file
    assert node.csv_report.rows == 5000
    assert node.batch_stats.items == node.csv_report.ranges


class TotalSales(CSVBatchNode):
    """README's example, verbatim."""

    def exec(self, table: pa.Table) -> tuple[int, Any]:
        return table.num_rows, pc.sum(table["amount"]).as_py()

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> str:
        shared["rows"] = sum(rows for rows, _ in exec_res)
        shared["total"] = sum(total for _, total in exec_res)
        return "done"


def test_readme_example(backend: str) -> None:
    shared: dict[str, Any] = {"input_file": str(SALES)}
    TotalSales(columns=["amount"], backend=backend, workers=2, chunk_bytes=100_000).run(shared)
    frame = pd.read_csv(SALES)
    assert shared["rows"] == 5000
    assert shared["total"] == pytest.approx(frame["amount"].sum(), rel=1e-12)


def test_exec_gets_a_pyarrow_table_and_post_gets_results_in_order(backend: str) -> None:
    got = probes(SALES, backend, chunk_bytes=32 << 10)
    assert {probe["type"] for probe in got} == {"Table"}
    ranges = [probe["range"] for probe in got]
    assert [rng.index for rng in ranges] == list(range(len(ranges)))
    whole = pa.concat_tables([probe["table"] for probe in got])
    assert whole["order_id"].to_pylist() == list(range(1, 5001))
    assert len({probe["schema"] for probe in got}) == 1
    # every table is its own data (no range's table changes when the next range is read)
    assert whole.equals(pacsv.read_csv(SALES))


def test_output_pandas_gives_dataframes(backend: str) -> None:
    got = probes(SALES, backend, chunk_bytes=64 << 10, output="pandas")
    assert {probe["type"] for probe in got} == {"DataFrame"}
    frame = pd.concat([probe["frame"] for probe in got], ignore_index=True)
    expected = pd.read_csv(SALES)
    assert frame["order_id"].tolist() == expected["order_id"].tolist()
    assert frame["amount"].tolist() == expected["amount"].tolist()
    assert frame["region"].tolist() == expected["region"].tolist()


def test_current_range_is_the_range_exec_sees(backend: str) -> None:
    got = probes(SALES, backend, chunk_bytes=50_000)
    sizes = [probe["range"].size for probe in got]
    assert sum(sizes) == SALES.stat().st_size - len(SALES.read_bytes().split(b"\n", 1)[0]) - 1
    for probe in got:
        rng: CsvRange = probe["range"]
        raw = SALES.read_bytes()[rng.start : rng.end]
        assert probe["rows"] == len(list(csv.reader(raw.decode().splitlines())))
    assert ProbeNode(str(SALES)).current_range is None  # outside exec


def test_csv_report_describes_the_run(backend: str) -> None:
    node = RowsNode(str(SALES), chunk_bytes=100_000, backend=backend, workers=2)
    shared: dict[str, Any] = {}
    node.run(shared)
    report = node.csv_report
    assert report == CsvReport(
        path=str(SALES),
        bytes=SALES.stat().st_size,
        ranges=len(shared["ranges"]),
        rows=5000,
        skipped=0,
        skipped_lines=[],
        files=[str(SALES)],
    )
    assert report.ranges == 5  # 429,967 bytes in 100,000-byte blocks
    node.run(shared)  # a second run starts a fresh report
    assert node.csv_report.rows == 5000


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_chunk_bytes_does_not_change_the_rows(
    backend: str, chunk_bytes: int, tmp_path: Path
) -> None:
    rows = [["id", "text"]] + [[i, f'row {i}, "quoted"\nsecond line'] for i in range(40)]
    path = write_bytes(tmp_path / "c.csv", csv_text(rows))
    got = rows_of(path, backend, chunk_bytes=chunk_bytes)
    assert got == [[i, f'row {i}, "quoted"\nsecond line'] for i in range(40)]


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_delimiter(backend: str, delimiter: str, tmp_path: Path) -> None:
    rows = [["a", "b"], ["1", f"x{delimiter}y"], ["2", "z,w"]]
    path = write_bytes(tmp_path / "d.csv", csv_text(rows, delimiter=delimiter))
    assert rows_of(path, backend, delimiter=delimiter, chunk_bytes=4) == [
        [1, f"x{delimiter}y"],
        [2, "z,w"],
    ]


def test_headerless_file_gets_f_names_or_column_names(backend: str, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "h.csv", "1,a\n2,b\n3,c\n")
    got = probes(path, backend, header=False, chunk_bytes=4)
    assert {tuple(probe["columns"]) for probe in got} == {("f0", "f1")}
    assert rows_of(path, backend, header=False, chunk_bytes=4) == [[1, "a"], [2, "b"], [3, "c"]]
    got = probes(path, backend, header=False, column_names=["id", "tag"])
    assert got[0]["columns"] == ["id", "tag"] and got[0]["rows"] == 3


def test_columns_subset_only_those_columns_in_that_order(backend: str) -> None:
    got = probes(SALES, backend, columns=["amount", "region"], chunk_bytes=64 << 10)
    assert {tuple(probe["columns"]) for probe in got} == {("amount", "region")}
    assert sum(probe["rows"] for probe in got) == 5000


def test_unknown_column_is_an_error_before_any_exec(backend: str, tmp_path: Path) -> None:
    with pytest.raises(UnknownColumnError, match="'amout'"):
        RowsNode(str(SALES), marker_dir=str(tmp_path), columns=["amout"], backend=backend).run({})
    assert list(tmp_path.iterdir()) == []


def test_column_types(backend: str, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "t.csv", "id,code,price\n1,007,2\n2,010,3.5\n")
    types = {"id": "int32", "code": "string", "price": pa.float32()}
    got = probes(path, backend, column_types=types, chunk_bytes=3)
    for probe in got:
        assert probe["schema"].types == [pa.int32(), pa.string(), pa.float32()]
    assert rows_of(path, backend, column_types=types) == [[1, "007", 2.0], [2, "010", 3.5]]


def test_null_values(backend: str, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "n.csv", "a,b\n1,NA\n2,\n3,none\n4,5\n")
    assert rows_of(path, backend) == [[1, "NA"], [2, ""], [3, "none"], [4, "5"]]  # text
    got = rows_of(path, backend, null_values=["NA", "none", ""], chunk_bytes=4)
    assert got == [[1, None], [2, None], [3, None], [4, 5]]


def test_latin1_file_decodes(backend: str, tmp_path: Path) -> None:
    text = "city,n\nK\u00f8benhavn,1\nS\u00e3o Paulo,2\n\u00c5rhus,3\n"
    path = write_bytes(tmp_path / "l.csv", text, "latin-1")
    with pytest.raises(CsvFormatError, match="utf-8"):
        rows_of(path, backend)  # read as the default utf-8, it is an error, never mojibake
    got = rows_of(path, backend, encoding="latin-1", chunk_bytes=5)
    assert got == [["K\u00f8benhavn", 1], ["S\u00e3o Paulo", 2], ["\u00c5rhus", 3]]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_non_ascii_compatible_encoding_is_rejected(encoding: str) -> None:
    with pytest.raises(ValueError, match="ASCII-compatible"):
        RowsNode(str(SALES), encoding=encoding)


# --- RFC 4180 --------------------------------------------------------------------------------

RFC_CASES = {
    "quoted delimiters": (b'a,b\n"x,y",1\n",",2\n', [["x,y", 1], [",", 2]]),
    "doubled quotes": (b'a,b\n"say ""hi""",1\n"""",2\n', [['say "hi"', 1], ['"', 2]]),
    "LF inside quotes": (b'a,b\n"one\ntwo",1\n"\n",2\n', [["one\ntwo", 1], ["\n", 2]]),
    "CRLF inside quotes": (b'a,b\r\n"one\r\ntwo",1\r\n', [["one\r\ntwo", 1]]),
    "CRLF line endings": (b"a,b\r\nx,1\r\ny,2\r\n", [["x", 1], ["y", 2]]),
    "no final newline": (b"a,b\nx,1\ny,2", [["x", 1], ["y", 2]]),
    "no final newline, CRLF": (b"a,b\r\nx,1\r\ny,2", [["x", 1], ["y", 2]]),
    "quoted last field, no newline": (b'a,b\nx,1\ny,"2\n"', [["x", "1"], ["y", "2\n"]]),
    "utf-8 text": (
        "a,b\n\u00e9t\u00e9,1\n\u20ac,2\n".encode(),
        [["\u00e9t\u00e9", 1], ["\u20ac", 2]],
    ),
}


@pytest.mark.parametrize("case", list(RFC_CASES))
def test_rfc4180_files(backend: str, case: str, tmp_path: Path) -> None:
    data, expected = RFC_CASES[case]
    path = write_bytes(tmp_path / "rfc.csv", data)
    for chunk in (1, 3, 1 << 20):
        assert rows_of(path, backend, chunk_bytes=chunk) == expected, chunk


def test_utf8_bom_is_not_in_the_first_column_name(backend: str, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "bom.csv", b"\xef\xbb\xbfid,name\n1,x\n2,y\n")
    got = probes(path, backend, chunk_bytes=2)
    assert {tuple(probe["columns"]) for probe in got} == {("id", "name")}
    assert rows_of(path, backend) == [[1, "x"], [2, "y"]]


def test_empty_file_is_a_clear_error_naming_the_file(backend: str, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "empty.csv", b"")
    with pytest.raises(CsvFormatError, match="empty") as info:
        rows_of(path, backend)
    assert info.value.path == str(path) and str(path) in str(info.value)


@pytest.mark.parametrize("data", [b"a,b\n", b"a,b"])
def test_header_only_file_has_zero_rows_and_keeps_its_columns(
    backend: str, data: bytes, tmp_path: Path
) -> None:
    path = write_bytes(tmp_path / "header.csv", data)
    node = ProbeNode(str(path), backend=backend, workers=2)
    shared: dict[str, Any] = {}
    node.run(shared)
    assert shared["probes"] == []
    assert node.csv_report.rows == 0
    assert node.csv_plan is not None and node.csv_plan.schema.names == ["a", "b"]


# --- the property: chunked parse equals the standard library's -----------------------------------

FIELD = st.text(alphabet=st.sampled_from(list('ab Z,"\n\r\u00e9\u4e2d')), max_size=6)


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, int]:
    width = draw(st.integers(1, 4))
    # at least one row: a header-only file has its own test (and its own bug)
    rows = draw(st.lists(st.lists(FIELD, min_size=width, max_size=width), min_size=1, max_size=10))
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    data = csv_text([[f"c{i}" for i in range(width)], *rows], terminator, quoting=quoting).encode()
    if not draw(st.booleans()):
        data = data.removesuffix(terminator.encode())  # no final newline
    # Python 3.11's writer leaves a bare CR unquoted with lineterminator="\n": not RFC 4180 (the
    # stdlib itself does not read it back as written), so such rows are written fully quoted.
    if python_rows(data)[1:] != rows:
        data = csv_text(
            [[f"c{i}" for i in range(width)], *rows], terminator, quoting=csv.QUOTE_ALL
        ).encode()
    return data, width


def check_against_stdlib(backend: str, data: bytes, width: int, chunk_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_bytes(Path(folder) / "h.csv", data)
        types = {f"c{i}": "string" for i in range(width)}
        got = rows_of(path, backend, chunk_bytes=chunk_bytes, column_types=types, null_values=[])
    assert got == python_rows(data)[1:]


@pytest.mark.parametrize("backend_name", ["sequential"])
@settings(max_examples=300)
@given(file=csv_files(), chunk_bytes=st.integers(1, 200))
def test_chunked_parse_equals_csv_reader(
    backend_name: str, file: tuple[bytes, int], chunk_bytes: int
) -> None:
    check_against_stdlib(backend_name, file[0], file[1], chunk_bytes)


@pytest.mark.parametrize("backend_name", ["process"])
@settings(max_examples=15)
@given(file=csv_files(), chunk_bytes=st.integers(1, 200))
def test_chunked_parse_equals_csv_reader_on_processes(
    backend_name: str, file: tuple[bytes, int], chunk_bytes: int
) -> None:
    check_against_stdlib(backend_name, file[0], file[1], chunk_bytes)


# --- located errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "found"),
    [("3,4,5\n", "found 3"), ("3\n", "found 1")],
)
def test_ragged_row_names_file_and_line(
    backend: str, tail: str, found: str, tmp_path: Path
) -> None:
    path = write_bytes(tmp_path / "r.csv", "a,b\n1,2\n" + tail + "6,7\n")
    with pytest.raises(CsvFormatError, match=found) as info:
        rows_of(path, backend)
    assert (info.value.path, info.value.line) == (str(path), 3)
    assert str(info.value).startswith(f"{path}:3: ")


def test_ragged_row_many_ranges_in(backend: str, tmp_path: Path) -> None:
    lines = ["a,b"] + [f"{i},{i}" for i in range(500)]
    lines[400] = "399,399,extra"
    path = write_bytes(tmp_path / "late.csv", "\n".join(lines) + "\n")
    node = RowsNode(str(path), chunk_bytes=64, backend=backend, workers=2)
    with pytest.raises(CsvFormatError, match="found 3") as info:
        node.run({})
    assert info.value.line == 401
    assert node.csv_report.ranges > 50


def test_ragged_row_after_quoted_newlines(backend: str, tmp_path: Path) -> None:
    """Lines are physical: each quoted newline before the bad row moves it one line down."""
    rows: list[list[Any]] = [["a", "b"]] + [[f"note\n{i}\r\nmore", i] for i in range(30)]
    text = csv_text(rows) + "x,1,2\n" + csv_text([["tail", 0]])
    path = write_bytes(tmp_path / "q.csv", text)
    bad_line = 1 + 30 * 3 + 1
    assert text.splitlines()[bad_line - 1] == "x,1,2"
    for chunk in (16, 1 << 20):
        with pytest.raises(CsvFormatError) as info:
            rows_of(path, backend, chunk_bytes=chunk)
        assert info.value.line == bad_line, chunk


def test_unterminated_quote_is_raised_before_any_exec(backend: str, tmp_path: Path) -> None:
    lines = ["a,b"] + [f"{i},{i}" for i in range(100)] + ['100,"never closed', "101,101"]
    lines += [f"{i},{i}" for i in range(102, 200)]
    path = write_bytes(tmp_path / "u.csv", "\n".join(lines) + "\n")
    markers = tmp_path / "markers"
    markers.mkdir()
    node = RowsNode(str(path), marker_dir=str(markers), chunk_bytes=50, backend=backend, workers=2)
    with pytest.raises(CsvFormatError, match="unterminated quote") as info:
        node.run({})
    assert (info.value.path, info.value.line) == (str(path), 102)
    assert list(markers.iterdir()) == []


def test_unterminated_quote_early_in_a_big_file(tmp_path: Path) -> None:
    """A stray quote on line 2 of a 12 MB file: the same clear error as in a small file (it must
    not surface as a pyarrow error from reading the rest of the file as the inference head)."""
    path = write_bytes(tmp_path / "stray.csv", b'a,b\n1,"open\n' + b"2,3\n" * 3_000_000)
    with pytest.raises(CsvFormatError, match="unterminated quote") as info:
        rows_of(path, "sequential")
    assert (info.value.path, info.value.line) == (str(path), 2)


def test_no_quote_char_reads_quotes_as_text(backend: str, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "nq.csv", 'a,b\n"x,1\n5" tall,2\n')
    got = rows_of(path, backend, quote_char=None, chunk_bytes=3)
    assert got == [['"x', 1], ['5" tall', 2]]


def test_undecodable_utf8_names_line_and_column(backend: str, tmp_path: Path) -> None:
    lines = [b"id,name"] + [b"%d,ok" % i for i in range(200)]
    lines[150] = b"149,caf\xe9"
    path = write_bytes(tmp_path / "bad.csv", b"\n".join(lines) + b"\n")
    with pytest.raises(CsvFormatError, match="not valid utf-8") as info:
        rows_of(path, backend, chunk_bytes=100)
    assert (info.value.path, info.value.line, info.value.column) == (str(path), 151, "name")


def test_missing_file_names_the_path(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    with pytest.raises(FileNotFoundError) as info:
        rows_of(path, backend)
    assert info.value.filename == str(path)


def test_a_bad_int_past_the_inference_head(backend: str, tmp_path: Path) -> None:
    """The head (first MiB) is all ints; ``oops`` further on is an error, not a new type."""
    count = 150_000
    lines = ["id,qty"] + [f"{i},{i % 9}" for i in range(count)]
    bad = 140_000
    lines[bad + 1] = f"{bad},oops"
    path = write_bytes(tmp_path / "big.csv", "\n".join(lines) + "\n")
    assert path.stat().st_size > (1 << 20) + 100_000
    with pytest.raises(CsvFormatError, match="int64") as info:
        rows_of(path, backend, chunk_bytes=256 << 10)
    assert (info.value.path, info.value.line, info.value.column) == (str(path), bad + 2, "qty")
    assert "'oops'" in str(info.value)
    got = probes(path, backend, chunk_bytes=256 << 10, column_types={"qty": "string"})
    assert len(got) > 3
    assert {probe["schema"] for probe in got} == {
        pa.schema([pa.field("id", pa.int64()), pa.field("qty", pa.string())])
    }
    qty = pa.concat_tables([probe["table"] for probe in got])["qty"]
    assert qty[bad].as_py() == "oops"
    assert pc.count(qty).as_py() == count


# --- bad_rows="skip" -------------------------------------------------------------------------


def test_skip_bad_rows_counts_and_locates_them(backend: str, tmp_path: Path) -> None:
    lines = ["a,b"] + [f"{i},{i}" for i in range(300)]
    bad = {20: "x", 121: "1,2,3", 250: "4,5,6,7", 299: "lonely"}
    for index, text in bad.items():
        lines[index] = text
    path = write_bytes(tmp_path / "s.csv", "\n".join(lines) + "\n")
    for chunk in (40, 1 << 20):
        node = RowsNode(str(path), bad_rows="skip", chunk_bytes=chunk, backend=backend, workers=2)
        shared: dict[str, Any] = {}
        node.run(shared)
        report = node.csv_report
        assert report.skipped == 4
        assert report.skipped_lines == [(str(path), index + 1) for index in sorted(bad)]
        assert report.rows == len(shared["rows"]) == 300 - 4
        assert report.rows + report.skipped == len(lines) - 1  # nothing silently lost
        assert [row[0] for row in shared["rows"]] == [i for i in range(300) if i + 1 not in bad]


def test_skipped_lines_are_capped_but_the_count_is_not(backend: str, tmp_path: Path) -> None:
    lines = ["a,b"] + [f"{i},{i}" if i % 3 else f"{i}" for i in range(90)]
    path = write_bytes(tmp_path / "s.csv", "\n".join(lines) + "\n")
    node = RowsNode(str(path), bad_rows="skip", chunk_bytes=30, backend=backend, workers=2)
    node.run({})
    assert node.csv_report.skipped == 30
    first_20 = [(str(path), i + 2) for i in range(0, 60, 3)]
    assert node.csv_report.skipped_lines == first_20
    assert node.csv_report.rows == 60


def test_skip_does_not_hide_an_unterminated_quote(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "u.csv", 'a,b\n1,2\n"3,4\n')
    with pytest.raises(CsvFormatError, match="unterminated"):
        rows_of(path, "sequential", bad_rows="skip")


def test_a_subclass_whose_prep_yields_other_items_still_works(backend: str) -> None:
    """CSVBatchNode is a BatchNode: a prep that returns plain items runs exec on them."""
    got = Doubler(backend=backend, workers=2)
    shared: dict[str, Any] = {}
    got.run(shared)
    assert shared["out"] == [0, 2, 4, 6]


class Doubler(CSVBatchNode):
    def prep(self, shared: dict[str, Any]) -> list[int]:
        return [0, 1, 2, 3]

    def exec(self, item: int) -> int:
        return item * 2

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["out"] = exec_res
