"""What skipping bad rows costs: ``csv_stats`` with ``bad_rows="skip"`` on a clean CSV and on the
same CSV with a ragged row every few MiB, in one run.

Skipped rows are reported by line, which needs line numbers for a few rows of some ranges; the
split counts newlines for that in its first pass, so no range rereads the file up to itself. Run::

    python benchmarks/bench_csv_skip.py              # writes benchmarks/results/csv-skip.md
    python benchmarks/bench_csv_skip.py --size 100MB --repeats 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bench_csv  # the same generated sales file as bench_csv.py
from harness import (
    DATA_DIR,
    RESULTS,
    Session,
    median_time,
    package_versions,
    start_batchcore,
    table,
    times,
    write_report,
)

import batchcore
from batchcore.processors.csv.jobs import csv_stats


def with_bad_rows(source: Path, target: Path, every: int) -> int:
    """Copy ``source`` with a ragged row after roughly every ``every`` bytes; returns how many."""
    added = 0
    with source.open("rb") as reader, target.open("wb") as writer:
        writer.write(reader.readline())
        while block := reader.readlines(every):
            writer.write(b"".join(block) + b"ragged,row\n")
            added += 1
    return added


def median_seconds(path: Path, backend: str, workers: int, repeats: int) -> tuple[float, int]:
    """Median seconds of ``csv_stats`` skipping bad rows, and how many rows it skipped."""
    seconds, stats = median_time(
        lambda: csv_stats(path, ["amount"], bad_rows="skip", backend=backend, workers=workers),
        repeats,
    )
    return seconds, stats.skipped_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1GB", help="generated file size (bench_csv's files)")
    parser.add_argument("--every-mib", type=int, default=4, help="a ragged row every N MiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--output", type=Path, default=RESULTS / "csv-skip.md")
    args = parser.parse_args(argv)
    session = Session.start()
    clean = bench_csv.ensure_file(args.size, args.data_dir)
    bad = clean.with_name(f"{clean.stem}-bad-every-{args.every_mib}mib.csv")
    added = with_bad_rows(clean, bad, args.every_mib << 20)
    start_batchcore("process", args.workers)
    csv_stats(clean, ["amount"], backend="process", workers=args.workers)  # warm the pool
    rows: list[list[str]] = []
    try:
        for backend in ("sequential", "process"):
            clean_s, _ = median_seconds(clean, backend, args.workers, args.repeats)
            bad_s, skipped = median_seconds(bad, backend, args.workers, args.repeats)
            assert skipped == added, (skipped, added)
            rows.append([backend, f"{clean_s:.2f}", f"{bad_s:.2f}", times(bad_s / clean_s)])
    finally:
        batchcore.shutdown()
        bad.unlink()
    lines = [
        "# CSV: the cost of skipping bad rows",
        "",
        *session.header(package_versions(["batchcore", "pyarrow"])),
        f"- Files: `{clean.name}` ({clean.stat().st_size:,} bytes) and the same file with "
        f"{added} ragged rows, one after every ~{args.every_mib} MiB",
        f"- Job: `csv_stats(path, ['amount'], bad_rows='skip')`; medians of {args.repeats}; "
        "the process pool is warm",
        "",
        *table(["backend", "clean file s", "with bad rows s", "ratio"], rows),
    ]
    write_report(args.output, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
