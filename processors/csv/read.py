"""Parse one record-aligned byte range of a CSV file with pyarrow, with one schema for all ranges.

The parent builds a ``CsvPlan`` once (column names from the header, types inferred from the head
of the file or given by the user); every worker parses its ranges with exactly that schema, so a
column never changes type between chunks. pyarrow's errors name neither the file nor the line:
``read_range`` turns them into ``CsvFormatError`` with both (and the column where known).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from batchcore.errors import check_positive_int

from ..compression import MAGIC_BYTES, open_decompressed, sniff
from ..errors import (
    CompressedDataError,
    CsvFormatError,
    NotCsvError,
    UnknownColumnError,
)
from ..storage import Source
from .split import (
    NEWLINE,
    CsvRange,
    RecordTooLong,
    first_record_start,
    line_of,
    long_record,
    read_reusing,
)
from .stream import (
    StreamChunk,
    StreamRecordTooLong,
    UnterminatedQuote,
    record_chunks,
    split_header,
)

__all__ = [
    "CsvOptions",
    "CsvPlan",
    "RangeData",
    "check_columns",
    "infer_schema",
    "make_plan",
    "read_header",
    "read_range",
    "same_header",
]

BOM = b"\xef\xbb\xbf"
BAD_ROW_CHOICES = ("error", "skip")
OUTPUT_CHOICES = ("arrow", "pandas")
MAX_REPORTED_LINES = 20
UNTERMINATED = "a quoted field opened in this record is never closed (unterminated quote)"
# A record longer than this is an error, not a range (and a worker's memory) as long as itself.
# DuckDB's max_line_size default is 2 MB; pyarrow parses records up to its block size.
MAX_RECORD_BYTES = 4 << 20


# Names people type for a column type that pyarrow does not know by that name.
TYPE_ALIASES = {
    "int": "int64",
    "integer": "int64",
    "long": "int64",
    "float": "float64",
    "real": "float64",
    "number": "float64",
    "str": "string",
    "text": "string",
    "boolean": "bool",
    "datetime": "timestamp[us]",
    "timestamp": "timestamp[us]",
}
# The type names an error suggests (pyarrow's ``type_for_alias`` takes these and more).
COMMON_TYPES = (
    "int64, int32, float64, float32, string, bool, date32, timestamp[s|ms|us|ns], decimal128(P, S)"
)


def type_for_name(name: str) -> pa.DataType:
    """The Arrow type a ``column_types`` name means: pyarrow's aliases (``float64``,
    ``timestamp[ms]``...), ``decimal128(P, S)``, and the everyday names of ``TYPE_ALIASES``
    (``int``, ``float``, ``str``...). ``ValueError`` listing the common names otherwise."""
    text = name.strip()
    text = TYPE_ALIASES.get(text.lower(), text)
    decimal = re.fullmatch(r"decimal(?:128)?\(\s*(\d+)\s*,\s*(\d+)\s*\)", text)
    if decimal:
        return pa.decimal128(int(decimal.group(1)), int(decimal.group(2)))
    try:
        return pa.type_for_alias(text)
    except ValueError:
        raise ValueError(f"unknown type {name!r}; use one of {COMMON_TYPES}") from None


@dataclass(frozen=True)
class CsvOptions:
    """How to read a CSV file; validated when created."""

    chunk_bytes: int = 16 << 20
    delimiter: str = ","
    quote_char: str | None = '"'
    header: bool = True
    column_names: Sequence[str] | None = None
    columns: Sequence[str] | None = None
    column_types: Mapping[str, pa.DataType | str] | None = None
    null_values: Sequence[str] | None = None
    encoding: str = "utf-8"
    bad_rows: str = "error"
    output: str = "arrow"
    infer_bytes: int = 1 << 20
    max_record_bytes: int = MAX_RECORD_BYTES

    def __post_init__(self) -> None:
        check_positive_int("chunk_bytes", self.chunk_bytes)
        check_positive_int("max_record_bytes", self.max_record_bytes)
        for name in ("delimiter", "quote_char"):
            value = getattr(self, name)
            if value is None and name == "quote_char":
                continue
            if not isinstance(value, str) or len(value) != 1 or not value.isascii():
                raise ValueError(f"{name} must be one ASCII character, got {value!r}")
            if value in "\r\n":
                raise ValueError(f"{name} cannot be a line break, got {value!r}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {self.encoding!r}") from None
        if '\n",;|\t'.encode(self.encoding).removeprefix(BOM) != b'\n",;|\t':
            raise ValueError(
                f"encoding {self.encoding!r} is not ASCII-compatible; only encodings that write "
                "newlines, quotes and delimiters as single ASCII bytes can be split in parallel"
            )
        if self.bad_rows not in BAD_ROW_CHOICES:
            raise ValueError(
                f"bad_rows must be one of {list(BAD_ROW_CHOICES)}, got {self.bad_rows!r}"
            )
        if self.output not in OUTPUT_CHOICES:
            raise ValueError(f"output must be one of {list(OUTPUT_CHOICES)}, got {self.output!r}")
        for name, value in (self.column_types or {}).items():
            if isinstance(value, str):
                try:
                    type_for_name(value)
                except ValueError as exc:
                    raise ValueError(f"column_types[{name!r}]: {exc}") from None

    @property
    def quote_byte(self) -> int | None:
        return None if self.quote_char is None else ord(self.quote_char)


@dataclass(frozen=True)
class CsvPlan:
    """Everything a worker needs to parse any range of one file: made once, in the parent."""

    source: Source
    size: int
    data_start: int
    names: tuple[str, ...]
    schema: pa.Schema
    options: CsvOptions
    untyped: frozenset[str] = frozenset()  # columns typed by default: the head had no value
    # A compressed file's decompressed first records, for inference (dropped after it).
    head: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def path(self) -> str:
        """The file's path or URL, as errors name it."""
        return self.source.url

    @property
    def included(self) -> list[str]:
        return list(self.schema.names)

    @property
    def compression(self) -> str | None:
        """``"gzip"``, ``"bz2"``, ``"xz"``, ``"zstd"`` or ``None``: read as a stream if set."""
        return self.source.compression


