"""``CSVBatchNode``: a CSV processor made parallel: workers parse their own byte ranges.

    class TotalSales(CSVBatchNode):
        def exec(self, table):                      # a pyarrow.Table: one range's rows
            return pc.sum(table["amount"]).as_py()
        def post(self, shared, prep_res, exec_res):
            shared["total"] = sum(exec_res)

    TotalSales(columns=["amount"], backend="process").run({"input_file": "sales.csv"})

``prep`` does not parse: it reads the header, fixes one schema from the head of the file, and
splits the file into record-aligned byte ranges (see ``split``). Each worker opens the file
and parses only its range, so the parent never parses or pickles the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from batchcore import Backend, BatchNode, Node
from batchcore.options import resolve_options

from ..errors import CsvFormatError
from .read import (
    MAX_RECORD_BYTES,
    MAX_REPORTED_LINES,
    CsvOptions,
    CsvPlan,
    RangeData,
    make_plan,
    read_range,
    too_long,
)
from .split import (
    BlockScan,
    CsvRange,
    RecordTooLong,
    blocks,
    ends_inside_quotes,
    line_of,
    plan_ranges,
    scan_block,
    unterminated_record,
)

__all__ = ["CSVBatchNode", "CsvReport"]

# The range whose table ``exec`` is running on (per thread and asyncio task): ``current_range``.
CURRENT_RANGE: ContextVar[CsvRange | None] = ContextVar("processors_csv_range", default=None)


@dataclass
class CsvReport:
    """What the last run read: rows, bytes, and the bad rows it skipped (never silently)."""

    path: str = ""
    bytes: int = 0
    ranges: int = 0
    rows: int = 0
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)

    def reset(self, path: str, size: int, ranges: int) -> None:
        self.path, self.bytes, self.ranges = path, size, ranges
        self.rows = self.skipped = 0
        self.skipped_lines = []


@dataclass
class _RangeResult:
    """What the per-range step returns: the user's exec result plus the range's counts."""

    value: Any
    rows: int
    skipped: int
    skipped_lines: list[int]


class _ScanBlocks(BatchNode):
    """Phase 1 of the split, run on the CSV node's own backend: one scan per block."""

    def __init__(
        self,
        path: str,
        quote: int | None,
        lines: bool,
        spans: list[tuple[int, int]],
        backend: Backend,
    ) -> None:
        super().__init__(backend=backend)
        self.path = path
        self.quote = quote
        self.lines = lines
        self.spans = spans

    def prep(self, shared: dict[str, Any]) -> list[tuple[int, int]]:
        return self.spans

    def exec(self, block: tuple[int, int]) -> BlockScan:
        return scan_block(self.path, block[0], block[1], self.quote, self.lines)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[BlockScan]) -> None:
        shared["scans"] = exec_res


def _warm(backend: Backend) -> bool:
    """Whether counting quotes on ``backend`` beats the parent's ~6 GB/s: threads, or a process
    pool whose workers have booted. Not Dask: each task costs tens of milliseconds of scheduling,
    more than counting a block takes."""
    if backend.name == "thread":
        return True
    return backend.name != "dask" and backend.is_warm()


def _count_blocks(
    path: str,
    quote: int | None,
    lines: bool,
    spans: list[tuple[int, int]],
    backend: Backend,
) -> list[BlockScan]:
    """Scan ``spans`` in order, on ``backend``'s workers as soon as they are up.

    A cold pool starts booting at once; meanwhile the parent counts blocks from the front, and
    when the workers are ready they take the rest. So no serial pass delays the parallel work:
    the parent only counts while there are no workers to count.
    """
    backend.start()  # returns at once; a warm pool or a thread pool is already there
    scans: list[BlockScan] = []
    for position, (start, end) in enumerate(spans):
        if len(spans) - position > 1 and _warm(backend):
            shared: dict[str, Any] = {}
            _ScanBlocks(path, quote, lines, spans[position:], backend).run(shared)
            rest: list[BlockScan] = shared["scans"]
            return scans + rest
        scans.append(scan_block(path, start, end, quote, lines))
    return scans


class _ParsesRange(Node):
    """The per-item step: parse the range, then PocketFlow's retry loop runs ``exec`` on it."""

    csv_plan: CsvPlan | None

    def _exec(self, prep_res: Any) -> Any:
        if not isinstance(prep_res, CsvRange):  # a subclass whose prep yields something else
            return super()._exec(prep_res)
        assert self.csv_plan is not None, "prep must call self.split(path)"
        data: RangeData = read_range(self.csv_plan, prep_res)
        table: Any = data.table
        if self.csv_plan.options.output == "pandas":
            table = data.table.to_pandas()
        token = CURRENT_RANGE.set(prep_res)
        try:
            value = super()._exec(table)
        finally:
            CURRENT_RANGE.reset(token)
        return _RangeResult(value, data.table.num_rows, data.skipped, data.skipped_lines)


