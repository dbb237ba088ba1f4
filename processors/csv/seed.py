"""The pandas-chunk CSV job on batchcore: read a CSV in chunks, total columns per chunk, combine.

::

    shared["input_file"] -> SalesChunkStats.prep   check header, read_csv(chunksize=N)  (parent)
                         -> SalesChunkStats.exec   one chunk -> rows, sum/count/min/max (worker)
                         -> SalesChunkStats.post   combine -> shared["statistics"], "show_stats"
                         -> ShowStats              statistics -> shared["report"] (text, unprinted)

Parsing happens in ``prep``, in the caller's process, as with plain pandas; only the per-chunk
arithmetic runs on the chosen backend. Missing values are counted in ``rows`` and skipped
everywhere else.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypedDict

import pandas as pd
from pandas.api.types import is_integer, is_numeric_dtype

from batchcore import BatchNode, BatchStats, Flow, Node
from batchcore.errors import check_positive_int

from ..errors import DataError, UnknownColumnError
from ..tables import format_table

__all__ = [
    "ColumnStats",
    "SalesChunkStats",
    "ShowStats",
    "Statistics",
    "format_stats",
    "run_sales_stats",
    "sales_stats",
]

Number = int | float


class ColumnStats(TypedDict):
    """Totals of one column; ``mean``, ``min`` and ``max`` are ``None`` when it has no values."""

    sum: Number
    count: int
    mean: float | None
    min: Number | None
    max: Number | None


class Statistics(TypedDict):
    """``shared["statistics"]``: all rows (nulls included) and the totals of each column."""

    rows: int
    columns: dict[str, ColumnStats]


class ChunkColumn(TypedDict):
    sum: Number
    count: int
    min: Number | None
    max: Number | None


class ChunkStats(TypedDict):
    rows: int
    columns: dict[str, ChunkColumn]


def check_input(path: str, columns: Iterable[str]) -> None:
    """Raise before any work if ``path`` is not a readable CSV file or lacks one of ``columns``."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such CSV file", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a CSV file", path)
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read a CSV header: {one_line(exc)}") from exc
    available = [str(name) for name in header]
    for column in columns:
        if column not in available:
            choices = ", ".join(sorted(available))
            raise UnknownColumnError(
                f"{path} has no column {column!r}; available columns: {choices}"
            )


def read_chunks(path: str, chunk_rows: int, columns: list[str]) -> Iterator[pd.DataFrame]:
    """``pd.read_csv(path, chunksize=chunk_rows)`` cut to ``columns``, closing the file even if
    the batch stops early.

    Every column is parsed (with ``usecols`` pandas silently accepts rows with extra fields), but
    only ``columns`` travel on to ``exec``, which may be in another process.
    """
    try:
        with pd.read_csv(path, chunksize=chunk_rows) as reader:
            for chunk in reader:
                yield chunk[columns]
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed CSV: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def numeric_values(series: pd.Series[Any], path: str, column: str) -> pd.Series[Any]:
    """``series`` as numbers, or ``DataError`` naming the file, column, row and first bad value."""
    if is_numeric_dtype(series.dtype):
        return series
    numbers = pd.to_numeric(series, errors="coerce")
    bad = series.notna() & numbers.isna()
    if bad.any():
        position = int(bad.to_numpy().argmax())
        value = series.iloc[position]
        label = series.index[position]  # read_csv numbers rows across chunks: 0 is the first
        row = f" in data row {int(label) + 1}" if is_integer(label) else ""
        raise DataError(
            f"{path}: column {column!r} has a non-numeric value {value!r}{row}; "
            "only numeric columns can be summed"
        )
    return numbers


def to_python(value: Any) -> Number | None:
    """A numpy or Python scalar as a plain ``int``/``float`` (``None`` for a missing value)."""
    if value is None or pd.isna(value):
        return None
    item = value.item() if hasattr(value, "item") else value
    if isinstance(item, bool):
        return int(item)
    if isinstance(item, int | float):
        return item
    raise TypeError(f"expected a number, got {value!r}")


def combine_extreme(current: Number | None, new: Number | None, pick: Any) -> Number | None:
    if current is None:
        return new
    if new is None:
        return current
    result: Number = pick(current, new)
    return result