@dataclass
class RangeData:
    """A parsed range: the table, and the rows skipped as bad (``bad_rows="skip"``)."""

    table: pa.Table
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)


def _types(options: CsvOptions) -> dict[str, pa.DataType]:
    return {
        name: type_for_name(value) if isinstance(value, str) else value
        for name, value in (options.column_types or {}).items()
    }


def _parse_options(options: CsvOptions, handler: Any = None) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(
        delimiter=options.delimiter,
        quote_char=options.quote_char if options.quote_char is not None else False,
        newlines_in_values=options.quote_char is not None,
        invalid_row_handler=handler,
    )


def _convert_options(
    options: CsvOptions, include: Sequence[str], types: Mapping[str, pa.DataType]
) -> pacsv.ConvertOptions:
    kwargs: dict[str, Any] = {"include_columns": list(include), "column_types": dict(types)}
    if options.null_values is not None:  # the user's list means missing in text columns too
        kwargs["null_values"] = list(options.null_values)
        kwargs["strings_can_be_null"] = True
    return pacsv.ConvertOptions(**kwargs)


def _read_options(options: CsvOptions, names: Sequence[str]) -> pacsv.ReadOptions:
    return pacsv.ReadOptions(
        use_threads=False,
        column_names=list(names),
        block_size=max(MAX_RECORD_BYTES, options.max_record_bytes),  # a record fits in a block
        encoding=options.encoding,
    )


def _first_record_fields(data: bytes, options: CsvOptions) -> list[str]:
    text = data.decode(options.encoding, errors="replace")
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=options.delimiter,
        quotechar=options.quote_char or '"',
        quoting=csv.QUOTE_MINIMAL if options.quote_char else csv.QUOTE_NONE,
    )
    return next(reader, [])