class CSVBatchNode(BatchNode, _ParsesRange):
    """A BatchNode over a CSV file whose ``exec`` gets a ``pyarrow.Table`` (or a DataFrame with
    ``output="pandas"``) holding one record-aligned range of the file.

    The file is ``path``, else ``shared["input_file"]``. CSV options: ``chunk_bytes`` (range
    size), ``delimiter``, ``quote_char`` (``None``: no quoting), ``header``, ``column_names``,
    ``columns`` (parse only these), ``column_types`` (``{"qty": "int64"}``; others are inferred
    once from the head), ``null_values``, ``encoding`` (ASCII-compatible), ``bad_rows`` ("error",
    or "skip" to drop ragged rows and report them in ``csv_report``), ``max_record_bytes`` (a
    longer record is an error that names its line, not a range as long as itself). Batch
    options (``backend``, ``workers``, ...) are BatchNode's.
    """

    progress_unit = "B"

    def __init__(
        self,
        path: str | None = None,
        *,
        chunk_bytes: int = 16 << 20,
        delimiter: str = ",",
        quote_char: str | None = '"',
        header: bool = True,
        column_names: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        column_types: Mapping[str, pa.DataType | str] | None = None,
        null_values: Sequence[str] | None = None,
        encoding: str = "utf-8",
        bad_rows: str = "error",
        output: str = "arrow",
        max_record_bytes: int = MAX_RECORD_BYTES,
        max_retries: int = 1,
        wait: float = 0,
        **batch_options: Any,
    ) -> None:
        super().__init__(max_retries, wait, **batch_options)
        self.path = path
        self.csv_options = CsvOptions(
            chunk_bytes=chunk_bytes,
            delimiter=delimiter,
            quote_char=quote_char,
            header=header,
            column_names=column_names,
            columns=columns,
            column_types=column_types,
            null_values=null_values,
            encoding=encoding,
            bad_rows=bad_rows,
            output=output,
            max_record_bytes=max_record_bytes,
        )
        self.csv_plan: CsvPlan | None = None
        self.csv_report = CsvReport()

    def prep(self, shared: dict[str, Any]) -> list[CsvRange]:
        """Split ``self.path`` (or ``shared["input_file"]``) into record-aligned ranges."""
        return self.split(self.path or shared["input_file"])

    def split(self, path: str) -> list[CsvRange]:
        """Plan the file (names, one schema) and cut it into ranges; call this from ``prep``."""
        options = self.csv_options
        quote = options.quote_byte
        lines = options.bad_rows == "skip"  # skipped rows are reported by line: count lines too
        scans: list[BlockScan] = []

        def count_quotes(data_start: int, size: int) -> None:
            # Phase 1: quote counts per block; an odd total is an unterminated quote, reported
            # before anything tries to read past it.
            spans = blocks(data_start, size, options.chunk_bytes)
            backend = resolve_options(self, spans).backend  # about one range per block
            if len(spans) > 1 and (quote is not None or lines) and backend.parallel:
                scans.extend(_count_blocks(path, quote, lines, spans, backend))
            else:
                scans.extend(scan_block(path, start, end, quote, lines) for start, end in spans)
            if quote is not None and ends_inside_quotes(scans):
                start = unterminated_record(path, data_start, quote)
                raise CsvFormatError(
                    path,
                    line_of(path, start),
                    "a quoted field opened in this record is never closed (unterminated quote)",
                )

        plan = make_plan(path, options, count_quotes)
        self.csv_plan = plan
        limit = options.max_record_bytes
        try:
            ranges = plan_ranges(plan.path, plan.data_start, plan.size, scans, quote, limit)
        except RecordTooLong as exc:
            raise too_long(plan.path, line_of(plan.path, exc.position), limit) from None
        self.csv_report.reset(plan.path, plan.size, len(ranges))
        return ranges

    @property
    def current_range(self) -> CsvRange | None:
        """The byte range whose rows ``exec`` is looking at (``None`` outside ``exec``)."""
        return CURRENT_RANGE.get()

    def progress_units(self, item: Any) -> int:
        """Progress counts bytes of the file."""
        return item.size if isinstance(item, CsvRange) else 1

    def _exec(self, items: Any) -> list[Any]:
        results = super()._exec(items)
        report = self.csv_report
        values = []
        for result in results:
            if isinstance(result, _RangeResult):
                report.rows += result.rows
                report.skipped += result.skipped
                room = MAX_REPORTED_LINES - len(report.skipped_lines)
                report.skipped_lines.extend(result.skipped_lines[: max(room, 0)])
                values.append(result.value)
            else:
                values.append(result)
        return values
