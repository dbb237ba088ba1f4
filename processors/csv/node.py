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

import contextlib
import json
import os
import pickle
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import partial
from hashlib import blake2b
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from batchcore import Backend, BatchNode, Journal, Node
from batchcore.backends.base import default_workers
from batchcore.journal import journal_path
from batchcore.options import resolve_options

from ..compression import open_decompressed
from ..errors import CompressedDataError, CsvFormatError
from ..files import write_atomically
from ..storage import Source, describe, expand, protect_options, reader_modules
from .read import (
    MAX_RECORD_BYTES,
    MAX_REPORTED_LINES,
    UNTERMINATED,
    CsvOptions,
    CsvPlan,
    RangeData,
    check_columns,
    infer_schema,
    read_header,
    read_range,
    same_header,
    too_long,
)
from .split import (
    WINDOW,
    Aligned,
    BlockScan,
    CsvBlock,
    CsvItem,
    CsvRange,
    RecordTooLong,
    align_block,
    blocks,
    ends_inside_quotes,
    last_record_start,
    line_of,
    plan_ranges,
    read_reusing,
    scan_block,
    unterminated_record,
)
from .stream import StreamRecordTooLong, UnterminatedQuote, record_chunks

__all__ = ["CSVBatchNode", "CsvReport"]

# The range whose table ``exec`` is running on (per thread and asyncio task): ``current_range``.
CURRENT_RANGE: ContextVar[CsvRange | None] = ContextVar("processors_csv_range", default=None)


@dataclass
class CsvReport:
    """What the last run read: rows, bytes, and the bad rows it skipped (never silently).

    ``path`` is the input as given (a path, a URL, a pattern, or several joined by ``, ``);
    ``files`` every file it named; ``skipped_lines`` holds ``(file, line)`` pairs."""

    path: str = ""
    bytes: int = 0
    ranges: int = 0
    rows: int = 0
    skipped: int = 0
    skipped_lines: list[tuple[str, int]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def reset(self, path: str, files: list[str], size: int, ranges: int) -> None:
        self.path, self.files, self.bytes, self.ranges = path, files, size, ranges
        self.rows = self.skipped = 0
        self.skipped_lines = []


@dataclass
class _RangeResult:
    """What the per-range step returns: the user's exec result plus the range's counts."""

    value: Any
    rows: int
    skipped: int
    skipped_lines: list[tuple[str, int]]


@dataclass
class _BlockResult:
    """What a ``CsvBlock`` item returns: where its worker put the block's records and, unless
    the range is empty, the range's result (or the parse error, if the guess may be wrong)."""

    block: CsvBlock
    aligned: Aligned
    value: _RangeResult | None = None
    error: CsvFormatError | None = None


@dataclass
class _FileResult:
    """What a whole compressed file's item returns: one result per chunk, in order."""

    parts: list[_RangeResult]


Span = tuple[int, int, int]  # a block to scan: (input file, start, end)
STREAM_READ = 8 << 20  # compressed bytes fetched at a time: few round trips to a remote store
STREAM_AHEAD = 3  # blocks of a remote compressed file fetched ahead of its decompressor
PREFETCH = 2  # decompressed chunks ready ahead of the batch
T = TypeVar("T")


class _ScanBlocks(BatchNode):
    """Phase 1 of the split, run on the CSV node's own backend: one scan per block."""

    def __init__(
        self,
        sources: list[Source],
        quote: int | None,
        lines: bool,
        spans: list[Span],
        backend: Backend,
    ) -> None:
        super().__init__(backend=backend)
        self.sources = sources
        self.quote = quote
        self.lines = lines
        self.spans = spans

    def prep(self, shared: dict[str, Any]) -> list[Span]:
        return self.spans

    def exec(self, block: Span) -> BlockScan:
        file, start, end = block
        return scan_block(self.sources[file], start, end, self.quote, self.lines)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[BlockScan]) -> None:
        shared["scans"] = exec_res