def make_plan(
    source: Source | str,
    options: CsvOptions,
    check_data: Callable[[int, int], None] | None = None,
) -> CsvPlan:
    """Read the header and the head of ``source``; settle the column names and one schema.

    ``check_data(data_start, size)`` runs between the two (the CSV node counts quotes there, so
    an unterminated quote is reported before inference tries to read past it). Raises
    ``FileNotFoundError`` for a missing file, ``CsvFormatError`` for an empty file or a bad
    header, ``UnknownColumnError`` for a requested column that is not there.
    """
    plan = read_header(source, options)
    check_columns(plan)
    if check_data is not None:
        check_data(plan.data_start, plan.size)
    return infer_schema(plan)


def read_header(source: Source | str, options: CsvOptions) -> CsvPlan:
    """A plan with the column names and where the data starts, but no schema yet (``infer``).

    A compressed file (known by its first bytes) is planned from its decompressed first
    records, which the plan keeps for inference (``head``)."""
    if isinstance(source, str):
        info = os.stat(source)  # FileNotFoundError names the path
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "is a directory, not a CSV file", source)
        source = Source(source, info.st_size)
    path = source.url
    size = source.size
    quote = options.quote_byte
    head: bytes | None = None
    with source.open(1 << 16, readahead=True) as handle:  # a few small reads
        try:
            kind = sniff(handle.read(MAGIC_BYTES))
        except NotCsvError as exc:
            raise exc.with_path(path) from None
        handle.seek(0)
        if kind is not None:
            source = replace(source, compression=kind)
            first, begin, head = _compressed_head(source, options)
            first_end = begin + len(first)
        else:
            begin = len(BOM) if handle.read(len(BOM)) == BOM else 0
            try:
                limit = options.max_record_bytes
                first_end = first_record_start(handle, begin, False, quote, limit)
            except RecordTooLong:
                raise too_long(path, 1, options.max_record_bytes) from None
            handle.seek(begin)
            first = handle.read(first_end - begin)
    if options.header and not first.strip(b"\r\n"):
        raise CsvFormatError(path, 1, "the file is empty: no header row")
    fields = _first_record_fields(first, options) if first else []
    if options.column_names is not None:
        names = [str(name) for name in options.column_names]
        if fields and len(names) != len(fields):
            raise CsvFormatError(
                path, 1, f"column_names has {len(names)} names but rows have {len(fields)} fields"
            )
    elif options.header:
        names = fields
    else:
        names = [f"f{i}" for i in range(len(fields))]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise CsvFormatError(path, 1, f"duplicate column names {duplicates}")
    data_start = first_end if options.header else begin
    if head is not None and not options.header:
        head = first + head  # the first record is data
    return CsvPlan(source, size, data_start, tuple(names), pa.schema([]), options, head=head)


def _compressed_head(source: Source, options: CsvOptions) -> tuple[bytes, int, bytes]:
    """A compressed file's first record, where it starts (after a BOM) and the records after it
    up to about ``infer_bytes``: decompressed, never more than that."""
    try:
        with source.open(1 << 20, readahead=True) as raw:
            stream = open_decompressed(raw, source.compression or "")
            chunks = record_chunks(
                stream,
                quote=options.quote_byte,
                chunk_bytes=options.infer_bytes,
                max_record_bytes=options.max_record_bytes,
            )
            chunk = next(chunks, None)
    except CompressedDataError as exc:
        raise exc.with_path(source.url) from None
    except StreamRecordTooLong as exc:
        raise too_long(source.url, exc.line, options.max_record_bytes) from None
    except UnterminatedQuote as exc:
        raise CsvFormatError(source.url, exc.line, UNTERMINATED) from None
    if chunk is None:
        return b"", 0, b""
    data = bytes(chunk.data)  # the head only (``infer_bytes``)
    begin = len(BOM) if data.startswith(BOM) else 0
    chunk = StreamChunk(chunk.index, data[begin:], begin, chunk.line)
    first, rest = split_header(chunk, options.quote_byte)
    return first, begin, rest.data if rest is not None else b""


