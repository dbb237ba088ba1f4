"""``batchcore images SRC -o OUT -f FILTER ...``: batch image filtering on any backend.

Writes ``OUT/<relative folder>/<stem>_<filter>.<ext>`` for every image under SRC and every
``-f``, with every frame of an animation or multi-page TIFF. Prints one line per failed job on
stderr, one per output whose format could not hold every frame (or their timing), then a
summary (or one JSON object with ``--json``, whose ``dropped`` lists the latter). Exit codes
(``errors``): 0 every job succeeded, 1 some failed (all the others were written), 2 usage
(bad filter, no images, an output path that leaves OUT...), 130 interrupted.
SRC and OUT may be URLs (``s3://bucket/photos/``, ``--storage-option KEY=VALUE`` for the store):
workers read their own objects and write each output in one PUT.
Pillow is imported by the handler, not here, so ``batchcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, run_job
from .options import (
    PROG,
    add_batch_options,
    add_storage_options,
    positive_int,
    resume_note,
    show_progress,
    storage_options,
)

__all__ = ["add_images_command", "format_filters", "run_images_command"]

# images.io.FORMATS' keys, written out so --help does not import Pillow (a test keeps them equal).
FORMAT_CHOICES = ("bmp", "gif", "jpeg", "jpg", "png", "tif", "tiff", "webp")
DEFAULT_QUALITY = 90  # images.io.DEFAULT_QUALITY
DEFAULT_MAX_PIXELS = 89_478_485  # images.io.DEFAULT_MAX_PIXELS: Pillow's own default


def quality(text: str) -> int:
    """An argparse ``type`` for ``--quality``: a whole number from 1 to 100."""
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be from 1 to 100, got {value}")
    return value


def add_images_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``batchcore images`` on the top-level subcommands."""
    parser = commands.add_parser(
        "images",
        help="apply image filters to every image in a folder",
        description=(
            "Apply each -f filter chain to every image under SRC (recursively: jpg, jpeg, png, "
            "webp, tif, tiff, bmp, gif; hidden files skipped), writing "
            "OUT/<relative folder>/<stem>_<filter>.<ext>. A filter is NAME or "
            "NAME:KEY=VALUE,KEY=VALUE; chain filters with | (one output per chain; in the file "
            "name | becomes - and blur:radius=3 becomes blur-radius3). Each image is decoded "
            "once for all its filters, EXIF orientation applied; outputs are written atomically."
        ),
    )
    parser.add_argument(
        "src",
        metavar="SRC",
        nargs="*",
        help="an image, a folder of images, a glob (quoted: 'photos/2024-*/*.jpg'), or a URL "
        "(s3://bucket/photos/: listed recursively; each worker reads its own objects); "
        "several are one run",
    )
    parser.add_argument(
        "-o",
        "--out",
        metavar="OUT",
        help="output folder (created if needed), or a URL prefix (each output one PUT)",
    )
    parser.add_argument(
        "-f",
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="FILTER",
        help="a filter or chain, e.g. grayscale, blur:radius=3, 'grayscale|blur'; repeat for more",
    )
    parser.add_argument(
        "--list-filters",
        action="store_true",
        help="list the filters with their parameters and defaults, then exit",
    )
    parser.add_argument(
        "--format",
        dest="fmt",
        type=lambda text: text.lower().lstrip("."),
        choices=FORMAT_CHOICES,
        metavar="EXT",
        help="output format for every image (default: the input's); one of "
        + ", ".join(FORMAT_CHOICES),
    )
    parser.add_argument(
        "--quality",
        type=quality,
        default=DEFAULT_QUALITY,
        metavar="Q",
        help="JPEG and WebP quality, 1-100 (default: %(default)s)",
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave outputs that already exist alone (resume an interrupted run)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep a journal of finished images (OUT/.batchcore-resume.sqlite); a rerun with "
        "--resume runs only the others (and those whose source changed or output is gone)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse images (all frames together) and filter outputs with more pixels, as "
        "decompression bombs (default: %(default)s)",
    )
    parser.add_argument(
        "--per-job",
        dest="grouped",
        action="store_false",
        help="run the LoadImage -> ApplyFilter -> SaveImage flow (ImageBatchFlow) once per "
        "job, decoding each image once per filter, instead of once per image",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_storage_options(parser)
    add_batch_options(parser)
    parser.set_defaults(handler=run_images_command)


def run_images_command(args: argparse.Namespace) -> int:
    """``batchcore images``: check, run, report; returns the exit code."""
    from ..images.filters import list_filters
    from ..images.jobs import run_images

    if args.list_filters:
        print(format_filters(list_filters()))
        return EXIT_OK
    missing = [name for name, value in (("SRC", args.src), ("-o OUT", args.out)) if not value]
    if not args.filters:
        missing.append("-f FILTER")
    if missing:
        return fail(
            f"images: missing {', '.join(missing)} (see batchcore images --help)", EXIT_USAGE
        )
    summary = run_job(
        lambda: run_images(
            args.src[0] if len(args.src) == 1 else args.src,
            args.out,
            args.filters,
            backend=args.backend,
            workers=args.workers,
            fmt=args.fmt,
            quality=args.quality,
            skip_existing=args.skip_existing,
            max_pixels=args.max_pixels,
            progress=show_progress(args),
            grouped=args.grouped,
            storage_options=storage_options(args) or None,
            resume=args.resume,
        ),
        ", ".join(args.src),
    )
    if args.resume:
        images = len({result.source for result in summary.results})
        note = resume_note(summary.checkpoint, summary.resumed, images, "images")
        print(note, file=sys.stderr)
    for result in summary.failed:
        print(f"{PROG}: failed [{result.filter}]: {result.reason}", file=sys.stderr)
    plural = "" if summary.workers == 1 else "s"
    if args.json:
        report: dict[str, Any] = summary.as_json()
        report["out"] = args.out
        print(json.dumps(report))
    else:
        for result in summary.dropped:  # written, but the format could not hold everything
            print(
                f"{PROG}: dropped [{result.filter}]: {result.output} (from {result.source}) "
                f"lacks {result.dropped}",
                file=sys.stderr,
            )
        dropped = f", {len(summary.dropped)} with frames dropped" if summary.dropped else ""
        print(
            f"{args.out}: {summary.ok} ok{dropped}, {len(summary.failed)} failed, "
            f"{summary.skipped} skipped "
            f"in {summary.seconds:.2f} s ({summary.jobs_per_second:.1f} jobs/s, "
            f"{summary.backend} backend, {summary.workers} worker{plural}"
            + (f", {summary.backend_reason})" if summary.backend_reason else ")")
        )
    return EXIT_FAILED if summary.failed else EXIT_OK


def format_filters(filters: list[Any]) -> str:
    """The ``--list-filters`` text: each filter with its parameters (defaults, types, ranges),
    then its description on an indented line."""
    lines = []
    for info in filters:
        params = ", ".join(param.describe() for param in info.params)
        lines.append(f"{info.name}  {params}".rstrip())
        if info.doc:
            lines.append(f"    {info.doc.replace('``', '')}")  # reST literals, without quotes
    lines.append("")
    lines.append("A filter is NAME or NAME:KEY=VALUE,...; chain with |: 'grayscale|blur:radius=3'.")
    return "\n".join(lines)