def _warm(backend: Backend) -> bool:
    """Whether counting quotes on ``backend`` beats the parent's ~6 GB/s: threads, or a process
    pool whose workers have booted. Not Dask: each task costs tens of milliseconds of scheduling,
    more than counting a local block takes."""
    if backend.name == "thread":
        return True
    return backend.name != "dask" and backend.is_warm()


def _count_blocks(
    sources: list[Source],
    quote: int | None,
    lines: bool,
    spans: list[Span],
    backend: Backend,
) -> list[BlockScan]:
    """Scan ``spans`` in order, on ``backend``'s workers as soon as they are up.

    A cold pool starts booting at once; meanwhile the parent counts blocks from the front, and
    when the workers are ready they take the rest. So no serial pass delays the parallel work:
    the parent only counts while there are no workers to count. Remote files are counted by
    the workers only, on every backend: the client never downloads them.
    """
    backend.start(items=len(spans))  # returns at once; a warm or thread pool is already there
    remote = any(not source.is_local for source in sources)
    scans: list[BlockScan] = []
    for position, (file, start, end) in enumerate(spans):
        if len(spans) - position > 1 and (remote or _warm(backend)):
            shared: dict[str, Any] = {}
            _ScanBlocks(sources, quote, lines, spans[position:], backend).run(shared)
            rest: list[BlockScan] = shared["scans"]
            return scans + rest
        scans.append(scan_block(sources[file], start, end, quote, lines))
    return scans


class _ParsesRange(Node):
    """The per-item step: parse the range, then PocketFlow's retry loop runs ``exec`` on it."""

    csv_plans: list[CsvPlan]

    def _exec(self, prep_res: Any) -> Any:
        if isinstance(prep_res, CsvBlock):
            return self._exec_block(self.csv_plans[prep_res.file], prep_res)
        if not isinstance(prep_res, CsvRange):  # a subclass whose prep yields something else
            return super()._exec(prep_res)
        assert self.csv_plans, "prep must call self.split(path)"
        plan = self.csv_plans[prep_res.file]
        if prep_res.whole:  # a compressed file, decompressed here, run chunk by chunk
            chunks = _stream_ranges(plan, prep_res.file)
            return _FileResult(
                [
                    self._exec_range(plan, replace(chunk, index=prep_res.index, chunk=number))
                    for number, chunk in enumerate(chunks)
                ]
            )
        return self._exec_range(plan, prep_res)

    def _exec_block(self, plan: CsvPlan, block: CsvBlock) -> _BlockResult:
        """Find the block's records in one read, then parse and run them like a range. With a
        guessed quote state a parse error may be the guess's: it goes back to the parent, which
        knows whether the guess was right (``CSVBatchNode._settle``)."""
        options = plan.options
        aligned, data = align_block(
            partial(read_reusing, plan.source),
            block,
            plan.size,
            options.quote_byte,
            options.max_record_bytes,
        )
        result = _BlockResult(block, aligned)
        if aligned.end > aligned.start:
            rng = CsvRange(block.index, aligned.start, aligned.end, file=block.file, data=data)
            try:
                result.value = self._exec_range(plan, rng)
            except CsvFormatError as exc:
                if block.inside is not None:
                    raise
                result.error = exc
        return result

    def _exec_range(self, plan: CsvPlan, prep_res: CsvRange) -> _RangeResult:
        data: RangeData = read_range(plan, prep_res)
        table: Any = data.table
        if plan.options.output == "pandas":
            table = data.table.to_pandas()
        token = CURRENT_RANGE.set(prep_res)
        try:
            value = super()._exec(table)
        finally:
            CURRENT_RANGE.reset(token)
        lines = [(plan.path, line) for line in data.skipped_lines]
        return _RangeResult(value, data.table.num_rows, data.skipped, lines)