def check_columns(plan: CsvPlan) -> None:
    """``UnknownColumnError`` for a requested or typed column the header does not have."""
    options, names = plan.options, list(plan.names)
    include = list(options.columns) if options.columns is not None else names
    missing = [name for name in include if name not in names]
    missing += [name for name in _types(options) if name not in names]
    if missing:
        raise UnknownColumnError(
            f"{plan.path} has no column {missing[0]!r}; its columns are {names}{_header_hint(plan)}"
            if names
            else f"{plan.path} has no column {missing[0]!r}: the file has no columns"
        )


def _header_hint(plan: CsvPlan) -> str:
    """Why a header may not name the columns asked for, when its look says so: a header of one
    field holding another likely delimiter, or NUL bytes between letters (UTF-16 without a
    byte-order mark)."""
    names = plan.names
    if any("\x00" in name for name in names):
        return (
            " (NUL bytes between its letters: the file looks like UTF-16; convert it to UTF-8 "
            "first, e.g. iconv -f UTF-16 -t UTF-8)"
        )
    if len(names) == 1:
        for candidate, shown in ((";", "';'"), ("|", "'|'"), ("\t", "tab")):
            if candidate in names[0] and candidate != plan.options.delimiter:
                return (
                    f" (the header is one field holding {shown}: is that the delimiter? "
                    f"pass --delimiter {shown} / delimiter={candidate!r})"
                )
    return ""


def infer_schema(plan: CsvPlan) -> CsvPlan:
    """``plan`` with its schema: the user's types, and pyarrow's guesses from the file's head."""
    options = plan.options
    names = plan.names
    include = list(options.columns) if options.columns is not None else names
    schema, untyped = _infer_schema(
        plan.source, options, names, include, _types(options), plan.data_start, plan.size, plan.head
    )
    return replace(plan, schema=schema, untyped=untyped, head=None)


def same_header(plan: CsvPlan, first: CsvPlan) -> CsvPlan:
    """``plan`` (of a later file) with ``first``'s schema; ``CsvFormatError`` naming the file and
    the first differing column when its header differs. A file with no record at all is fine."""
    names, like = plan.names, first.names
    if names and names != like:
        if len(names) != len(like):
            reason = f"the header has {len(names)} columns but {first.path} has {len(like)}"
        else:
            at = next(i for i, (a, b) in enumerate(zip(names, like, strict=True)) if a != b)
            reason = f"column {at + 1} is {names[at]!r} here but {like[at]!r} in {first.path}"
        raise CsvFormatError(
            plan.path, 1, reason + "; every file must have the same columns in the same order"
        )
    return replace(plan, names=like, schema=first.schema, untyped=first.untyped, head=None)


def _record_ends(
    array: np.ndarray[Any, Any], newlines: np.ndarray[Any, Any], quote: int | None
) -> np.ndarray[Any, Any]:
    """The ``newlines`` (offsets into ``array``, which starts outside quotes) outside quotes."""
    if quote is None or not newlines.size:
        return newlines
    quotes_before = np.searchsorted(np.flatnonzero(array == quote), newlines)
    outside: np.ndarray[Any, Any] = newlines[(quotes_before & 1) == 0]
    return outside


def _last_record_end(data: bytes, quote: int | None) -> int:
    """Offset just after the last newline of ``data`` that is outside quotes (0 if none)."""
    array = np.frombuffer(data, dtype=np.uint8)
    ends = _record_ends(array, np.flatnonzero(array == NEWLINE), quote)
    return int(ends[-1]) + 1 if ends.size else 0


