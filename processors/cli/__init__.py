"""The ``batchcore`` command: one parser, with ``csv ...`` (``cli/csv.py``) and ``images``
(``cli/images.py``) registered on it; exit codes and messages come from ``cli/errors.py``.

Each command sets ``handler`` to the function that runs it. Handlers import their heavy libraries
(pandas, pyarrow, Pillow) themselves, so ``batchcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import batchcore
from batchcore.backends.base import default_workers

from .csv import add_csv_commands
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    CommandFailed,
    Terminated,
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


# The commands do no linear algebra, but numpy's OpenBLAS starts a thread per core when numpy
# is imported, which spins while it waits: ~0.2 of the 4.8 CPU seconds of a 1 GB gzip CSV job,
# taken from the parse on 2 cores. A user's own setting is kept.
BLAS_THREADS = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main(argv: list[str] | None = None) -> int:
    """Run ``batchcore`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    if "numpy" not in sys.modules:
        for name, value in BLAS_THREADS.items():
            os.environ.setdefault(name, value)
    try:
        with sigterm_stops():
            return run(argv)
    except BrokenPipeError:
        # stdout went away (``batchcore ... | head``): no traceback, and Python's own flush at
        # exit must not fail again, so point stdout at /dev/null (as the Python docs advise).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) in the main
    thread, so a supervisor's stop is as clean as Ctrl-C; a second SIGTERM is ignored rather than
    cutting that cleanup short. Outside the main thread, signals cannot be handled: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def remove_stopped_writes(args: argparse.Namespace) -> None:
    """After Ctrl-C or SIGTERM, remove the temporary files the command's stopped workers left in
    its output folder: a worker stopped mid-write may die before its own cleanup runs. Files of a
    writer still alive (this process's abandoned threads, another run) are kept."""
    from ..files import remove_stale_temps

    for name in ("out", "out_dir"):  # the images and ``csv to-parquet`` output folders
        folder = getattr(args, name, None)
        if isinstance(folder, str) and os.path.isdir(folder):
            for path, _, _ in os.walk(folder):
                remove_stale_temps(Path(path))


def start_pool_early(args: argparse.Namespace) -> None:
    """With ``--backend process``, start the worker pool before the handler imports numpy and
    pyarrow: the pool's zygote imports them on another core meanwhile, and the workers are ready
    when the first batch starts instead of ~0.3 s later. For CSV inputs by URL the zygote also
    imports the store's client (as the CSV node would ask); a job that needs fewer workers than
    the CPUs (fewer ranges or images) has its pool fitted down when its batch starts."""
    if getattr(args, "backend", None) != "process":
        return
    inputs: list[str] = [*getattr(args, "paths", ()), *getattr(args, "src", ())]
    outputs = [getattr(args, name, None) or "" for name in ("out", "out_dir")]
    if "-" in inputs or any("://" in place for place in outputs):
        return  # standard input is spooled first; a URL output's writers need its client too
    remote = any("://" in place for place in inputs)
    # What each worker would import at its first item (the job's node, its libraries): the
    # zygote imports them once, while the command still plans, not each worker on the clock.
    imports: list[str] = []
    if args.command == "images":
        if remote:
            return  # the image job's workers import the store's client themselves
        imports = ["PIL.Image", "batchcore.processors.images.jobs"]
    else:
        imports = ["batchcore.processors.csv.jobs"]
        imports += ["pyarrow.parquet"] if args.csv_command == "to-parquet" else []
    if remote and args.command == "csv":
        from ..storage import reader_modules
        from .options import storage_options

        try:
            imports += reader_modules(inputs, storage_options(args))
        except Exception:  # a bad --storage-option: the handler says what is wrong
            return
    # No more workers than CPUs yet: a batch with more items and workers grows the pool.
    batchcore.get_backend("process", args.workers).start(imports, items=default_workers())


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
            start_pool_early(args)
            return handler(args)
    except CommandFailed as exc:  # its one line is already on stderr
        return exc.code
    except KeyboardInterrupt as stop:
        remove_stopped_writes(args)
        if isinstance(stop, Terminated):
            print(f"{PROG}: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except batchcore.BatchcoreError as exc:  # never a traceback, wherever it was raised
        return fail(describe(exc), exit_code(exc) or EXIT_FAILED)
