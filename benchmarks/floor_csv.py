"""The least work any pyarrow-based reader does for a grouped-sum CSV job, timed piece by piece.

A benchmark child (``bench_remote.py``'s engine ``floor``), run cold like every engine: it
imports only what such a reader needs (numpy, pyarrow's csv and compute, and ``isal`` for gzip),
then reads its input in one thread with nothing else: each file front to back into one reused
16 MiB buffer (a ``.csv.gz`` through ISA-L's inflate, the fastest on this machine), each piece
cut at its last newline (the sales file has no newline inside a field, so no quote scan), parsed
by Arrow's CSV reader for only the job's columns (one thread, the fastest parse options), and
summed per group by Arrow's hash ``group_by`` (CPU seconds of all its threads; its one-time
set-up before the work and left out). It prints one JSON line, as ``harness.emit``
does: the work's seconds, the result (checked against the other engines) and the CPU seconds of
each piece: ``read`` (inflate, or copies from the page cache), ``parse`` and ``aggregate``.

From those the benchmark bounds what any implementation could reach on this machine: the
child's wall less its work is the fixed cost (interpreter, imports, exit), and the pieces' CPU
is work that only spreads over the cores; one gzip stream inflates in one thread.

    python benchmarks/floor_csv.py FILE_OR_FOLDER --key region --sum amount --sum qty
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

PIECE = 16 << 20  # bytes read per piece, as batchcore's chunks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path, help="a CSV, a .csv.gz, or a folder of .csv.gz parts")
    parser.add_argument("--key", required=True, help="the group-by column")
    parser.add_argument("--sum", action="append", required=True, dest="sums", help="a column")
    return parser.parse_args(argv)


def files_of(path: Path) -> list[Path]:
    return sorted(path.glob("*.csv.gz")) if path.is_dir() else [path]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = files_of(args.path)
    began = time.perf_counter()
    import pyarrow as pa
    import pyarrow.compute as pc  # noqa: F401  (group_by's kernels: what a reader imports)
    import pyarrow.csv as pacsv

    if any(file.suffix == ".gz" for file in files):
        from isal import igzip
    imports = time.perf_counter() - began
    # Arrow's group_by pays ~0.18 s at its first call (Acero's set-up), which a reader that sums
    # by other means need not: paid here, outside the work, and left out of the fixed cost too.
    began = time.perf_counter()
    warm = pa.table({"k": ["a", "b"], "v": [1.0, 2.0]})
    warm.group_by("k").aggregate([("k", "count"), ("v", "sum")])
    warmup = time.perf_counter() - began

    columns = [args.key, *args.sums]
    cpu = {"read": 0.0, "parse": 0.0, "aggregate": 0.0}
    groups: dict[str, dict[str, Any]] = {}
    buffer = bytearray(PIECE * 2)
    view = memoryview(buffer)
    work = time.perf_counter()
    for file in files:
        stream: BinaryIO = igzip.open(file, "rb") if file.suffix == ".gz" else open(file, "rb")
        with stream:
            header = stream.readline()
            names = header.decode().rstrip("\r\n").split(",")
            read_options = pacsv.ReadOptions(
                use_threads=False, column_names=names, block_size=len(buffer)
            )
            parse_options = pacsv.ParseOptions(newlines_in_values=False)
            convert_options = pacsv.ConvertOptions(
                include_columns=columns,
                column_types={args.key: pa.string(), **{name: pa.float64() for name in args.sums}},
            )
            for piece in pieces(stream, buffer, view, cpu):
                started = time.process_time()
                table = pacsv.read_csv(
                    pa.py_buffer(piece),
                    read_options=read_options,
                    parse_options=parse_options,
                    convert_options=convert_options,
                )
                parsed = time.process_time()
                sums = table.group_by(args.key).aggregate(
                    [(args.key, "count"), *[(name, "sum") for name in args.sums]]
                )
                for row in sums.to_pylist():
                    group = groups.setdefault(
                        str(row[args.key]), {"count": 0, **{name: 0.0 for name in args.sums}}
                    )
                    group["count"] += row[f"{args.key}_count"]
                    for name in args.sums:
                        group[name] += row[f"{name}_sum"] or 0.0
                cpu["parse"] += parsed - started
                cpu["aggregate"] += time.process_time() - parsed
    seconds = time.perf_counter() - work
    result = {
        "rows": sum(group["count"] for group in groups.values()),
        "sums": {name: sum(group[name] for group in groups.values()) for name in args.sums},
        "groups": groups,
    }
    details = {
        "imports": imports,
        "warmup": warmup,
        **{f"{name}_cpu": value for name, value in cpu.items()},
    }
    print(json.dumps({"engine": "floor", "seconds": seconds, "result": result, "details": details}))
    return 0


def pieces(
    stream: BinaryIO, buffer: bytearray, view: memoryview, cpu: dict[str, float]
) -> Iterator[memoryview]:
    """The stream's records in pieces of about ``PIECE`` bytes, each ending at a newline, read
    into ``buffer`` (each piece is used before the next is read); the read's CPU into ``cpu``."""
    carried = 0  # bytes of a partial record moved to the buffer's start
    while True:
        started = time.process_time()
        got = stream.readinto(view[carried : carried + PIECE])  # type: ignore[attr-defined]
        cpu["read"] += time.process_time() - started
        end = carried + got
        if not got:
            if carried:
                yield view[:carried]
            return
        cut = buffer.rfind(b"\n", 0, end) + 1
        if cut == 0:  # no newline yet: a record longer than a piece is not in this data
            raise ValueError(f"no newline in {end:,} bytes")
        yield view[:cut]
        view[: end - cut] = view[cut:end]
        carried = end - cut


if __name__ == "__main__":
    sys.exit(main())