class CSVBatchNode(BatchNode, _ParsesRange):
    """A BatchNode over CSV files whose ``exec`` gets a ``pyarrow.Table`` (or a DataFrame with
    ``output="pandas"``) holding one record-aligned range of one file.

    The input is ``path``, else ``shared["input_file"]``: a path, a URL (``s3://``, ``gs://``,
    ``https://``, any fsspec protocol; ``storage_options`` reach it), a glob, a folder of parts,
    or a list of these; several files read as one, their headers checked against the first.
    CSV options: ``chunk_bytes`` (range size), ``delimiter``, ``quote_char`` (``None``: no
    quoting), ``header``, ``column_names``, ``columns`` (parse only these), ``column_types``
    (``{"qty": "int64"}``; others are inferred once from the head), ``null_values``,
    ``encoding`` (ASCII-compatible), ``bad_rows`` ("error", or "skip" to drop ragged rows and
    report them in ``csv_report``), ``max_record_bytes`` (a longer record is an error that names
    its line, not a range as long as itself). Batch options (``backend``, ``workers``, ...) are
    BatchNode's. A subclass whose ``exec`` leaves nothing behind may set ``speculative_ranges =
    True``: its remote plain files are then read once instead of twice (see ``CsvBlock``).
    """

    progress_unit = "B"
    # True: ``exec`` may also run on a block a worker cut by a wrong guess, its result then
    # dropped and the block rerun (see ``CsvBlock``): so remote files are read once, not twice.
    # Only for an ``exec`` without effects that such a run would leave (a pure one, or one
    # whose rerun overwrites them).
    speculative_ranges = False

    def __init__(
        self,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
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
        storage_options: Mapping[str, Any] | None = None,
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
        self.storage_options = protect_options(storage_options)
        self.csv_plans: list[CsvPlan] = []
        self.csv_report = CsvReport()

    @property
    def csv_plan(self) -> CsvPlan | None:
        """The first input file's plan: the column names and the schema every file is read with."""
        return self.csv_plans[0] if self.csv_plans else None

    def prep(self, shared: dict[str, Any]) -> list[CsvItem] | Iterator[CsvItem]:
        """Split ``self.path`` (or ``shared["input_file"]``) into record-aligned ranges."""
        return self.split(self.path or shared["input_file"])

    def split(
        self, inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
    ) -> list[CsvItem] | Iterator[CsvItem]:
        """Plan the inputs (names, one schema) and cut them into ranges; call from ``prep``.

        A list, or, when a file is compressed, an iterator that decompresses as it goes."""
        options = self.csv_options
        inputs = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        self._start_readers(inputs)
        sources = expand(inputs, self.storage_options)
        heads = _read_headers(sources, options)
        check_columns(heads[0])
        for head in heads[1:]:
            same_header(head, heads[0])  # a mismatch fails before any block is read
        quote = options.quote_byte
        lines = options.bad_rows == "skip"  # skipped rows are reported by line: count lines too
        sources = [head.source for head in heads]  # compressed ones now say so
        guessed = [self._guesses(head, lines) for head in heads]
        key = repr(([(s.url, s.size, s.version, s.compression) for s in sources], guessed, options))
        known = self.load_split(key)  # a rerun on the same files: their ranges, without a scan
        spans = [
            (file, start, end)
            for file, head in enumerate(heads)
            if head.compression is None  # a compressed file is read front to back instead
            and not guessed[file]  # nor is this one's whole data read twice
            and known is None
            for start, end in blocks(head.data_start, head.size, options.chunk_bytes)
        ]
        scans = self._scan(sources, spans, quote, lines)
        per_file: list[list[BlockScan]] = [[] for _ in sources]
        for (file, _, _), scan in zip(spans, scans, strict=True):
            per_file[file].append(scan)
        for head, file_scans in zip(heads, per_file, strict=True):
            # An odd total is an unterminated quote: reported before inference reads past it.
            if quote is not None and ends_inside_quotes(file_scans):
                start = unterminated_record(head.source, head.data_start, quote)
                raise CsvFormatError(head.path, line_of(head.source, start), UNTERMINATED)
        first = infer_schema(heads[0])
        plans = [first, *(same_header(head, first) for head in heads[1:])]
        self.csv_plans = plans
        limit = options.max_record_bytes
        ranges: list[list[CsvItem]] = []
        for file, (plan, file_scans) in enumerate(zip(plans, per_file, strict=True)):
            if plan.compression is not None:
                ranges.append([])
                continue
            if guessed[file]:
                ranges.append(_blocks(plan, file))
                continue
            if known is not None:
                ranges.append([CsvRange(0, *cut, file=file) for cut in known.get(file, [])])
                continue
            try:
                found = plan_ranges(
                    plan.source, plan.data_start, plan.size, file_scans, quote, limit, file=file
                )
            except RecordTooLong as exc:
                raise too_long(plan.path, line_of(plan.source, exc.position), limit) from None
            ranges.append([*found])
        if known is None and spans:  # a scan ran: keep what it found, for a rerun
            cuts = {
                file: [(rng.start, rng.end, rng.line) for rng in found if isinstance(rng, CsvRange)]
                for file, found in enumerate(ranges)
                if not guessed[file] and plans[file].compression is None
            }
            self.save_split(key, cuts)
        files = [source.url for source in sources]
        size = sum(plan.size for plan in plans)
        count = sum(len(found) for found in ranges)
        self.csv_report.reset(describe(inputs), files, size, count)
        if all(plan.compression is None for plan in plans):
            return [replace(rng, index=index) for index, rng in enumerate(chain(*ranges))]
        return self._in_order(plans, ranges)

    def load_split(self, key: str) -> dict[int, list[tuple[int, int, int | None]]] | None:
        """The ranges an earlier split of the same inputs made (``key`` names the files, their
        versions and the CSV options), per file, as ``(start, end, line)``: ``None`` if none is
        kept. Kept beside the checkpoint journal (``FILE.split.json``), when there is one."""
        path = self.split_file()
        if path is None:
            return None
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # none yet, or unreadable: split again
        if not isinstance(kept, dict) or kept.get("key") != key:
            return None
        return {int(file): [tuple(cut) for cut in cuts] for file, cuts in kept["ranges"].items()}

    def save_split(self, key: str, ranges: dict[int, list[tuple[int, int, int | None]]]) -> None:
        """Keep this split for a rerun (``load_split``); a failure to write only costs a scan."""
        path = self.split_file()
        if path is not None:
            text = json.dumps({"key": key, "ranges": ranges})
            with contextlib.suppress(OSError):
                write_atomically(path, lambda temporary: temporary.write_text(text))

    def split_file(self) -> Path | None:
        """Where ``load_split`` and ``save_split`` keep the split: beside the journal."""
        checkpoint = resolve_options(self, None).checkpoint
        if checkpoint is None:
            return None
        path = (
            checkpoint.path if isinstance(checkpoint, Journal) else journal_path(checkpoint, self)
        )
        return Path(f"{path}.split.json")

    def _start_readers(self, inputs: list[str | os.PathLike[str]]) -> None:
        """For URLs, start the batch's workers now, with the store's client library (s3fs, or
        Arrow's S3 client for plain objects) imported before they fork: they boot while this
        process lists and reads headers, and none imports it at its first block (s3fs: ~0.3 s
        each)."""
        imports = reader_modules(inputs, self.storage_options)
        backend = resolve_options(self, None).backend
        if imports and backend.parallel:
            backend.start(imports)

    def _guesses(self, head: CsvPlan, lines: bool) -> bool:
        """Whether ``head``'s file is cut by its workers, each block after one read, rather than
        after a pass that counts its quotes: a remote plain file of a node whose ``exec`` may
        run on a wrong guess (``speculative_ranges``), stopping at the first failure (so every
        block's quote count comes back) and not asked for bad rows' lines."""
        return (
            self.speculative_ranges
            and head.compression is None
            and not head.source.is_local
            and not lines
            and resolve_options(self, None).fail_fast
        )

    def _in_order(self, plans: list[CsvPlan], ranges: list[list[CsvItem]]) -> Iterator[CsvItem]:
        """Every file's ranges, numbered in file order; a compressed file's are the chunks of its
        decompressed stream, cut as the batch asks for them (never all in memory). The next
        compressed files, one per core, are decompressed at the same time, each a chunk or two
        ahead, so several files use several cores."""
        ahead = default_workers()  # one stream per core at most
        started: dict[int, _Prefetch[CsvRange]] = {}
        compressed = [file for file, plan in enumerate(plans) if plan.compression is not None]
        whole = _whole_files(resolve_options(self, None).backend, len(compressed))
        index = 0
        try:
            for file, (plan, found) in enumerate(zip(plans, ranges, strict=True)):
                if plan.compression is None:
                    chunks: Iterator[CsvItem] = iter(found)
                elif whole:
                    self.csv_report.ranges += 1
                    yield CsvRange(index, plan.data_start, plan.size, file=file, whole=True)
                    index += 1
                    continue
                else:
                    upcoming = [f for f in compressed if f >= file][:ahead]
                    for next_file in upcoming:
                        if next_file not in started:
                            stream = _stream_ranges(plans[next_file], next_file)
                            started[next_file] = _Prefetch(stream)
                    chunks = started[file]
                for rng in chunks:
                    if plan.compression is not None:
                        self.csv_report.ranges += 1
                    yield replace(rng, index=index)
                    index += 1
                if file in started:
                    started.pop(file).close()
        finally:
            for prefetch in started.values():
                prefetch.close()

    def _scan(
        self, sources: list[Source], spans: list[Span], quote: int | None, lines: bool
    ) -> list[BlockScan]:
        """Phase 1: the quote (and newline) counts of every block of every file, in order."""
        if quote is None and not lines:
            return [BlockScan(start, end, 0) for _, start, end in spans]
        backend = resolve_options(self, spans).backend  # about one range per block
        if len(spans) > 1 and backend.parallel:
            return _count_blocks(sources, quote, lines, spans, backend)
        return [scan_block(sources[f], start, end, quote, lines) for f, start, end in spans]

    @property
    def progress_label(self) -> str:
        """The progress bar's label: the input as the user named it, its last part
        (``sales.csv``), rather than the node's class."""
        path = self.csv_report.path.rstrip("/")
        return path.rsplit("/", 1)[-1] if path else ""

    @property
    def current_range(self) -> CsvRange | None:
        """The byte range whose rows ``exec`` is looking at (``None`` outside ``exec``)."""
        return CURRENT_RANGE.get()

    @property
    def current_file(self) -> str | None:
        """The path or URL of the file whose rows ``exec`` is looking at."""
        rng = CURRENT_RANGE.get()
        return None if rng is None else self.csv_plans[rng.file].path

    def checkpoint_key(self, item: Any) -> Any:
        """What names a range across runs (``checkpoint=``): its file's URL, size and version
        (mtime or ETag) and the schema it is parsed with, and its bytes' place in the file. So
        a rewritten file's ranges run again, and a file's place among the inputs does not
        matter."""
        if not isinstance(item, CsvRange | CsvBlock):  # a subclass's own items: by content
            return pickle.dumps(item, protocol=5)
        plan = self.csv_plans[item.file]
        source = plan.source
        where: tuple[Any, ...] = (item.start, item.end)
        if isinstance(item, CsvBlock):
            where += ("block", item.inside)
        else:
            where += ("whole" if item.whole else "stream" if item.data is not None else "range",)
        schema = blake2b(plan.schema.serialize().to_pybytes(), digest_size=8).hexdigest()
        return (source.url, source.size, source.version, schema, *where)

    def checkpoint_fingerprint(self) -> str:
        """The CSV options that change what ``exec`` gets (``checkpoint=`` refuses a journal made
        with others). Not the sizes: other ranges are other keys (run afresh), another inferred
        schema too."""
        settings = {
            name: value
            for name, value in vars(self.csv_options).items()
            if name not in ("chunk_bytes", "infer_bytes")
        }
        return repr(settings)

    def progress_units(self, item: Any) -> int:
        """Progress counts bytes of the files."""
        return item.size if isinstance(item, CsvRange | CsvBlock) else 1

    def _settle(self, results: list[Any]) -> list[Any]:
        """The blocks' results, checked: the quote counts of a file's blocks before each one say
        its true quote state, so a block cut with a wrong guess is run again with the right
        one, and only a right guess's parse error is raised. Empty blocks are dropped."""
        quote = self.csv_options.quote_byte
        states: dict[int, bool] = {}  # per file: the quote state at its next block's start
        wrong: dict[int, CsvBlock] = {}  # position in results: the block with its true state
        for position, result in enumerate(results):
            if isinstance(result, _BlockResult):
                block, aligned = result.block, result.aligned
                inside = states.get(block.file, False)
                if aligned.inside != inside:
                    wrong[position] = replace(block, inside=inside)
                states[block.file] = inside ^ bool(aligned.quotes & 1)
        for file, inside in states.items():
            if inside and quote is not None:  # an odd total: a quoted field is never closed
                plan = self.csv_plans[file]
                start = unterminated_record(plan.source, plan.data_start, quote)
                raise CsvFormatError(plan.path, line_of(plan.source, start), UNTERMINATED)
        if wrong:
            main = replace(self.batch_stats)  # the redo is a batch of its own: add it to this one
            redone = super()._exec(list(wrong.values()))
            redo = self.batch_stats
            for name in ("items", "failed", "retries", "seconds", "resumed"):
                setattr(main, name, getattr(main, name) + getattr(redo, name))
            main.failures += redo.failures
            vars(self.batch_stats).update(vars(main))  # the same object: shared with copies
            results = list(results)
            for position, result in zip(wrong, redone, strict=True):
                results[position] = result
        settled = []
        for result in results:
            if not isinstance(result, _BlockResult):
                settled.append(result)
                continue
            if result.aligned.too_long is not None:
                raise self._too_long(result.block, result.aligned.start, result.aligned.too_long)
            if result.error is not None:
                raise result.error
            if result.value is not None:
                settled.append(result.value)
        self.csv_report.ranges -= len(results) - len(settled)
        return settled

    def _too_long(self, block: CsvBlock, start: int, end: int) -> CsvFormatError:
        """The error for the record of ``block`` that runs on past ``end`` (its block's end) by
        more than ``max_record_bytes``; ``start``: the block's first record start."""
        plan = self.csv_plans[block.file]
        with plan.source.open(WINDOW) as handle:
            record = last_record_start(handle, start, end, plan.options.quote_byte)
        return too_long(plan.path, line_of(plan.source, record), plan.options.max_record_bytes)

    def _exec(self, items: Any) -> list[Any]:
        results = super()._exec(items)
        if any(isinstance(result, _BlockResult) for result in results):
            results = self._settle(results)
        report = self.csv_report
        values = []
        for result in results:
            parts: list[Any] = [result]
            if isinstance(result, _FileResult):  # a whole compressed file: its chunks
                report.ranges += len(result.parts) - 1
                parts = list(result.parts)
            for part in parts:
                if isinstance(part, _RangeResult):
                    report.rows += part.rows
                    report.skipped += part.skipped
                    room = MAX_REPORTED_LINES - len(report.skipped_lines)
                    report.skipped_lines.extend(part.skipped_lines[: max(room, 0)])
                    values.append(part.value)
                else:
                    values.append(part)
        return values


def _blocks(plan: CsvPlan, file: int) -> list[CsvItem]:
    """The file's nominal blocks, for workers to cut; the first starts on a record."""
    edges = blocks(plan.data_start, plan.size, plan.options.chunk_bytes)
    first = plan.data_start  # a record start, so outside quotes
    return [
        CsvBlock(0, start, end, file, None if start > first else False, start == first)
        for start, end in edges
    ]


def _whole_files(backend: Backend, compressed: int) -> bool:
    """Whether each compressed file is one item that its worker decompresses and runs chunk by
    chunk, rather than chunks the parent decompresses and hands out.

    On Dask always: the client must not read the data. Elsewhere when there are at least as
    many compressed files as workers: every worker then inflates a stream of its own and no
    decompressed bytes travel. Fewer files than workers (one big file) would leave workers
    idle, so there the parent inflates and the workers parse. With ISA-L the parent keeps up
    either way: on 32 gzip parts (1 GB, 2 workers, cold CLI, medians of 3) this mode took
    3.69 s against 3.85 s on processes and 3.03 s against 2.89 s on threads, the other mode
    measured by making this function return ``backend.name == "dask"``: about even."""
    if backend.name == "dask":
        return True
    return backend.parallel and compressed >= backend.workers


def _stream_ranges(plan: CsvPlan, file: int) -> Iterator[CsvRange]:
    """The records of a compressed file after its header, in chunks of about ``chunk_bytes``
    (decompressed here; each chunk travels to its worker with its bytes)."""
    options = plan.options
    try:
        with plan.source.open(STREAM_READ, readahead=True, ahead=STREAM_AHEAD) as raw:
            stream = open_decompressed(raw, plan.compression or "")
            chunks = record_chunks(
                stream,
                quote=options.quote_byte,
                chunk_bytes=options.chunk_bytes,
                max_record_bytes=options.max_record_bytes,
            )
            for chunk in chunks:
                # an Arrow buffer: a process worker gets it through shared memory, uncopied
                data, offset, line = chunk.data, chunk.offset, chunk.line
                if offset < plan.data_start:  # the first chunk: drop the BOM and the header
                    skip = plan.data_start - offset
                    header = memoryview(data)[:skip].tobytes()
                    data, offset, line = data[skip:], plan.data_start, line + header.count(b"\n")
                if len(data):
                    end = offset + len(data)
                    yield CsvRange(0, offset, end, line=line, file=file, data=data)
    except CompressedDataError as exc:
        raise exc.with_path(plan.path) from None
    except StreamRecordTooLong as exc:
        raise too_long(plan.path, exc.line, options.max_record_bytes) from None
    except UnterminatedQuote as exc:
        raise CsvFormatError(plan.path, exc.line, UNTERMINATED) from None


class _Prefetch(Iterator[T]):
    """``items`` made by a thread of their own, started at once and at most ``depth`` ahead of
    the consumer: the parent decompresses the next chunks, of this file and of the next few
    (pyarrow and zlib free the GIL), while it hands out work. ``close`` stops the thread."""

    def __init__(self, items: Iterator[T], depth: int = PREFETCH) -> None:
        self.items = items
        self.ready: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="batchcore-decompress")
        self.thread.daemon = True
        self.thread.start()

    def _put(self, entry: tuple[bool, Any]) -> bool:
        while not self.stop.is_set():
            try:
                self.ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self.items:
                if not self._put((True, item)):
                    return
            self._put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((False, exc))

    def __next__(self) -> T:
        more, value = self.ready.get()
        if more:
            item: T = value
            return item
        self.close()
        if value is not None:
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the thread (it finishes the chunk in hand) and close the source."""
        self.stop.set()
        self.thread.join()
        close = getattr(self.items, "close", None)
        if close is not None:
            close()


def _read_headers(sources: list[Source], options: CsvOptions) -> list[CsvPlan]:
    """Every file's header, in order; remote ones fetched 16 at a time (each is a round trip)."""
    if len(sources) == 1 or all(source.is_local for source in sources):
        return [read_header(source, options) for source in sources]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, len(sources)), thread_name_prefix="batchcore-head") as pool:
        return list(pool.map(lambda source: read_header(source, options), sources))
