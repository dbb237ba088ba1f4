"""What every ``batchcore`` command shares: the program name, argparse types and batch options."""

from __future__ import annotations

import argparse
import sys

import batchcore
from batchcore.options import parse_size

__all__ = [
    "PROG",
    "add_batch_options",
    "add_storage_options",
    "memory_size",
    "positive_int",
    "resume_note",
    "show_progress",
    "storage_options",
]

PROG = "batchcore"


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def memory_size(text: str) -> int:
    """An argparse ``type`` for sizes: ``2GiB``, ``512M``, ``1.5GB`` or bytes (``parse_size``)."""
    try:
        return parse_size(text, "--max-memory")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--max-memory ")) from None


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--workers``, ``--max-memory`` and ``--progress``: shared by every job that
    runs a batch (``--max-memory`` reaches it as a scoped default: ``use_backend``)."""
    group = parser.add_argument_group("batch options")
    group.add_argument(
        "--backend",
        choices=["auto", *batchcore.available_backends()],
        default="auto",
        help="where chunks run (default: %(default)s: sequential for one range or image, "
        "else threads, since parsing and filtering release the GIL)",
    )
    group.add_argument(
        "--workers", type=positive_int, metavar="N", help="workers (default: one per CPU)"
    )
    group.add_argument(
        "--max-memory",
        type=memory_size,
        metavar="SIZE",
        help="stop a worker process that holds more than SIZE of RAM (e.g. 2GiB, 512M): its "
        "item fails, naming the cap, and the rest go on; runs items in processes (default: "
        "no cap)",
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """``--progress``/``--no-progress``, else whether stderr is a terminal."""
    if args.progress is None:
        return sys.stderr.isatty()
    return bool(args.progress)


def storage_option(text: str) -> tuple[list[str], object]:
    """An argparse ``type`` for ``KEY=VALUE`` (``batchcore.processors.storage``'s rules)."""
    from ..storage import parse_storage_option

    try:
        return parse_storage_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    """``--storage-option KEY=VALUE``: options for the filesystem of URL inputs and outputs."""
    parser.add_argument(
        "--storage-option",
        dest="storage_options",
        type=storage_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option for URL inputs and outputs, passed to fsspec (e.g. "
        "endpoint_url=http://127.0.0.1:9000 for an S3-compatible server, anon=true, "
        "client_kwargs.region_name=eu-west-1); repeat for more. Credentials are better given "
        "the provider's way (environment variables, config files)",
    )


def storage_options(args: argparse.Namespace) -> dict[str, object]:
    """The ``--storage-option`` values as one nested dict."""
    options: dict[str, object] = {}
    for keys, value in args.storage_options:
        where = options
        for key in keys[:-1]:
            inner = where.setdefault(key, {})
            if not isinstance(inner, dict):
                raise argparse.ArgumentTypeError(f"--storage-option {key} is not a group")
            where = inner
        where[keys[-1]] = value
    return options


def plural(count: int, noun: str) -> str:
    """``count`` (with thousands separators) and ``noun``, plural unless ``count`` is 1:
    ``1 part``, ``2 parts``, ``1 bad row``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def resume_note(source: str, resumed: int, total: int, what: str) -> str:
    """The stderr line of a ``--resume`` run: how much came from ``source`` (its journal)."""
    if not resumed:
        return f"{PROG}: finished {what} are recorded in {source}, for a rerun with --resume"
    if resumed == total:
        return f"{PROG}: all {total:,} {what} came from {source}: nothing was run"
    return f"{PROG}: {resumed:,} of {total:,} {what} came from {source}; the rest were run"
