"""The built-in CSV jobs: statistics (optionally grouped) and conversion to a Parquet dataset.

Both are ``CSVBatchNode`` subclasses, so they run on any backend and parse only the columns they
need; ``csv_stats`` and ``csv_to_parquet`` are the functions behind the CLI.

How ``csv_to_parquet`` lays out its writes, for an output folder ``out/ds``::

    out/.ds.lock                      flock held for the whole run (a second run is refused)
    out/.ds.staging-PID-RANDOM/       the new dataset: part-NNNNN.parquet (each written under a
                                      hidden temporary name, fsynced, renamed), then _SUCCESS
    out/ds/                           the previous dataset, untouched until the swap

When every part and ``_SUCCESS`` are in staging, the staging folder is fsynced and swapped in for
``out/ds`` (one rename, or one ``RENAME_EXCHANGE``; details in ``processors.files``), the parent
folder is fsynced and the previous dataset removed. A run that fails removes its staging folder;
one killed leaves it, hidden, for the next run (which holds the lock, so the writer is gone).

To a URL (``s3://bucket/ds/``), where there is no rename and no lock, each worker writes its part
as ``part-NNNNN-RUN.parquet`` in one PUT (RUN: an id per run, so a run never replaces a part of
the dataset being read), the parent writes ``_SUCCESS`` naming them (``files``) when all are
written, then deletes the previous dataset's parts; a failed run deletes its own parts. Who sees
what, and when: ``processors.outputs``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from hashlib import blake2b
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchcore import use_backend

from ..errors import CsvFormatError
from ..files import StagedFolder, is_temp_name, newest_staging, side_folders, write_atomically
from ..outputs import RemoteDataset, is_remote, join_url, local_part, read_text
from ..resume import cache_journal
from ..storage import is_url, protect_options
from .node import CSVBatchNode
from .split import CsvItem, CsvRange

__all__ = ["ColumnStats", "CsvStats", "csv_stats", "csv_to_parquet"]

# What the jobs read: a path, URL, glob or folder, or a list of them.
Inputs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _inputs(path: Inputs) -> str | list[str]:
    if isinstance(path, str | os.PathLike):
        return os.fspath(path)
    return [os.fspath(item) for item in path]


# --- statistics --------------------------------------------------------------------------------


@dataclass
class ColumnStats:
    """Sum, count of non-null values, min and max of one numeric column; mergeable.

    A float sum is kept as ``sum`` (rounded to a double) plus ``residual``, what the rounding
    left out, and merged with ``math.fsum``: sums of ranges and groups add up without float noise
    (643481.7, not 643481.6999999989), whatever the order and the cut. Integer and decimal sums
    are exact already."""

    sum: float | int = 0
    count: int = 0
    min: float | int | None = None
    max: float | int | None = None
    residual: float = 0.0

    def merge(self, other: ColumnStats) -> None:
        if isinstance(self.sum, float) or isinstance(other.sum, float):
            terms = [self.sum, self.residual, other.sum, other.residual]
            if all(math.isfinite(term) for term in terms):
                self.sum = math.fsum(terms)
                self.residual = math.fsum([*terms, -self.sum])
            else:  # inf, -inf or nan: IEEE addition says what they make (fsum would raise)
                self.sum, self.residual = self.sum + other.sum, 0.0
        else:
            self.sum += other.sum
        self.count += other.count
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sum": self.sum,
            "count": self.count,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
        }


@dataclass
class GroupStats:
    rows: int = 0
    columns: dict[str, ColumnStats] = field(default_factory=dict)

    def merge(self, other: GroupStats) -> None:
        self.rows += other.rows
        for name, stats in other.columns.items():
            self.columns.setdefault(name, ColumnStats()).merge(stats)


@dataclass
class CsvStats:
    """Rows and per-column statistics of a whole file, and per group with ``group_by``."""

    path: str
    rows: int = 0
    columns: dict[str, ColumnStats] = field(default_factory=dict)
    group_by: str | None = None
    groups: dict[Any, GroupStats] = field(default_factory=dict)
    skipped_rows: int = 0
    skipped_lines: list[tuple[str, int]] = field(default_factory=list)  # (file, line)
    files: list[str] = field(default_factory=list)
    backend: str = ""  # the backend the ranges ran on
    backend_reason: str = ""  # why, when batchcore chose it (backend="auto")
    ranges: int = 0  # the byte ranges the input was cut into
    resumed: int = 0  # items (ranges, or blocks of a remote file) taken from the journal
    ran: int = 0  # items run (a remote file's blocks cut by a wrong guess run twice)
    checkpoint: str = ""  # the journal's path, with ``checkpoint=``

    def as_json(self) -> dict[str, Any]:
        """The CLI's ``--json`` object: ``rows``, ``sum``, ``groups`` (and more detail)."""
        report: dict[str, Any] = {
            "path": self.path,
            "files": self.files,
            "rows": self.rows,
            "sum": {name: stats.sum for name, stats in self.columns.items()},
            "columns": {name: stats.as_dict() for name, stats in self.columns.items()},
            "skipped_rows": self.skipped_rows,
            "skipped_lines": [{"file": file, "line": line} for file, line in self.skipped_lines],
        }
        if self.checkpoint:
            report["checkpoint"] = {"path": self.checkpoint, "resumed_ranges": self.resumed}
        if self.group_by is not None:
            report["group_by"] = self.group_by
            report["groups"] = {
                group_key(key): {
                    "rows": group.rows,
                    "sum": {name: stats.sum for name, stats in group.columns.items()},
                    "columns": {name: stats.as_dict() for name, stats in group.columns.items()},
                }
                for key, group in sorted(self.groups.items(), key=lambda kv: group_key(kv[0]))
            }
        return report