def _file_head(source: Source, options: CsvOptions, data_start: int, size: int) -> bytes:
    """The records from ``data_start`` up to about ``infer_bytes``, ending on a record boundary
    (a single record longer than that, or a quote that never closes, means reading on)."""
    quote = options.quote_byte
    with source.open(options.infer_bytes) as handle:
        handle.seek(data_start)
        head: bytes = handle.read(min(size - data_start, options.infer_bytes))
        if data_start + len(head) < size:
            end = _last_record_end(head, quote)
            if end == 0:
                limit = options.max_record_bytes
                try:
                    end = first_record_start(handle, data_start, False, quote, limit) - data_start
                except RecordTooLong:
                    raise too_long(source.url, line_of(source, data_start), limit) from None
                handle.seek(data_start)
                head = handle.read(end)
            head = head[:end]
    return head


def _infer_schema(
    source: Source,
    options: CsvOptions,
    names: Sequence[str],
    include: Sequence[str],
    types: Mapping[str, pa.DataType],
    data_start: int,
    size: int,
    head: bytes | None = None,
) -> tuple[pa.Schema, frozenset[str]]:
    """Types of the included columns: the user's, else pyarrow's guess from the head (read from
    the file, or given: a compressed file's first records), widened so that later chunks cannot
    silently get another type (binary and null become string).

    Also returns the columns whose type is only a default because the head holds no value.
    """
    if not include:
        return pa.schema([]), frozenset()
    if head is None:
        head = _file_head(source, options, data_start, size)
    if not head.strip():  # header only: no rows to infer from, so text unless told otherwise
        schema = pa.schema([pa.field(name, types.get(name, pa.string())) for name in include])
        return schema, frozenset(name for name in include if name not in types)
    try:
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(head)),
            read_options=_read_options(options, names),
            parse_options=_parse_options(options, handler=lambda row: "skip"),
            convert_options=_convert_options(options, include, types),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        provisional = CsvPlan(source, size, data_start, tuple(names), pa.schema([]), options)
        raise _locate(
            provisional, CsvRange(0, data_start, data_start + len(head)), head, exc
        ) from None
    fields = []
    untyped = set()
    for name in include:
        kind = types.get(name) or table.schema.field(name).type
        if pa.types.is_null(kind):
            untyped.add(name)
        if pa.types.is_binary(kind) or pa.types.is_null(kind):
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields), frozenset(untyped)


# --- workers ---------------------------------------------------------------------------------


def read_range(plan: CsvPlan, rng: CsvRange) -> RangeData:
    """Parse ``rng`` of ``plan.path`` with the plan's schema (in a worker)."""
    if rng.data is not None:  # a block's records, or a chunk of a decompressed stream
        view = memoryview(rng.data)
    else:
        view = read_reusing(plan.source, rng.start, rng.end)
    got = len(view)
    if got != rng.size:
        raise CsvFormatError(plan.path, None, "the file changed while it was being read")
    options = plan.options
    skipped: list[int] = []

    def skip(row: Any) -> str:
        skipped.append(row.number)
        return "skip"

    handler = skip if options.bad_rows == "skip" else None
    include = plan.included
    types = {f.name: f.type for f in plan.schema}
    if not include and plan.names:
        # pyarrow reads every column when asked for none; ask for one as text, then drop it
        include, types = [plan.names[0]], {plan.names[0]: pa.string()}
    try:
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(view)),
            read_options=_read_options(options, plan.names),
            parse_options=_parse_options(options, handler),
            convert_options=_convert_options(options, include, types),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raw = bytes(view)
        offset = long_record(raw, options.quote_byte, options.max_record_bytes)
        if offset is not None:
            line = _first_line(plan, rng) + raw[:offset].count(b"\n")
            raise too_long(plan.path, line, options.max_record_bytes) from None
        raise _locate(plan, rng, raw, exc) from None
    if not plan.included:
        table = table.select([])  # no columns, but the row count stays
    data = RangeData(table, len(skipped))
    if skipped:
        lines = _record_lines(plan, rng, bytes(view), skipped[:MAX_REPORTED_LINES])
        data.skipped_lines = lines
    return data


