"""``batchcore csv stats`` and ``batchcore csv to-parquet``: CSV files parsed in parallel by byte
range. pyarrow and pandas are imported by the handlers, so ``batchcore --help`` stays fast."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from batchcore.options import parse_size

from ..tables import format_table
from .errors import EXIT_OK, CommandFailed, fail, run_job
from .options import (
    PROG,
    add_batch_options,
    add_storage_options,
    plural,
    resume_note,
    show_progress,
    storage_options,
)

__all__ = ["add_csv_commands", "byte_size", "column_type", "format_csv_stats"]


def byte_size(text: str) -> int:
    """An argparse ``type`` for sizes: ``33554432``, ``32MiB``, ``50MB``, ``512M`` (the units of
    ``max_memory``: ``batchcore.options.parse_size``)."""
    try:
        return parse_size(text, "size", minimum=1)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# Names for delimiters that are awkward to type in a shell (a tab above all).
DELIMITER_NAMES = {
    "tab": "\t",
    "\\t": "\t",
    "comma": ",",
    "semicolon": ";",
    "pipe": "|",
    "space": " ",
}
# Smaller ranges only add per-range overhead (``--chunk-bytes 1`` took 42 s on a 430 KB file).
MIN_CHUNK_BYTES = 1 << 10  # 1 KiB: 0.8 s on the sample (16 MiB: 0.6 s; 1 byte: 40 s)
STDIN = "-"  # a PATH that means standard input


def delimiter(text: str) -> str:
    """An argparse ``type`` for ``--delimiter``: one character, or a name for one (``tab``,
    ``'\\t'`` as typed in a shell, ``comma``, ``semicolon``, ``pipe``, ``space``). Anything else
    is left to the CSV options to refuse, in one line."""
    return text if len(text) == 1 else DELIMITER_NAMES.get(text.lower(), text)


def column_type(text: str) -> tuple[str, str]:
    """An argparse ``type`` for ``COL=TYPE`` (a pyarrow type name: int64, float64, string...)."""
    name, sep, kind = text.partition("=")
    if not sep or not name or not kind:
        raise argparse.ArgumentTypeError(f"expected COL=TYPE, got {text!r}")
    return name, kind


INPUTS_HELP = (
    "CSV file, URL (s3://, gs://, az://, https://...), glob (quoted: 'logs/2024-*.csv'), "
    "folder of parts, or - for standard input; several are read as one file"
)


def add_csv_options(parser: argparse.ArgumentParser) -> None:
    """How to read the CSV: shared by ``csv stats`` and ``csv to-parquet``."""
    add_storage_options(parser)
    group = parser.add_argument_group("CSV options")
    group.add_argument(
        "--chunk-bytes",
        type=byte_size,
        default=16 << 20,
        metavar="SIZE",
        help="bytes per range a worker parses (default: 16MiB)",
    )
    group.add_argument(
        "--max-record-bytes",
        type=byte_size,
        default=None,  # CSVBatchNode's (read.MAX_RECORD_BYTES): --help does not import pyarrow
        metavar="SIZE",
        help="a longer record is an error naming its line (default: 4MiB)",
    )
    group.add_argument(
        "--delimiter",
        type=delimiter,
        default=",",
        metavar="C",
        help="field separator: one character, or tab ('\\t'), comma, semicolon, pipe, space "
        "(default: ,)",
    )
    quoting = group.add_mutually_exclusive_group()
    quoting.add_argument(
        "--quote-char",
        default='"',
        metavar="C",
        help='the character that quotes fields (default: ")',
    )
    quoting.add_argument(
        "--no-quoting",
        dest="quote_char",
        action="store_const",
        const=None,
        help="no character quotes fields: quotes are data",
    )
    group.add_argument("--encoding", default="utf-8", help="file encoding (default: utf-8)")
    group.add_argument(
        "--no-header",
        dest="header",
        action="store_false",
        help="the first row is data; columns are named f0, f1, ...",
    )
    group.add_argument(
        "--type",
        dest="types",
        action="append",
        type=column_type,
        default=[],
        metavar="COL=TYPE",
        help="a column's type instead of the one inferred from the first rows",
    )
    group.add_argument(
        "--null",
        dest="null_values",
        action="append",
        metavar="TEXT",
        help="a value that means missing; repeat for more (default: pyarrow's)",
    )
    group.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="skip rows with the wrong number of fields (counted and reported)",
    )


def csv_options(args: argparse.Namespace) -> dict[str, Any]:
    """The CSV job's keyword options from the command line. A ``--chunk-bytes`` below
    ``MIN_CHUNK_BYTES`` is raised to it, with a note on stderr."""
    chunk_bytes = args.chunk_bytes
    if chunk_bytes < MIN_CHUNK_BYTES:
        print(
            f"{PROG}: note: --chunk-bytes {chunk_bytes} is below {MIN_CHUNK_BYTES // 1024}KiB; "
            f"using {MIN_CHUNK_BYTES // 1024}KiB (smaller ranges only add per-range overhead)",
            file=sys.stderr,
        )
        chunk_bytes = MIN_CHUNK_BYTES
    return {
        "chunk_bytes": chunk_bytes,
        "delimiter": args.delimiter,
        "quote_char": args.quote_char,
        "encoding": args.encoding,
        "header": args.header,
        "column_types": dict(args.types) or None,
        "null_values": args.null_values,
        "bad_rows": "skip" if args.skip_bad_rows else "error",
        "backend": args.backend,
        "workers": args.workers,
        "progress": show_progress(args),
        "storage_options": storage_options(args) or None,
    } | ({"max_record_bytes": args.max_record_bytes} if args.max_record_bytes else {})


def add_csv_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    csv_parser = commands.add_parser(
        "csv",
        help="statistics and Parquet conversion of CSV files",
        description="Jobs on CSV files, parsed in parallel by byte range with pyarrow.",
    )
    csv_commands = csv_parser.add_subparsers(
        title="csv commands", dest="csv_command", metavar="COMMAND", required=True
    )
    add_csv_stats(csv_commands)
    add_csv_to_parquet(csv_commands)


def add_csv_stats(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "stats",
        help="row count and sum/count/mean/min/max of numeric columns",
        description=(
            "Count the rows of PATH and, for each --sum column, its sum, count of non-missing "
            "values, mean, min and max; with --group-by, the same per key. Missing values are "
            "skipped in sums and counted in rows."
        ),
    )
    parser.add_argument("paths", metavar="PATH", nargs="+", help=INPUTS_HELP)
    parser.add_argument(
        "--sum",
        dest="sums",
        action="append",
        default=[],
        metavar="COL",
        help="numeric column to total; repeat for more",
    )
    parser.add_argument("--group-by", metavar="KEY", help="also give the statistics per KEY value")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print exactly one JSON object on stdout instead of tables",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep a journal of finished ranges (under ~/.cache/batchcore, named in the output); "
        "a rerun with --resume runs only the others",
    )
    add_csv_options(parser)
    add_batch_options(parser)
    parser.set_defaults(handler=run_csv_stats)


def add_csv_to_parquet(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "to-parquet",
        help="convert a CSV file to a Parquet dataset, one part per range",
        description=(
            "Write PATH as a Parquet dataset in OUT_DIR: one part file per range, the same schema "
            "in every part, _SUCCESS last. The dataset is built in a hidden folder beside OUT_DIR "
            "and swapped in whole when complete, so a failed or killed run leaves OUT_DIR as it "
            "was. A second run writing OUT_DIR at the same time is refused (exit 2)."
        ),
    )
    parser.add_argument("paths", metavar="PATH", nargs="+", help=INPUTS_HELP)
    parser.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        help="folder for the dataset, or a URL prefix (s3://bucket/ds/: each part one PUT, "
        "_SUCCESS naming them written last)",
    )
    parser.add_argument(
        "--columns",
        type=lambda text: text.split(","),
        metavar="COL,COL",
        help="write only these columns (default: all)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset already in OUT_DIR (kept until the new one is complete)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep a killed or failed run's parts and a journal of them; a rerun with --resume "
        "writes only the other parts (and does nothing if OUT_DIR is complete)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_csv_options(parser)
    add_batch_options(parser)
    parser.set_defaults(handler=run_csv_to_parquet)


@contextmanager
def stdin_spooled(args: argparse.Namespace) -> Iterator[str | None]:
    """With ``-`` among the PATHs, standard input is copied to a temporary file first (a CSV is
    cut into byte ranges, which a pipe cannot be), read in its place, and removed afterwards;
    yields that file's name (``None`` without ``-``)."""
    if STDIN not in args.paths:
        yield None
        return
    if getattr(args, "resume", False):
        raise CommandFailed(fail("--resume needs files: standard input (-) cannot be reread", 2))
    import os
    import shutil
    import tempfile

    given = list(args.paths)
    handle = tempfile.NamedTemporaryFile(prefix="batchcore-stdin-", suffix=".csv", delete=False)
    try:
        with handle:
            shutil.copyfileobj(sys.stdin.buffer, handle, 1 << 20)
        args.paths = [handle.name if path == STDIN else path for path in given]
        yield handle.name
    finally:
        args.paths = given
        os.unlink(handle.name)


