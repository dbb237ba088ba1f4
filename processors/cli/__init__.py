"""The ``batchcore`` command: one parser, with ``csv ...`` (``cli/csv.py``) and ``images``
(``cli/images.py``) registered on it; exit codes and messages come from ``cli/errors.py``.

Each command sets ``handler`` to the function that runs it. Handlers import their heavy libraries
(pandas, pyarrow, Pillow) themselves, so ``batchcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import batchcore

from .csv import add_csv_commands
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    describe,
    exit_code,
    fail,
)
from .images import add_images_command
from .options import PROG

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The full ``batchcore`` parser: one subcommand per job family."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Batch jobs on batchcore: PocketFlow nodes on threads or processes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {batchcore.__version__}")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    add_csv_commands(commands)
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
    """Parse ``argv`` and run its command's handler, turning how it ended into an exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse already printed
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        with batchcore.use_backend(max_memory=getattr(args, "max_memory", None)):
            return handler(args)
    except CommandFailed as exc:  # its one line is already on stderr
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except batchcore.BatchcoreError as exc:  # never a traceback, wherever it was raised
        return fail(describe(exc), exit_code(exc) or EXIT_FAILED)