_ROW = re.compile(r"Row #(\d+)")
_COLUMN = re.compile(r"In CSV column #(\d+)")
_COLUMNS = re.compile(r"Expected (\d+) columns, got (\d+): (.*)", re.DOTALL)
_CONVERSION = re.compile(r"CSV conversion error to (\S+): (.*)")


def too_long(path: str, line: int, limit: int) -> CsvFormatError:
    """The error for a record longer than ``max_record_bytes``, which says how to allow it."""
    return CsvFormatError(
        path,
        line,
        f"the record starting here is longer than max_record_bytes={limit:,} bytes (an "
        "unbalanced quote, or a binary file?); pass max_record_bytes= / --max-record-bytes to "
        "allow longer records",
    )


def _locate(plan: CsvPlan, rng: CsvRange, data: bytes, exc: Exception) -> CsvFormatError:
    """Turn a pyarrow error about a range into one that names the file, line and column."""
    text = str(exc)
    row = _ROW.search(text)
    line = _record_lines(plan, rng, data, [int(row.group(1))])[0] if row else None
    column_match = _COLUMN.search(text)
    column = plan.names[int(column_match.group(1))] if column_match else None
    columns = _COLUMNS.search(text)
    if columns:
        expected, got, snippet = columns.groups()
        reason = f"expected {expected} fields, found {got}: {snippet[:80]}"
        hint = " (pass bad_rows='skip' / --skip-bad-rows to skip such rows)"
        return CsvFormatError(plan.path, line, reason + hint)
    conversion = _CONVERSION.search(text)
    if conversion:
        kind, detail = conversion.groups()
        if "invalid UTF8" in detail:
            reason = (
                f"bytes that are not valid {plan.options.encoding} "
                "(pass encoding=... / --encoding if the file uses another one)"
            )
        elif column is not None and column in (plan.options.column_types or {}):
            reason = (
                f"{detail} does not fit the column's type {kind} (given by column_types / "
                f"--type {column}=...; choose another, or fix the value)"
            )
        else:
            reason = (
                f"{detail} does not fit the column's type {kind} (inferred from the first rows; "
                "pass column_types / --type COL=TYPE to choose another)"
            )
        return CsvFormatError(plan.path, line, reason, column)
    if isinstance(exc, UnicodeDecodeError):
        # pyarrow transcodes piece by piece, so exc.start is not an offset into the range
        try:
            data.decode(plan.options.encoding)
            offset = 0
        except UnicodeDecodeError as located:
            offset = located.start
        line = _first_line(plan, rng) + data[:offset].count(b"\n")
        return CsvFormatError(
            plan.path, line, f"bytes that are not valid {plan.options.encoding}: {exc.reason}"
        )
    return CsvFormatError(plan.path, line or _first_line(plan, rng), text)


def _first_line(plan: CsvPlan, rng: CsvRange) -> int:
    """The line ``rng`` starts on: known from the split, else counted in the file."""
    return rng.line if rng.line is not None else line_of(plan.source, rng.start)


def _record_lines(plan: CsvPlan, rng: CsvRange, data: bytes, rows: list[int]) -> list[int]:
    """Physical line numbers of 1-based record numbers ``rows`` within a range's bytes.

    pyarrow numbers records without counting empty lines, so neither do we.
    """
    array = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(array == NEWLINE)
    record_ends = _record_ends(array, newlines, plan.options.quote_byte)
    starts = np.concatenate(([0], record_ends + 1))
    ends = np.concatenate((record_ends + 1, [len(array)]))
    length = ends - starts
    first_byte = array[np.minimum(starts, max(len(array) - 1, 0))] if len(array) else starts
    empty = (length == 0) | (length == 1) | ((length == 2) & (first_byte == 13))
    records = starts[~empty]
    first_line = _first_line(plan, rng)
    lines = []
    for row in rows:
        start = int(records[min(row - 1, len(records) - 1)]) if len(records) else 0
        lines.append(first_line + int(np.count_nonzero(newlines < start)))
    return lines
