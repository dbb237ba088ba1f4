"""The ``batchcore`` command: ``batchcore csv stats PATH --sum COL ...``; more jobs slot in later.

Each job is a subcommand that registers its parser in ``add_*_commands`` and sets ``handler`` to
the function that runs it. Handlers import their heavy libraries (pandas) themselves, so
``batchcore --help`` stays fast. Exit codes: 0 ok, 1 bad data or failed items, 2 usage (bad
arguments, missing file, unknown column), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import batchcore

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that stopped early
PROG = "batchcore"

Handler = Callable[[argparse.Namespace], int]


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def fail(message: str, code: int) -> int:
    """Print one line ``batchcore: error: ...`` on stderr and return ``code``."""
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--workers`` and ``--progress``: shared by every job that runs a batch."""
    group = parser.add_argument_group("batch options")
    group.add_argument(
        "--backend",
        choices=batchcore.available_backends(),
        default="sequential",
        help="where chunks run (default: %(default)s)",
    )
    group.add_argument(
        "--workers", type=positive_int, metavar="N", help="workers (default: one per CPU)"
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    if args.progress is None:
        return sys.stderr.isatty()
    return bool(args.progress)


# --- csv ------------------------------------------------------------------------------------

SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def byte_size(text: str) -> int:
    """An argparse ``type`` for sizes: ``33554432``, ``32MiB``, ``50MB``."""
    number = text.strip().upper().rstrip()
    unit = number.lstrip("0123456789.")
    digits = number[: len(number) - len(unit)]
    try:
        value = float(digits) * SIZE_UNITS[unit.strip()]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"expected a size such as 32MiB or 50MB, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return int(value)


def column_type(text: str) -> tuple[str, str]:
    """An argparse ``type`` for ``COL=TYPE`` (a pyarrow type name: int64, float64, string...)."""
    name, sep, kind = text.partition("=")
    if not sep or not name or not kind:
        raise argparse.ArgumentTypeError(f"expected COL=TYPE, got {text!r}")
    return name, kind


def add_csv_options(parser: argparse.ArgumentParser) -> None:
    """How to read the CSV: shared by ``csv stats`` and ``csv to-parquet``."""
    group = parser.add_argument_group("CSV options")
    group.add_argument(
        "--chunk-bytes",
        type=byte_size,
        default=16 << 20,
        metavar="SIZE",
        help="bytes per range a worker parses (default: 16MiB)",
    )
    group.add_argument("--delimiter", default=",", metavar="C", help="field separator (default: ,)")
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
    return {
        "chunk_bytes": args.chunk_bytes,
        "delimiter": args.delimiter,
        "encoding": args.encoding,
        "header": args.header,
        "column_types": dict(args.types) or None,
        "null_values": args.null_values,
        "bad_rows": "skip" if args.skip_bad_rows else "error",
        "backend": args.backend,
        "workers": args.workers,
        "progress": show_progress(args),
    }


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
    parser.add_argument("path", metavar="PATH", help="CSV file")
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
    add_csv_options(parser)
    add_batch_options(parser)
    parser.set_defaults(handler=run_csv_stats)


def add_csv_to_parquet(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "to-parquet",
        help="convert a CSV file to a Parquet dataset, one part per range",
        description=(
            "Write PATH as a Parquet dataset in OUT_DIR: one part file per range, the same schema "
            "in every part, each written under a temporary name and renamed when complete; "
            "_SUCCESS is written last."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="CSV file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for the dataset")
    parser.add_argument(
        "--columns",
        type=lambda text: text.split(","),
        metavar="COL,COL",
        help="write only these columns (default: all)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset already in OUT_DIR"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_csv_options(parser)
    add_batch_options(parser)
    parser.set_defaults(handler=run_csv_to_parquet)


def run_csv_job(args: argparse.Namespace, job: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``job`` and map its failures to one line on stderr and an exit code."""
    from .csv_read import CsvFormatError, UnknownColumnError

    try:
        return EXIT_OK, job()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        return fail(f"{exc.filename}: {exc.strerror}", EXIT_USAGE), None
    except UnknownColumnError as exc:
        return fail(str(exc), EXIT_USAGE), None
    except CsvFormatError as exc:
        return fail(str(exc), EXIT_DATA), None
    except (TypeError, ValueError) as exc:  # options rejected before any work (bad --type, ...)
        if isinstance(exc, batchcore.BatchcoreError):
            raise
        return fail(str(exc), EXIT_USAGE), None
    except OSError as exc:
        return fail(f"{args.path}: cannot read: {exc.strerror or exc}", EXIT_DATA), None
    except batchcore.BatchcoreError as exc:
        return fail(f"{args.path}: {type(exc).__name__}: {exc}", EXIT_DATA), None
    finally:
        batchcore.shutdown()  # stop worker processes now rather than at interpreter exit


def run_csv_stats(args: argparse.Namespace) -> int:
    """``batchcore csv stats``: statistics of one CSV file, as tables or one JSON object."""
    import time

    from .csv_jobs import csv_stats  # pyarrow loads here, not for --help

    began = time.perf_counter()
    code, stats = run_csv_job(
        args, lambda: csv_stats(args.path, args.sums, group_by=args.group_by, **csv_options(args))
    )
    if code != EXIT_OK:
        return code
    seconds = time.perf_counter() - began
    if args.json:
        report = stats.as_json()
        report.update(backend=args.backend, seconds=round(seconds, 6))
        print(json.dumps(finite(report), allow_nan=False, default=str))
    else:
        print(format_csv_stats(stats, seconds, args.backend))
    print_skipped(args.path, stats.skipped_lines)
    return EXIT_OK


def print_skipped(path: str, lines: list[int]) -> None:
    """One stderr line per reported bad row that was skipped."""
    for line in lines:
        print(f"{PROG}: skipped bad row at {path}:{line}", file=sys.stderr)


def skipped_note(rows: int) -> str:
    """``"; N bad rows skipped"`` for a summary line, or nothing."""
    return f"; {rows:,} bad rows skipped" if rows else ""


def finite(value: Any) -> Any:
    """``value`` with infinities and NaN spelled as strings, so the output stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def format_csv_stats(stats: Any, seconds: float, backend: str) -> str:
    """The human-readable ``csv stats`` output: a summary line and aligned tables."""
    lines = [
        f"{stats.path}: {stats.rows:,} rows in {seconds:.2f} s ({backend} backend)"
        + skipped_note(stats.skipped_rows)
    ]
    rows: list[list[str]] = []
    for name, column in stats.columns.items():
        rows.append([name, *_numbers(column)])
    if rows:
        lines += ["", *_table(["column", "sum", "count", "mean", "min", "max"], rows)]
    if stats.group_by is not None:
        grouped: list[list[str]] = []
        for key, group in sorted(stats.groups.items(), key=lambda kv: str(kv[0])):
            if not group.columns:
                grouped.append([str(key), f"{group.rows:,}", "", "", "", "", "", ""])
            for name, column in group.columns.items():
                grouped.append([str(key), f"{group.rows:,}", name, *_numbers(column)])
        header = [stats.group_by, "rows", "column", "sum", "count", "mean", "min", "max"]
        lines += ["", *_table(header, grouped)]
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


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(w)
            if i == 0 or (not row[i][:1].isdigit() and row[i][:1] != "-")
            else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def run_csv_to_parquet(args: argparse.Namespace) -> int:
    """``batchcore csv to-parquet``: convert, then print a one-line (or JSON) summary."""
    from .csv_jobs import csv_to_parquet

    options = csv_options(args)
    options["columns"] = args.columns
    code, result = run_csv_job(
        args, lambda: csv_to_parquet(args.path, args.out_dir, overwrite=args.overwrite, **options)
    )
    if code != EXIT_OK:
        return code
    if args.json:
        summary = {key: value for key, value in result.items() if key != "schema"}
        summary["schema"] = {field.name: str(field.type) for field in result["schema"]}
        print(json.dumps(summary))
    else:
        print(
            f"{args.out_dir}: {result['rows']:,} rows in {result['parts']} parts"
            + skipped_note(result["skipped_rows"])
        )
    print_skipped(args.path, result["skipped_lines"])
    return EXIT_OK


# --- the command ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``batchcore`` parser: one subparser per job family (``csv`` for now)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Batch jobs on batchcore: PocketFlow nodes on threads or processes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {batchcore.__version__}")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    add_csv_commands(commands)
    from .images_cli import add_images_command  # imports .cli itself, so not at the top

    add_images_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``batchcore`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        return run(argv)
    except BrokenPipeError:
        # stdout went away (``batchcore ... | head``): no traceback, and Python's own flush at
        # exit must not fail again, so point stdout at /dev/null (as the Python docs advise).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse already printed
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
