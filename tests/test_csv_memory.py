"""Bounded memory on a ~100 MB file: the peak RSS of the whole process tree (the job's process and
its workers) is sampled from outside, every 20 ms, and must not grow with the file's size."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from csv_helpers import ROOT, SALES, faults_in_child

pytestmark = pytest.mark.slow

MiB = 1 << 20
BOUND = 600 * MiB  # a constant: the same for a 100 MB or a 100 GB file


@pytest.fixture(scope="module")
def sales_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A ~100 MB sales file: data/sales.csv's rows (made by data/make_sales.py) over and over
    under its header, written in well under a second (make_sales.py itself takes 4 s or more
    for 100 MB); and its first ~25 MB (whole rows)."""
    folder = tmp_path_factory.mktemp("memory")
    header, body = SALES.read_bytes().split(b"\n", 1)
    big = folder / "sales-100mb.csv"
    with open(big, "wb") as target:
        target.write(header + b"\n")
        for _ in range(100 * 10**6 // len(body) + 1):
            target.write(body)
    assert big.stat().st_size >= 100 * 10**6
    small = folder / "sales-25mb.csv"
    with open(big, "rb") as source, open(small, "wb") as target:
        head = source.read(25 * 10**6)
        target.write(head[: head.rindex(b"\n") + 1])
    return big, small


def peak_tree_rss(code: str) -> int:
    """Run ``code`` in a fresh interpreter; return the peak summed RSS of it and its children."""
    proc = psutil.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peak = 0
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            total = 0
            try:
                tree = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for member in tree:
                try:
                    total += member.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, total)
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert out.strip(), "the job printed nothing"
    return peak


def stats_code(path: Path) -> str:
    return (
        "from batchcore.processors.csv.jobs import csv_stats\n"
        f"stats = csv_stats({str(path)!r}, ['amount', 'qty'], group_by='region',"
        " backend='process', workers=2, chunk_bytes=8 << 20)\n"
        "print(stats.rows)\n"
    )


def seed_code(path: Path, backend: str) -> str:
    return (
        "from batchcore.processors.csv.seed import sales_stats\n"
        f"stats = sales_stats({str(path)!r}, ['amount', 'qty'], backend={backend!r},"
        " workers=2, chunk_rows=50_000)\n"
        "print(stats['rows'])\n"
    )


def test_csv_stats_on_processes_has_bounded_memory(sales_files: tuple[Path, Path]) -> None:
    big, small = sales_files
    peak_big = peak_tree_rss(stats_code(big))
    peak_small = peak_tree_rss(stats_code(small))
    report = (
        f"peak tree RSS {peak_big / MiB:.0f} MiB on {big.stat().st_size / MiB:.0f} MiB, "
        f"{peak_small / MiB:.0f} MiB on {small.stat().st_size / MiB:.0f} MiB"
    )
    assert peak_big < BOUND, report
    # four times the data, (almost) the same memory: what is held is a few 8 MiB ranges
    assert peak_big - peak_small < 64 * MiB, report


def test_seed_pattern_consumes_pandas_chunks_lazily(sales_files: tuple[Path, Path]) -> None:
    big, small = sales_files
    size = big.stat().st_size
    sequential_big = peak_tree_rss(seed_code(big, "sequential"))
    sequential_small = peak_tree_rss(seed_code(small, "sequential"))
    process_big = peak_tree_rss(seed_code(big, "process"))
    report = (
        f"seed pattern peak tree RSS: sequential {sequential_big / MiB:.0f} MiB "
        f"({sequential_small / MiB:.0f} MiB on the 25 MB prefix), "
        f"process x2 {process_big / MiB:.0f} MiB, file {size / MiB:.0f} MiB"
    )
    assert process_big < BOUND, report
    # read whole, the file would take more than its own size in memory; chunked, a fraction
    assert sequential_big < BOUND, report
    assert sequential_big - sequential_small < size / 4, report


COUNT_FAULTS_CHILD = """
import resource, sys
from batchcore.processors.csv.jobs import csv_stats

run = dict(backend="sequential", chunk_bytes=4 << 20)
first = csv_stats(sys.argv[1], ["amount"], **run)  # buffers faulted in
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = csv_stats(sys.argv[1], ["amount"], **run)
assert again.rows == first.rows, (again.rows, first.rows)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_counting_and_reading_a_file_reuse_their_memory_where_malloc_thresholds_are_set(
    tmp_path: Path,
) -> None:
    """The quote count reads each block into the thread's one counting buffer and compares it
    into one scratch array, and each range is read into the thread's one read buffer. Where
    glibc's thresholds are set (as Dask sets them for its processes) its mmap threshold stays at
    128 KiB, so a 4 MiB buffer and a 256 KiB comparison per step, fresh each time, were mapped
    and faulted in page by page: 95,000 page faults per 300 MB (with glibc's defaults it
    reuses freed memory: ~1,400)."""
    lines = SALES.read_bytes().splitlines(keepends=True)
    big = tmp_path / "big.csv"
    big.write_bytes(lines[0] + b"".join(lines[1:]) * 120)  # ~50 MB: twelve blocks
    faults = faults_in_child(COUNT_FAULTS_CHILD, str(big), trim="65536")
    fresh = big.stat().st_size // 4096  # every page of the file faulted in afresh, once
    assert faults < fresh // 4, f"{faults} page faults over {big.stat().st_size:,} bytes"