def run_csv_stats(args: argparse.Namespace) -> int:
    """``batchcore csv stats``: statistics of one CSV file, as tables or one JSON object;
    ``-`` reads standard input."""
    with stdin_spooled(args) as spooled:
        return _run_csv_stats(args, spooled)


def _run_csv_stats(args: argparse.Namespace, spooled: str | None) -> int:
    import time

    from ..csv.jobs import csv_stats  # pyarrow loads here, not for --help

    began = time.perf_counter()
    options = csv_options(args)
    if args.resume:
        options["checkpoint"] = stats_journal(args, options)
    stats = run_job(
        lambda: csv_stats(inputs(args), args.sums, group_by=args.group_by, **options),
        where(args),
    )
    seconds = time.perf_counter() - began
    if spooled is not None:  # name standard input as the user did, not our temporary file
        stats.path = stats.path.replace(spooled, STDIN)
        stats.files = [STDIN if file == spooled else file for file in stats.files]
    if args.resume:
        note = resume_note(stats.checkpoint, stats.resumed, stats.resumed + stats.ran, "ranges")
        print(note, file=sys.stderr)
    if args.json:
        report = stats.as_json()
        report.update(backend=stats.backend, backend_reason=stats.backend_reason)
        report["seconds"] = round(seconds, 6)
        print(json.dumps(finite(report), allow_nan=False, default=str))
    else:
        print(format_csv_stats(stats, seconds, stats.backend, stats.backend_reason))
    print_skipped(stats.skipped_lines)
    return EXIT_OK


