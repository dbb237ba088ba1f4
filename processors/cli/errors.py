"""The one mapping from an exception to an exit code and a one-line message, for every command.

==========  ===========================================================================
exit code   when
==========  ===========================================================================
0           success
1           some items failed, bad data (``DataError``), any other ``BatchcoreError``,
            an I/O error (disk full, ...)
2           usage: bad arguments (argparse), ``UsageError``, a path or URL that cannot be
            used (missing, wrong kind, already there, not permitted: access denied, a
            read-only file system), an
            option's ``ValueError``/``TypeError``, a missing extra (``ImportError`` with its
            ``pip install`` hint)
130         interrupted (Ctrl-C)
141         stdout closed early (``batchcore ... | head``)
143         terminated (SIGTERM, as a supervisor stops a job): stopped as for Ctrl-C
==========  ===========================================================================

Anything else is a bug, and its traceback is the useful report.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import TypeVar

import batchcore

from ..errors import DataError, FilterError, ImageWriteError, UsageError
from ..storage_errors import StorageError, StorageNotFoundError, StoragePermissionError
from .options import PROG

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "CommandFailed",
    "Terminated",
    "describe",
    "exit_code",
    "fail",
    "run_job",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that stopped early
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a job stopped by SIGTERM

# OSErrors that say the path given cannot be used as given: a usage error, not a failure.
PATH_ERRORS = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    PermissionError,
)
# Our own errors already name their file; batchcore's core errors get the command's input.
NAMED_ERRORS = (UsageError, DataError, FilterError, ImageWriteError, StorageError)

T = TypeVar("T")


class CommandFailed(Exception):
    """A command stopped with ``code`` after printing its one-line error."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised in the main thread so the job stops exactly as for Ctrl-C (workers
    stopped, temporary files removed), then exits with ``EXIT_TERMINATED``."""


def exit_code(exc: BaseException) -> int | None:
    """The exit code for ``exc`` (table above), or ``None`` when it is a bug to show in full."""
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, UsageError | StorageNotFoundError | StoragePermissionError):
        return EXIT_USAGE  # a URL that cannot be used as given, like a missing path
    if isinstance(exc, batchcore.BatchcoreError):
        return EXIT_FAILED
    if isinstance(exc, BrokenPipeError):
        return None  # ``main`` turns it into EXIT_BROKEN_PIPE, quietly
    if isinstance(exc, PATH_ERRORS) or (isinstance(exc, OSError) and exc.errno == errno.EROFS):
        return EXIT_USAGE
    if isinstance(exc, OSError):
        return EXIT_FAILED
    if isinstance(exc, ValueError | TypeError):  # options rejected before any work
        return EXIT_USAGE
    if isinstance(exc, ImportError) and "pip install" in str(exc):
        return EXIT_USAGE  # an optional extra not installed (--backend dask): its hint says which
    return None


def describe(exc: BaseException, where: str | None = None) -> str:
    """One line for ``exc``; ``where`` (the command's input) prefixes errors that name no file."""
    prefix = f"{where}: " if where else ""
    if isinstance(exc, NAMED_ERRORS):
        return str(exc)
    if isinstance(exc, batchcore.BatchcoreError):
        return f"{prefix}{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror or exc}"
        return f"{prefix}{exc.strerror or exc}"
    return str(exc)


def fail(message: str, code: int) -> int:
    """Print one line ``batchcore: error: ...`` on stderr and return ``code``."""
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def run_job(job: Callable[[], T], where: str | None) -> T:
    """Run ``job`` and stop its worker processes; an error with an exit code becomes one line on
    stderr and ``CommandFailed``. Ctrl-C and bugs go on up."""
    try:
        return job()
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        fail(describe(exc, where), code)
        raise CommandFailed(code) from None
    finally:
        batchcore.shutdown()  # now rather than at interpreter exit