def group_key(value: Any) -> str:
    """A group's key as JSON object keys must be: text (``"null"`` for missing values)."""
    return "null" if value is None else str(value)


def _column_stats(array: pa.ChunkedArray | pa.Array) -> ColumnStats:
    extremes = pc.min_max(array)
    stats = ColumnStats(
        count=pc.count(array).as_py(),
        min=extremes["min"].as_py(),
        max=extremes["max"].as_py(),
    )
    if pa.types.is_floating(array.type):  # pyarrow's sum carries float noise: ours does not
        column = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
        values = _numpy(column)
        if column.null_count:
            values = values[_valid(column)]
        stats.sum, stats.residual = careful_sum(values)
    else:
        stats.sum = pc.sum(array).as_py() or 0
    return stats


def careful_sum(values: np.ndarray[Any, Any]) -> tuple[float, float]:
    """The sum of float ``values`` as a double and what rounding to it left out: numpy's
    pairwise summation in extended precision (``longdouble``: 64-bit mantissas on x86), so the
    double is the correctly rounded sum but for sums within a hair of a rounding boundary, and
    the pair merges exactly (``ColumnStats.merge``). Where ``longdouble`` is a plain double
    (ARM macOS) it is pairwise summation, still far better than adding one by one."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is nan, as for any sum
        total = np.sum(values, dtype=np.longdouble)
        high = float(total)
        low = float(total - np.longdouble(high))
    return high, low if math.isfinite(low) else 0.0


def _numpy(array: pa.Array) -> np.ndarray[Any, Any]:
    """A fixed-width Arrow array's values as a numpy view (whatever sits in null slots).

    Built from the buffer directly: ``Array.to_numpy`` would import pandas (a fifth of a second
    and ~40 MiB in every worker process).
    """
    kind = (
        "f"
        if pa.types.is_floating(array.type)
        else "u"
        if pa.types.is_unsigned_integer(array.type)
        else "i"
    )
    dtype = np.dtype(f"{kind}{array.type.bit_width // 8}")
    return np.frombuffer(
        array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize
    )


def _valid(array: pa.Array) -> np.ndarray[Any, Any]:
    """Which slots of ``array`` hold a value (not null), as a numpy bool array."""
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    bits = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)


def group_stats(table: pa.Table, key: str, sums: Sequence[str]) -> dict[Any, GroupStats]:
    """Rows and column statistics per value of ``key``, from one stable sort of the rows by key.

    (``Table.group_by`` would do, but it loads pyarrow's dataset module and with it all of
    pandas: a fifth of a second and ~40 MiB in every worker.) The rows are ordered by group
    once, keeping file order within each (a radix sort while there are at most 65,536 keys), and
    every column is then reduced a segment per group: integer sums, minima and maxima with
    ``reduceat``, a float column's segment with ``careful_sum``. So each group's statistics are
    those of its values in file order: every backend and cut gives the same bits, without float
    noise. (Per-group ``ufunc.at`` updates cost a 1 GB job ~1 s more.)
    """
    encoded = pc.dictionary_encode(table[key].combine_chunks())
    names = [*encoded.dictionary.to_pylist(), None]  # the last code stands for a missing key
    size = len(names)
    codes = _numpy(encoded.indices)
    if encoded.indices.null_count:  # (pc.fill_null with a Python value would import pandas too)
        codes = np.where(_valid(encoded.indices), codes, size - 1)
    codes = codes.astype(_code_type(size), copy=False)
    rows = np.bincount(codes, minlength=size)
    present_codes: list[int] = np.flatnonzero(rows).tolist()
    groups = {names[code]: GroupStats(int(rows[code])) for code in present_codes}
    order: np.ndarray[Any, Any] | None = None  # all rows by group: shared by columns without nulls
    for name in sums:
        column = table[name].combine_chunks()
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            for code in present_codes:  # decimals: exact, one filter per group
                chosen = pa.array(codes == code)
                groups[names[code]].columns[name] = _column_stats(pc.filter(column, chosen))
            continue
        values = _numpy(column)
        if column.null_count == 0:
            if order is None:
                order = np.argsort(codes, kind="stable")
            counts, ordered = rows, values[order]
        else:
            valid = _valid(column)
            at = codes[valid]
            counts = np.bincount(at, minlength=size)
            ordered = values[valid][np.argsort(at, kind="stable")]
        per_group = _segment_stats(ordered, counts, present_codes)
        for code, stats in zip(present_codes, per_group, strict=True):
            groups[names[code]].columns[name] = stats
    return groups


def _code_type(size: int) -> np.dtype[Any]:
    """The narrowest integer type for ``size`` group codes: on 8 or 16 bits numpy's stable
    argsort is a radix sort (~4x faster than its timsort of 32-bit codes)."""
    if size <= 1 << 8:
        return np.dtype(np.uint8)
    if size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int64)


def _segment_stats(
    ordered: np.ndarray[Any, Any], counts: np.ndarray[Any, Any], codes: list[int]
) -> list[ColumnStats]:
    """The statistics of each group of ``codes``: ``ordered`` holds the values of every group
    side by side in code order, ``counts[code]`` of them for ``code``, in file order."""
    ends = np.cumsum(counts)
    filled = [code for code in codes if counts[code]]
    starts = (ends - counts)[filled]
    minima: dict[int, Any] = {}
    maxima: dict[int, Any] = {}
    totals: dict[int, tuple[float | int, float]] = {}
    if filled:  # (reduceat wants at least one start)
        low, high = np.minimum.reduceat(ordered, starts), np.maximum.reduceat(ordered, starts)
        minima = dict(zip(filled, low.tolist(), strict=True))
        maxima = dict(zip(filled, high.tolist(), strict=True))
        if ordered.dtype.kind == "f":
            for code, start in zip(filled, starts.tolist(), strict=True):
                totals[code] = careful_sum(ordered[start : ends[code]])
        else:  # in the column's own type, as numpy sums it
            sums = np.add.reduceat(ordered, starts, dtype=ordered.dtype).tolist()
            totals = {code: (total, 0.0) for code, total in zip(filled, sums, strict=True)}
    empty: tuple[float | int, float] = (0.0 if ordered.dtype.kind == "f" else 0, 0.0)
    return [
        ColumnStats(
            totals.get(code, empty)[0],
            int(counts[code]),
            minima.get(code),
            maxima.get(code),
            totals.get(code, empty)[1],
        )
        for code in codes
    ]


class StatsNode(CSVBatchNode):
    """Per range: row count and column statistics (and per group); ``post`` merges them in order."""

    releases_gil = True  # pyarrow parses and numpy sums without the GIL: auto picks threads
    speculative_ranges = True  # exec has no effects: a wrongly cut block's result is dropped

    def __init__(
        self, path: Inputs | None, sums: Sequence[str], group_by: str | None = None, **options: Any
    ) -> None:
        columns = list(dict.fromkeys([*sums, *([group_by] if group_by else [])]))
        super().__init__(path, columns=columns, **options)
        self.sums = list(sums)
        self.group_by = group_by

    def split(
        self, inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
    ) -> list[CsvItem] | Iterator[CsvItem]:
        ranges = super().split(inputs)
        plan = self.csv_plan
        assert plan is not None
        untyped = [name for name in self.sums if name in plan.untyped]
        if untyped:  # no value in the head to infer from: a summed column is a number
            fields = [
                pa.field(f.name, pa.float64()) if f.name in untyped else f for f in plan.schema
            ]
            schema = pa.schema(fields)
            self.csv_plans = [replace(each, schema=schema) for each in self.csv_plans]
            plan = self.csv_plans[0]
        for name in self.sums:
            kind = plan.schema.field(name).type
            if not (
                pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
            ):
                raise CsvFormatError(
                    plan.path,
                    None,
                    f"is {kind}, not a number, so it cannot be summed (its first rows hold "
                    "non-numeric values; pass column_types / --type COL=float64 to force a number)",
                    name,
                )
        return ranges

    def checkpoint_fingerprint(self) -> str:
        return f"{super().checkpoint_fingerprint()} sums={self.sums!r} group_by={self.group_by!r}"

    def exec(self, table: pa.Table) -> tuple[int, dict[str, ColumnStats], dict[Any, GroupStats]]:
        columns = {name: _column_stats(table[name]) for name in self.sums}
        groups: dict[Any, GroupStats] = {}
        if self.group_by is not None and table.num_rows:
            groups = group_stats(table, self.group_by, self.sums)
        return table.num_rows, columns, groups

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> str:
        stats = CsvStats(self.csv_report.path, group_by=self.group_by)
        stats.columns = {name: ColumnStats() for name in self.sums}
        for rows, columns, groups in exec_res:
            stats.rows += rows
            for name, column in columns.items():
                stats.columns[name].merge(column)
            for key, group in groups.items():
                stats.groups.setdefault(key, GroupStats()).merge(group)
        stats.skipped_rows = self.csv_report.skipped
        stats.skipped_lines = list(self.csv_report.skipped_lines)
        stats.files = list(self.csv_report.files)
        stats.backend = self.batch_stats.backend
        stats.backend_reason = self.batch_stats.reason
        stats.ranges = self.csv_report.ranges
        stats.resumed = self.batch_stats.resumed
        stats.ran = self.batch_stats.items - self.batch_stats.resumed
        stats.checkpoint = self.batch_stats.checkpoint
        shared["csv_stats"] = stats
        return "done"


def csv_stats(
    path: Inputs,
    sums: Sequence[str],
    *,
    group_by: str | None = None,
    **options: Any,
) -> CsvStats:
    """Row count and sum/count/mean/min/max of the ``sums`` columns (per ``group_by`` key too).

    ``path``: a file, URL, glob or folder of parts, or a list of these (read as one file).
    ``options`` are ``CSVBatchNode``'s: CSV options (``chunk_bytes``, ``delimiter``,
    ``column_types``, ``bad_rows``...) and batch options (``backend``, ``workers``, ``progress``).
    Nulls are skipped in sums and counted in rows.
    """
    shared: dict[str, Any] = {}
    StatsNode(_inputs(path), sums, group_by, **options).run(shared)
    stats: CsvStats = shared["csv_stats"]
    return stats


# --- Parquet -----------------------------------------------------------------------------------

PART = "part-{index}.parquet"  # index: the range's, 00012; or 00012-00003, a compressed file's
REMOTE_PART = "part-{index}-{run}.parquet"  # 4th chunk, when its worker decompressed it (Dask)
SUCCESS = "_SUCCESS"
JOURNAL = "_checkpoint.sqlite"  # a resumable run's, in its staging folder; removed at the end
# In a resumable run's parts, the Parquet footer's key for the range the part was written for
# (its checkpoint key and the job's fingerprint, hashed): a part written just before a kill,
# which the journal had not recorded yet, is kept on resume rather than written again.
RANGE_TAG = b"batchcore.range"
log = logging.getLogger("batchcore")


class ParquetNode(CSVBatchNode):
    """Writes each range as one Parquet part. Into a local ``out_dir``: into a hidden staging
    folder beside it, which ``post`` completes with ``_SUCCESS`` and swaps in whole
    (``processors.files.StagedFolder``). To a URL: each part is one PUT from its worker and
    ``post`` writes ``_SUCCESS`` last (``processors.outputs.RemoteDataset``)."""

    releases_gil = True  # parsing and Parquet encoding run in pyarrow's C++, without the GIL

    def __init__(
        self,
        path: Inputs | None,
        out_dir: str,
        overwrite: bool = False,
        resume: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(path, **options)
        self.out_dir = out_dir
        self.overwrite = overwrite
        self.resume = resume
        self.staged: StagedFolder | None = None
        self.remote: RemoteDataset | None = None
        self.journal: Path | None = None  # with ``resume``, from ``prep`` on
        self.unsaved_split: tuple[str, dict[int, list[tuple[int, int, int | None]]]] | None = None
        if resume and options.get("checkpoint") is not None:
            raise TypeError("pass resume=True or checkpoint=, not both: resume keeps the journal")
        # A journal elsewhere would outlive the staging folder that holds the parts it lists,
        # or list a URL dataset's parts that a failed run deletes.
        self.checkpoint_refused = (
            None if resume else "its parts are staged per run: pass resume=True (--resume)"
        )

    def _exec(self, items: Any) -> list[Any]:
        if self.journal is None:
            return super()._exec(items)
        with use_backend(checkpoint=self.journal):
            return super()._exec(items)

    def _run(self, shared: Any) -> Any:
        try:
            return super()._run(shared)
        except BaseException as exc:
            if self.remote is not None and not self.resume:  # no _SUCCESS: remove its parts
                left = self.remote.abort()
                if left:
                    note = f"these parts of the failed run remain: {', '.join(left)}"
                    exc.add_note(note)
                    log.warning("%s: %s", self.out_dir, note)
            raise
        finally:  # a failed run leaves no lock, and no staging folder unless it may resume
            self.remote = None
            if self.staged is not None:
                self.staged.close(keep=self.resume)
                self.staged = None

    def prep(self, shared: dict[str, Any]) -> list[CsvItem] | Iterator[CsvItem]:
        if self.resume:  # the journal, known before the split so that it can reuse the last one
            self.journal = self._journal_before(self.path or shared["input_file"])
        ranges = super().prep(shared)  # a bad input fails here, before anything is written
        if is_remote(self.out_dir):
            self.remote = RemoteDataset.begin(
                self.out_dir,
                overwrite=self.overwrite,
                options=self.storage_options,
                ours=_written_by_us,
                resume=self.resume,
            )
        else:
            self.staged = StagedFolder.begin(
                local_part(self.out_dir),
                lambda out_dir: check_out_dir(out_dir, self.overwrite),
                adopt=_resumable if self.resume else None,
            )
            if self.resume:  # beside the parts it lists, in the staging folder: they go together
                self.journal = self.staged.staging / JOURNAL
                if self.unsaved_split is not None:
                    super().save_split(*self.unsaved_split)
        return ranges

    def _journal_before(self, inputs: Any) -> Path | None:
        """Where the journal is, before the split: for a URL output one per job, in the cache
        folder; for a folder, in the staging folder a killed run left (``None``: no such)."""
        if is_remote(self.out_dir):
            given = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
            paths = [os.fspath(p) if is_url(p) else os.path.abspath(p) for p in given]
            job = {"out": self.out_dir, "inputs": paths, "with": self.checkpoint_fingerprint()}
            return cache_journal("csv-to-parquet", job)
        final = Path(os.path.realpath(local_part(self.out_dir)))
        if not final.parent.is_dir():
            return None
        newest = newest_staging(final, _resumable)
        return None if newest is None else newest / JOURNAL

    def split_file(self) -> Path | None:
        return None if self.journal is None else Path(f"{self.journal}.split.json")

    def checkpoint_key(self, item: Any) -> Any:
        """A range's key, and its place among the ranges: that names its part file, so a range
        of a file given in another place of the inputs is written again, under its new name."""
        return (*super().checkpoint_key(item), getattr(item, "index", None))

    def save_split(self, key: str, ranges: dict[int, list[tuple[int, int, int | None]]]) -> None:
        if self.journal is None or (self.staged is None and not is_remote(self.out_dir)):
            self.unsaved_split = (key, ranges)  # the staging folder is made after the split
            return
        super().save_split(key, ranges)

    @property
    def part_dir(self) -> Path:
        """Where ``exec`` writes the parts of a local dataset: the staging folder of this run."""
        assert self.staged is not None, "parts are written between prep and post"
        return self.staged.staging

    def exec(self, table: pa.Table) -> tuple[str, int]:
        import pyarrow.parquet as pq  # here, not at the top: the stats job's workers never need it

        rng = self.current_range
        assert rng is not None
        if self.remote is not None:  # encoded whole in memory, then one PUT: no rename there
            name = REMOTE_PART.format(index=_part_index(rng), run=self.remote.run)
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer)
            self.remote.put_part(name, buffer.getvalue().to_pybytes())
            return name, table.num_rows
        final = self.part_dir / PART.format(index=_part_index(rng))
        if self.resume:
            metadata = {**(table.schema.metadata or {}), RANGE_TAG: self._range_tag(rng)}
            table = table.replace_schema_metadata(metadata)
        write_atomically(final, lambda temporary: pq.write_table(table, str(temporary)))
        return final.name, table.num_rows

    def _range_tag(self, rng: CsvRange) -> bytes:
        key = repr((self.checkpoint_fingerprint(), self.checkpoint_key(rng))).encode()
        return blake2b(key, digest_size=16).hexdigest().encode()

    def checkpoint_recover(self, item: Any) -> tuple[str, int] | None:
        """A resumed run's part for ``item`` that the journal lacks (the run was killed between
        the part's rename and the journal's commit): kept when its footer names this range of
        this job, its name and rows read from the footer; else ``None``, and it is written."""
        if self.staged is None or not isinstance(item, CsvRange):
            return None
        import pyarrow.parquet as pq

        path = self.part_dir / PART.format(index=_part_index(item))
        try:
            footer = pq.read_metadata(path)
        except (OSError, pa.ArrowException):  # none, or not a whole Parquet file
            return None
        if (footer.metadata or {}).get(RANGE_TAG) != self._range_tag(item):
            return None
        return path.name, footer.num_rows

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> str:
        rows = sum(count for _, count in exec_res)
        summary = {"source": self.csv_report.path, "rows": rows, "parts": len(exec_res)}
        if self.remote is not None:
            left = self.remote.commit(summary, [name for name, _ in exec_res])
            if self.journal is not None:  # the dataset is complete: _SUCCESS says so from now
                _remove_journal(self.journal)
            if left:  # the new dataset is whole; a listing reader would also see these
                log.warning(
                    "%s: written, but these parts of the previous dataset remain (delete them, "
                    "or rerun with --overwrite): %s",
                    self.out_dir,
                    ", ".join(left),
                )
        else:
            _keep_only(self.part_dir, {name for name, _ in exec_res})
            text = json.dumps(summary) + "\n"
            write_atomically(self.part_dir / SUCCESS, lambda temporary: temporary.write_text(text))
            assert self.staged is not None
            self.staged.commit()
        shared["parquet"] = {
            **summary,
            "resumed": self.batch_stats.resumed,
            "out_dir": self.out_dir,
            "skipped_rows": self.csv_report.skipped,
            "skipped_lines": list(self.csv_report.skipped_lines),
        }
        return "done"


def _complete(out_dir: str, storage_options: Any) -> dict[str, Any] | None:
    """``out_dir``'s summary when it holds a finished dataset and no run of it waits to resume."""
    if is_remote(out_dir):
        try:
            text = read_text(join_url(out_dir, SUCCESS), protect_options(storage_options))
        except FileNotFoundError:
            return None
    else:
        folder = Path(local_part(out_dir))
        success = folder / SUCCESS
        if not success.is_file() or side_folders(folder.resolve(), "staging"):
            return None
        text = success.read_text()
    summary: dict[str, Any] = json.loads(text)
    summary.pop("files", None)
    summary.pop("run", None)
    return {**summary, "out_dir": out_dir, "complete": True, "resumed": 0}