def stats_journal(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    """The journal of ``csv stats --resume``: one per job (inputs, columns, CSV options)."""
    import os

    from ..resume import cache_journal
    from ..storage import is_url

    paths = [path if is_url(path) else os.path.abspath(path) for path in args.paths]
    ignored = ("backend", "workers", "progress", "storage_options")  # they change no result
    settings = {key: value for key, value in options.items() if key not in ignored}
    job = {"inputs": paths, "sums": args.sums, "group_by": args.group_by, **settings}
    return cache_journal("csv-stats", job)


def inputs(args: argparse.Namespace) -> str | list[str]:
    """The PATH arguments: one, or a list read as one file."""
    paths: list[str] = args.paths
    return paths[0] if len(paths) == 1 else paths


def where(args: argparse.Namespace) -> str:
    """The inputs as errors that name no file are prefixed with."""
    return ", ".join(args.paths)


def print_skipped(lines: list[tuple[str, int]]) -> None:
    """One stderr line per reported bad row that was skipped."""
    for path, line in lines:
        print(f"{PROG}: skipped bad row at {path}:{line}", file=sys.stderr)


def skipped_note(rows: int) -> str:
    """``"; N bad rows skipped"`` for a summary line, or nothing."""
    return f"; {plural(rows, 'bad row')} skipped" if rows else ""


def finite(value: Any) -> Any:
    """``value`` with infinities and NaN spelled as strings, so the output stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def format_csv_stats(stats: Any, seconds: float, backend: str, reason: str = "") -> str:
    """The human-readable ``csv stats`` output: a summary line and aligned tables."""
    why = f", {reason}" if reason else ""
    lines = [
        f"{stats.path}: {plural(stats.rows, 'row')} in {seconds:.2f} s ({backend} backend{why})"
        + skipped_note(stats.skipped_rows)
    ]
    rows: list[list[str]] = []
    for name, column in stats.columns.items():
        rows.append([name, *_numbers(column)])
    if rows:
        lines += ["", *format_table(["column", "sum", "count", "mean", "min", "max"], rows)]
    if stats.group_by is not None:
        grouped: list[list[str]] = []
        for key, group in sorted(stats.groups.items(), key=lambda kv: str(kv[0])):
            if not group.columns:
                grouped.append([str(key), f"{group.rows:,}", "", "", "", "", "", ""])
            for name, column in group.columns.items():
                grouped.append([str(key), f"{group.rows:,}", name, *_numbers(column)])
        header = [stats.group_by, "rows", "column", "sum", "count", "mean", "min", "max"]
        lines += ["", *format_table(header, grouped)]
    return "\n".join(lines)


def _numbers(column: Any) -> list[str]:
    def show(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.2f}"
        return f"{value:,}"

    return [
        show(column.sum),
        f"{column.count:,}",
        show(column.mean),
        show(column.min),
        show(column.max),
    ]


def run_csv_to_parquet(args: argparse.Namespace) -> int:
    """``batchcore csv to-parquet``: convert, then print a one-line (or JSON) summary; ``-``
    reads standard input."""
    with stdin_spooled(args):
        return _run_csv_to_parquet(args)


def _run_csv_to_parquet(args: argparse.Namespace) -> int:
    from ..csv.jobs import csv_to_parquet

    options = csv_options(args)
    options["columns"] = args.columns
    result = run_job(
        lambda: csv_to_parquet(
            inputs(args), args.out_dir, overwrite=args.overwrite, resume=args.resume, **options
        ),
        where(args),
    )
    if result.get("complete"):  # --resume on a finished dataset: _SUCCESS's summary
        print(
            f"{PROG}: {args.out_dir} is complete already (_SUCCESS): nothing was run; "
            "--overwrite rewrites it",
            file=sys.stderr,
        )
        rows = plural(result["rows"], "row")
        print(json.dumps(result) if args.json else f"{args.out_dir}: {rows}")
        return EXIT_OK
    if result["resumed"]:
        note = resume_note("the interrupted run", result["resumed"], result["parts"], "parts")
        print(note, file=sys.stderr)
    if args.json:
        summary = {key: value for key, value in result.items() if key != "schema"}
        summary["schema"] = {field.name: str(field.type) for field in result["schema"]}
        summary["skipped_lines"] = [
            {"file": file, "line": line} for file, line in result["skipped_lines"]
        ]
        print(json.dumps(summary))
    else:
        print(
            f"{args.out_dir}: {plural(result['rows'], 'row')} in {plural(result['parts'], 'part')}"
            + skipped_note(result["skipped_rows"])
        )
    print_skipped(result["skipped_lines"])
    return EXIT_OK
