"""The ``batchcore`` command: ``batchcore csv stats PATH --sum COL ...``; more jobs slot in later.

Each job is a subcommand that registers its parser in ``add_*_commands`` and sets ``handler`` to
the function that runs it. Handlers import their heavy libraries (pandas) themselves, so
``batchcore --help`` stays fast. Exit codes: 0 ok, 1 bad data or failed items, 2 usage (bad
arguments, missing file, unknown column), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import batchcore

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PROG = "batchcore"
CSV_CHUNK_ROWS = 100_000

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


def add_csv_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    csv_parser = commands.add_parser(
        "csv", help="statistics of CSV files", description="Jobs on CSV files."
    )
    csv_commands = csv_parser.add_subparsers(
        title="csv commands", dest="csv_command", metavar="COMMAND", required=True
    )
    add_csv_stats(csv_commands)


def add_csv_stats(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "stats",
        help="row count and sum/count/mean/min/max of numeric columns",
        description=(
            "Read PATH in chunks and print the row count and, for each --sum column, its sum, "
            "count of non-missing values, mean, min and max. Missing values are skipped."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="CSV file with a header row")
    parser.add_argument(
        "--sum",
        dest="columns",
        action="append",
        metavar="COL",
        help="numeric column to total; repeat for more (default: amount)",
    )
    parser.add_argument(
        "--chunk-rows",
        type=positive_int,
        default=CSV_CHUNK_ROWS,
        metavar="N",
        help="rows per chunk (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    add_batch_options(parser)
    parser.set_defaults(handler=run_csv_stats)


def run_csv_stats(args: argparse.Namespace) -> int:
    """``batchcore csv stats``: run the seed's chunked statistics flow and print the result."""
    from . import seed_csv  # pandas loads here, not for --help

    columns: list[str] = args.columns or ["amount"]
    try:
        statistics, batch, seconds = seed_csv.run_sales_stats(
            args.path,
            columns,
            backend=args.backend,
            workers=args.workers,
            chunk_rows=args.chunk_rows,
            progress=show_progress(args),
        )
    except (FileNotFoundError, IsADirectoryError) as exc:
        return fail(f"{exc.filename}: {exc.strerror}", EXIT_USAGE)
    except seed_csv.UnknownColumnError as exc:
        return fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return fail(f"{args.path}: cannot read: {exc.strerror or exc}", EXIT_DATA)
    except seed_csv.DataError as exc:
        return fail(str(exc), EXIT_DATA)
    except batchcore.BatchcoreError as exc:
        return fail(f"{args.path}: {type(exc).__name__}: {exc}", EXIT_DATA)
    finally:
        batchcore.shutdown()  # stop worker processes now rather than at interpreter exit

    if args.json:
        report: dict[str, Any] = {
            "rows": statistics["rows"],
            "sum": {name: stats["sum"] for name, stats in statistics["columns"].items()},
            "columns": statistics["columns"],
            "backend": batch.backend,
            "workers": batch.workers,
            "seconds": round(seconds, 6),
        }
        print(json.dumps(report, allow_nan=False))
    else:
        print(seed_csv.format_stats(statistics))
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``batchcore`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
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