def _resumable(staging: Path) -> bool:
    """Whether an earlier run's staging folder holds a journal: a resumable run's."""
    return (staging / JOURNAL).exists()


def _remove_journal(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".split.json"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _keep_only(folder: Path, parts: set[str]) -> None:
    """Remove from a dataset about to be committed the journal and any part not among ``parts``
    (a resumed run's earlier ranges, were the input cut differently since)."""
    for name in os.listdir(folder):
        stray = name.startswith("part-") and name.endswith(".parquet") and name not in parts
        if stray or name.startswith(JOURNAL):  # its -wal and -shm files too
            (folder / name).unlink()


def _part_index(rng: CsvRange) -> str:
    """A part's number in its name: in file order, as the ranges are."""
    return f"{rng.index:05d}" + (f"-{rng.chunk:05d}" if rng.chunk is not None else "")


def _written_by_us(name: str) -> bool:
    """A part (``part-NNNNN.parquet``, ``part-NNNNN-RUN.parquet`` on a store), ``_SUCCESS``, or a
    part's temporary file (earlier versions wrote them here)."""
    part = name.startswith("part-") and name.endswith(".parquet")
    return part or name == SUCCESS or (name.startswith(".part-") and is_temp_name(name))


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that is a file, holds a dataset (unless ``overwrite``), or holds
    anything this job did not write (replacing the folder would delete it)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise NotADirectoryError(20, "exists and is not a directory", str(out_dir))
    names = sorted(os.listdir(out_dir))
    existing = [name for name in names if not name.startswith(".")]
    if existing and not overwrite:
        raise FileExistsError(
            17,
            f"is not empty ({', '.join(existing[:3])}); pass overwrite=True / --overwrite",
            str(out_dir),
        )
    for name in names:
        if not _written_by_us(name):
            raise FileExistsError(
                17, f"holds {name!r}, which is not part of a dataset this job wrote", str(out_dir)
            )


def csv_to_parquet(
    path: Inputs,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    resume: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Convert a CSV file to a Parquet dataset: one part per range, the same schema in every part.

    The dataset appears whole or not at all: parts and ``_SUCCESS`` are written into a hidden
    staging folder beside ``out_dir`` and swapped in when all are written (with ``overwrite``,
    the old dataset stays in place until then). A second run writing ``out_dir`` at the same time
    is refused (``UsageError``). ``out_dir`` may be a URL (``storage_options`` reach it): parts
    are then PUT by the workers and ``_SUCCESS``, naming them, written last; the guarantees are
    ``processors.outputs``'. Returns ``{"source", "rows", "parts", "resumed", "out_dir",
    "skipped_rows", "schema"}``.

    ``resume``: a killed or failed run's staging folder is kept, with a journal of its finished
    ranges (``checkpoint=``), and the next run with ``resume`` writes only the other ranges.
    When ``out_dir`` is complete already (``_SUCCESS``, no run to resume, no ``overwrite``),
    nothing is run: the result is ``_SUCCESS``'s summary with ``"complete": True``.
    """
    if resume and not overwrite:
        done = _complete(os.fspath(out_dir), options.get("storage_options"))
        if done is not None:
            return done
    node = ParquetNode(_inputs(path), os.fspath(out_dir), overwrite, resume, **options)
    shared: dict[str, Any] = {}
    node.run(shared)
    result: dict[str, Any] = shared["parquet"]
    assert node.csv_plan is not None
    result["schema"] = node.csv_plan.schema
    return result
