"""batchcore.processors.csv.read: options, the plan (names and one schema) and located parse
errors."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from csv_helpers import write_bytes

from batchcore.processors.csv.read import CsvOptions, CsvPlan, RangeData, make_plan, read_range
from batchcore.processors.csv.split import blocks, plan_ranges, scan_block
from batchcore.processors.errors import CsvFormatError, UnknownColumnError


def read_all(path: Path, options: CsvOptions) -> tuple[CsvPlan, list[RangeData]]:
    """Plan, split and parse every range in this process (what CSVBatchNode does, minus exec)."""
    plan = make_plan(str(path), options)
    quote = options.quote_byte
    spans = blocks(plan.data_start, plan.size, options.chunk_bytes)
    scans = [scan_block(plan.path, start, end, quote) for start, end in spans]
    ranges = plan_ranges(plan.path, plan.data_start, plan.size, scans, quote)
    return plan, [read_range(plan, rng) for rng in ranges]


def int_file_with_late_text(path: Path, rows: int = 200, bad_row: int = 150) -> tuple[Path, int]:
    """``id,qty,note`` where qty is an int except ``oops`` in data row ``bad_row``; earlier
    notes hold quoted newlines, so physical lines run ahead of record numbers.
    Returns the path and the physical line of the bad row."""
    lines = ["id,qty,note"]
    line = 1
    bad_line = 0
    for i in range(1, rows + 1):
        qty = "oops" if i == bad_row else str(i % 7)
        note = '"two\nlines"' if i % 10 == 0 else "plain"
        lines.append(f"{i},{qty},{note}")
        line += 1
        if i == bad_row:
            bad_line = line
        line += note.count("\n")
    return write_bytes(path, "\n".join(lines) + "\n"), bad_line


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"chunk_bytes": 0}, ValueError, "chunk_bytes"),
        ({"chunk_bytes": -5}, ValueError, "chunk_bytes"),
        ({"chunk_bytes": 1.5}, TypeError, "chunk_bytes"),
        ({"chunk_bytes": True}, TypeError, "chunk_bytes"),
        ({"delimiter": ",,"}, ValueError, "delimiter"),
        ({"delimiter": ""}, ValueError, "delimiter"),
        ({"delimiter": "\n"}, ValueError, "line break"),
        ({"delimiter": "\u00e9"}, ValueError, "ASCII"),
        ({"quote_char": "\r"}, ValueError, "line break"),
        ({"encoding": "no-such-codec"}, ValueError, "unknown encoding"),
        ({"encoding": "utf-16"}, ValueError, "ASCII-compatible"),
        ({"encoding": "utf-32-le"}, ValueError, "ASCII-compatible"),
        ({"encoding": "cp500"}, ValueError, "ASCII-compatible"),  # EBCDIC
        ({"bad_rows": "ignore"}, ValueError, "bad_rows"),
        ({"output": "polars"}, ValueError, "output"),
        ({"column_types": {"a": "int65"}}, ValueError, "unknown type"),
    ],
)
def test_bad_options_are_rejected_when_created(
    kwargs: dict[str, Any], error: type[Exception], needle: str
) -> None:
    with pytest.raises(error, match=needle):
        CsvOptions(**kwargs)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "cp1252", "ascii", "utf-8-sig"])
def test_ascii_compatible_encodings_are_accepted(encoding: str) -> None:
    assert CsvOptions(encoding=encoding).encoding == encoding


def test_options_accept_pyarrow_types_and_aliases() -> None:
    options = CsvOptions(column_types={"a": pa.int32(), "b": "float64"}, quote_char=None)
    assert options.quote_byte is None
    assert CsvOptions().quote_byte == ord('"')


# --- the plan --------------------------------------------------------------------------------


def test_plan_reads_names_and_infers_one_schema(tmp_path: Path) -> None:
    path = write_bytes(
        tmp_path / "p.csv", "id,price,name,day\n1,2.5,x,2024-01-02\n2,3,y,2024-01-03\n"
    )
    plan = make_plan(str(path), CsvOptions())
    assert plan.names == ("id", "price", "name", "day")
    assert plan.data_start == len("id,price,name,day\n")
    assert plan.size == path.stat().st_size
    assert plan.schema.types == [pa.int64(), pa.float64(), pa.string(), pa.date32()]


def test_utf8_bom_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "bom.csv", b"\xef\xbb\xbfid,v\r\n1,2\r\n")
    plan, parts = read_all(path, CsvOptions())
    assert plan.names == ("id", "v")
    assert plan.data_start == 3 + len(b"id,v\r\n")
    assert parts[0].table.to_pylist() == [{"id": 1, "v": 2}]


def test_bom_without_header_names_f0(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "bom.csv", b"\xef\xbb\xbf1,2\n3,4\n")
    plan, parts = read_all(path, CsvOptions(header=False))
    assert plan.names == ("f0", "f1")
    assert plan.data_start == 3
    assert parts[0].table.to_pylist() == [{"f0": 1, "f1": 2}, {"f0": 3, "f1": 4}]


def test_quoted_header_with_a_newline_and_a_delimiter(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "qh.csv", 'id,"a,b","two\nlines"\n1,2,3\n')
    plan, parts = read_all(path, CsvOptions())
    assert plan.names == ("id", "a,b", "two\nlines")
    assert parts[0].table.to_pylist() == [{"id": 1, "a,b": 2, "two\nlines": 3}]


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n\r\n", b"\xef\xbb\xbf"])
def test_an_empty_file_is_a_clear_error_naming_it(tmp_path: Path, data: bytes) -> None:
    path = write_bytes(tmp_path / "empty.csv", data)
    with pytest.raises(CsvFormatError, match="empty") as info:
        make_plan(str(path), CsvOptions())
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data", [b"a,b\n", b"a,b", b"a,b\r\n", b"\xef\xbb\xbfa,b\n"])
def test_header_only_file_plans_zero_rows_with_its_columns(tmp_path: Path, data: bytes) -> None:
    path = write_bytes(tmp_path / "header.csv", data)
    plan = make_plan(str(path), CsvOptions())
    assert plan.names == ("a", "b")
    assert plan.schema.names == ["a", "b"]
    assert plan.data_start == plan.size


def test_missing_file_is_file_not_found_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError) as info:
        make_plan(str(path), CsvOptions())
    assert info.value.filename == str(path)


def test_a_directory_is_not_a_csv_file(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError) as info:
        make_plan(str(tmp_path), CsvOptions())
    assert info.value.filename == str(tmp_path)


@pytest.mark.parametrize(
    "options",
    [
        CsvOptions(columns=["a", "zz"]),
        CsvOptions(column_types={"zz": "int64"}),
    ],
)
def test_unknown_column_lists_the_real_ones(tmp_path: Path, options: CsvOptions) -> None:
    path = write_bytes(tmp_path / "u.csv", "a,b\n1,2\n")
    with pytest.raises(UnknownColumnError) as info:
        make_plan(str(path), options)
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert str(path) in message and "'zz'" in message and "['a', 'b']" in message


def test_duplicate_names_and_wrong_column_names_count(tmp_path: Path) -> None:
    dup = write_bytes(tmp_path / "dup.csv", "a,b,a\n1,2,3\n")
    with pytest.raises(CsvFormatError, match="duplicate column names"):
        make_plan(str(dup), CsvOptions())
    path = write_bytes(tmp_path / "names.csv", "1,2\n3,4\n")
    with pytest.raises(CsvFormatError, match="3 names but rows have 2 fields"):
        make_plan(str(path), CsvOptions(header=False, column_names=["x", "y", "z"]))


def test_column_names_replace_the_header_or_name_headerless_data(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "n.csv", "a,b\n1,2\n")
    _, parts = read_all(path, CsvOptions(column_names=["x", "y"]))
    assert parts[0].table.to_pylist() == [{"x": 1, "y": 2}]  # the header row is still skipped
    _, parts = read_all(path, CsvOptions(header=False, column_names=["x", "y"]))
    assert parts[0].table.to_pylist() == [{"x": "a", "y": "b"}, {"x": "1", "y": "2"}]


# --- one schema for every range ----------------------------------------------------------------


def test_a_value_past_the_inference_head_that_does_not_fit_is_located(tmp_path: Path) -> None:
    path, bad_line = int_file_with_late_text(tmp_path / "late.csv")
    options = CsvOptions(infer_bytes=300, chunk_bytes=200)
    plan = make_plan(str(path), options)
    assert plan.schema.field("qty").type == pa.int64()  # the head holds only ints
    with pytest.raises(CsvFormatError) as info:
        read_all(path, options)
    error = info.value
    assert (error.path, error.line, error.column) == (str(path), bad_line, "qty")
    assert "'oops'" in str(error) and "int64" in str(error)
    assert str(error).startswith(f"{path}:{bad_line}: column 'qty': ")
    assert bad_line > 150  # the quoted newlines before it count as lines


def test_every_range_has_the_plan_schema(tmp_path: Path) -> None:
    path, _ = int_file_with_late_text(tmp_path / "late.csv")
    options = CsvOptions(infer_bytes=300, chunk_bytes=200, column_types={"qty": "string"})
    plan, parts = read_all(path, options)
    assert len(parts) > 5
    assert plan.schema.field("qty").type == pa.string()
    assert all(part.table.schema == plan.schema for part in parts)
    qty = [value for part in parts for value in part.table["qty"].to_pylist()]
    assert qty[149] == "oops" and len(qty) == 200


def test_a_column_empty_in_the_head_is_string_in_every_range(tmp_path: Path) -> None:
    lines = ["a,b"] + [f"{i}," for i in range(50)] + [f"{i},{i}" for i in range(50)]
    path = write_bytes(tmp_path / "nulls.csv", "\n".join(lines) + "\n")
    plan, parts = read_all(path, CsvOptions(infer_bytes=40, chunk_bytes=64))
    assert plan.schema.field("b").type == pa.string()
    assert {part.table.schema for part in parts} == {plan.schema}


def test_a_user_type_that_the_head_does_not_fit_is_located(tmp_path: Path) -> None:
    """``column_types`` are applied while the head is inferred too: a bad value there must be
    the same located CsvFormatError as anywhere else, not a bare pyarrow error."""
    path = write_bytes(tmp_path / "head.csv", "a,b\n1,2\n3,oops\n")
    with pytest.raises(CsvFormatError) as info:
        read_all(path, CsvOptions(column_types={"b": "int64"}))
    assert (info.value.path, info.value.line, info.value.column) == (str(path), 3, "b")


# --- located errors --------------------------------------------------------------------------


def test_format_error_message_and_pickling() -> None:
    error = CsvFormatError("/x/y.csv", 7, "bad", "qty")
    assert str(error) == "/x/y.csv:7: column 'qty': bad"
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.line, copy.reason, copy.column) == ("/x/y.csv", 7, "bad", "qty")
    assert str(copy) == str(error)
    assert str(CsvFormatError("f.csv", None, "oops")) == "f.csv: oops"


@pytest.mark.parametrize(
    ("data", "line", "needle"),
    [
        (b"a,b\n1,2\n3,4,5\n6,7\n", 3, "expected 2 fields, found 3"),
        (b"a,b\n1,2\n3\n6,7\n", 3, "expected 2 fields, found 1"),
        (b'a,b\n"x\ny",2\n"p\r\nq",3\n3,4,5\n', 6, "found 3"),
        (b"a,b\r\n1,2\r\n3,4\r\n5,6,7\r\n", 4, "found 3"),
    ],
)
def test_ragged_rows_name_file_and_physical_line(
    tmp_path: Path, data: bytes, line: int, needle: str
) -> None:
    path = write_bytes(tmp_path / "ragged.csv", data)
    for chunk in (1, 5, 1 << 20):
        with pytest.raises(CsvFormatError, match=needle) as info:
            read_all(path, CsvOptions(chunk_bytes=chunk))
        assert (info.value.path, info.value.line) == (str(path), line), chunk


def test_ragged_row_after_blank_lines_names_its_own_line(tmp_path: Path) -> None:
    """pyarrow skips blank lines without counting them; the reported line must still be the
    physical line of the bad row."""
    path = write_bytes(tmp_path / "blank.csv", b"a,b\n1,2\n\n\n3,4,5\n")
    with pytest.raises(CsvFormatError) as info:
        read_all(path, CsvOptions())
    assert info.value.line == 5


def test_skipped_rows_after_blank_lines_report_their_own_lines(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "blank.csv", b"a,b\n1,2\n\n\n3,4,5\n6,7\n")
    _, parts = read_all(path, CsvOptions(bad_rows="skip"))
    assert [line for part in parts for line in part.skipped_lines] == [5]


def test_undecodable_utf8_names_line_and_column(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "bad.csv", b"a,b\n1,ok\n2,caf\xe9\n3,x\n")
    for chunk in (4, 1 << 20):
        with pytest.raises(CsvFormatError, match="utf-8") as info:
            read_all(path, CsvOptions(chunk_bytes=chunk))
        assert (info.value.line, info.value.column) == (3, "b")


def test_undecodable_bytes_in_another_encoding_are_located(tmp_path: Path) -> None:
    """cp1252 leaves 0x81 undefined: the error must be a CsvFormatError naming the line."""
    path = write_bytes(tmp_path / "cp.csv", b"a,b\n1,caf\xe9\n2,\x81\n")
    with pytest.raises(CsvFormatError) as info:
        read_all(path, CsvOptions(encoding="cp1252"))
    assert (info.value.path, info.value.line) == (str(path), 3)


def test_undecodable_bytes_deep_in_a_big_range_name_their_line(tmp_path: Path) -> None:
    """One 13 MB range (past the 1 MiB head) with a byte ASCII cannot decode near its end: the line
    is the byte's own, however pyarrow chunks the transcoding."""
    lines = [b"id,name"] + [b"%d,cafe" % i for i in range(1_200_000)]
    lines[1_100_001] = b"1100000,\xff"
    path = write_bytes(tmp_path / "ascii.csv", b"\n".join(lines) + b"\n")
    with pytest.raises(CsvFormatError, match="ascii") as info:
        read_all(path, CsvOptions(encoding="ascii"))
    assert (info.value.path, info.value.line) == (str(path), 1_100_002)