class SalesChunkStats(BatchNode):
    """Reads ``shared["input_file"]`` in chunks of ``chunk_rows`` rows and totals ``columns``."""

    def __init__(
        self,
        columns: Iterable[str] = ("amount",),
        chunk_rows: int = 1000,
        **batch_options: Any,
    ) -> None:
        super().__init__(**batch_options)
        if isinstance(columns, str):
            columns = (columns,)
        self.columns = list(dict.fromkeys(columns))  # unique, in the order given
        check_positive_int("chunk_rows", chunk_rows)
        self.chunk_rows = chunk_rows
        self.input_file = ""

    def prep(self, shared: dict[str, Any]) -> Iterator[pd.DataFrame]:
        path = os.fspath(shared["input_file"])
        check_input(path, self.columns)
        self.input_file = path  # exec names the file in its errors
        return read_chunks(path, self.chunk_rows, self.columns)

    def exec(self, chunk: pd.DataFrame) -> ChunkStats:
        columns: dict[str, ChunkColumn] = {}
        for column in self.columns:
            values = numeric_values(chunk[column], self.input_file, column)
            count = int(values.count())
            total = to_python(values.sum())
            columns[column] = {
                "sum": 0 if total is None else total,
                "count": count,
                "min": to_python(values.min()) if count else None,
                "max": to_python(values.max()) if count else None,
            }
        return {"rows": len(chunk), "columns": columns}

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[ChunkStats]) -> str:
        totals: dict[str, ColumnStats] = {}
        for column in self.columns:
            total: ColumnStats = {"sum": 0, "count": 0, "mean": None, "min": None, "max": None}
            for part in exec_res:
                piece = part["columns"][column]
                total["sum"] += piece["sum"]
                total["count"] += piece["count"]
                total["min"] = combine_extreme(total["min"], piece["min"], min)
                total["max"] = combine_extreme(total["max"], piece["max"], max)
            if total["count"]:
                total["mean"] = total["sum"] / total["count"]
            totals[column] = total
        statistics: Statistics = {"rows": sum(part["rows"] for part in exec_res), "columns": totals}
        shared["statistics"] = statistics
        return "show_stats"


class ShowStats(Node):
    """Formats ``shared["statistics"]`` into ``shared["report"]``; the caller decides to print."""

    def prep(self, shared: dict[str, Any]) -> Statistics:
        statistics: Statistics = shared["statistics"]
        return statistics

    def exec(self, prep_res: Statistics) -> str:
        return format_stats(prep_res)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        shared["report"] = exec_res


def format_number(value: Number | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if value == 0 or 0.01 <= abs(value) < 1e15:
        return f"{value:.2f}"
    return f"{value:.6g}"


def format_stats(statistics: Statistics) -> str:
    """Rows, then one aligned line per column: sum, count, mean, min, max (2 decimals)."""
    rows = [
        [column, *(format_number(stats[key]) for key in ("sum", "count", "mean", "min", "max"))]
        for column, stats in statistics["columns"].items()
    ]
    lines = [f"rows: {statistics['rows']}"]
    if rows:
        lines += format_table(["column", "sum", "count", "mean", "min", "max"], rows)
    return "\n".join(lines)


def run_sales_stats(
    path: str | os.PathLike[str],
    columns: Iterable[str] = ("amount",),
    *,
    backend: str = "sequential",
    workers: int | None = None,
    chunk_rows: int = 1000,
    progress: bool = False,
) -> tuple[Statistics, BatchStats, float]:
    """Run the flow; return the statistics, the batch's stats and the wall time in seconds."""
    chunk_stats = SalesChunkStats(
        columns, chunk_rows, backend=backend, workers=workers, progress=progress
    )
    chunk_stats - "show_stats" >> ShowStats()
    shared: dict[str, Any] = {"input_file": path}
    began = time.perf_counter()
    Flow(start=chunk_stats).run(shared)
    seconds = time.perf_counter() - began
    statistics: Statistics = shared["statistics"]
    return statistics, chunk_stats.batch_stats, seconds


def sales_stats(
    path: str | os.PathLike[str],
    columns: Iterable[str] = ("amount",),
    *,
    backend: str = "sequential",
    workers: int | None = None,
    chunk_rows: int = 1000,
    progress: bool = False,
) -> Statistics:
    """Statistics of ``columns`` in the CSV at ``path``: ``{"rows", "columns": {col: {...}}}``."""
    statistics, _batch, _seconds = run_sales_stats(
        path,
        columns,
        backend=backend,
        workers=workers,
        chunk_rows=chunk_rows,
        progress=progress,
    )
    return statistics