def test_latin1_text_decodes(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "l1.csv", "name,n\nJos\u00e9,1\n\u00c5sa,2\n", "latin-1")
    _, parts = read_all(path, CsvOptions(encoding="latin-1", chunk_bytes=8))
    names = [value for part in parts for value in part.table["name"].to_pylist()]
    assert names == ["Jos\u00e9", "\u00c5sa"]


def test_skip_counts_and_locates_every_bad_row(tmp_path: Path) -> None:
    data = b'a,b\n1,2\n3\n"x\ny",4\n5,6,7\n8,9\n'
    path = write_bytes(tmp_path / "skip.csv", data)
    for chunk in (1, 6, 1 << 20):
        _, parts = read_all(path, CsvOptions(bad_rows="skip", chunk_bytes=chunk))
        assert sum(part.skipped for part in parts) == 2
        assert [line for part in parts for line in part.skipped_lines] == [3, 6]
        kept = [row for part in parts for row in part.table.to_pylist()]
        assert kept == [{"a": "1", "b": 2}, {"a": "x\ny", "b": 4}, {"a": "8", "b": 9}]


def test_null_values_apply_to_numbers(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "n.csv", "a,b\n1,NA\n2,-\n3,4\n")
    _, parts = read_all(path, CsvOptions(null_values=["NA", "-"]))
    assert parts[0].table["b"].to_pylist() == [None, None, 4]
    assert parts[0].table.schema.field("b").type == pa.int64()


def test_null_values_apply_to_text_columns(tmp_path: Path) -> None:
    """``null_values`` are the values that mean missing: in a text column too."""
    path = write_bytes(tmp_path / "n.csv", "a,b\nx,1\nNA,2\n,3\n")
    _, parts = read_all(path, CsvOptions(null_values=["NA"]))
    assert parts[0].table["a"].to_pylist() == ["x", None, ""]


def test_empty_null_values_keep_empty_strings(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "e.csv", "a,b\n,1\nx,\n")
    options = CsvOptions(null_values=[], column_types={"a": "string", "b": "string"})
    _, parts = read_all(path, options)
    assert parts[0].table.to_pylist() == [{"a": "", "b": "1"}, {"a": "x", "b": ""}]


def test_an_empty_column_subset_gives_tables_without_columns(tmp_path: Path) -> None:
    """``columns=[]`` asks for no columns (only the row count), not for all of them."""
    path = write_bytes(tmp_path / "c.csv", "a,b\n1,2\n3,4\n")
    plan, parts = read_all(path, CsvOptions(columns=[]))
    assert plan.schema.names == []
    assert [(part.table.num_columns, part.table.num_rows) for part in parts] == [(0, 2)]
