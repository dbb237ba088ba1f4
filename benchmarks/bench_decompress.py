"""How fast can one core decompress each format, and how fast can one core parse what comes out?
The answer decides how the CSV node reads a compressed file: if one gzip stream decompresses
faster than one core parses, one decompressor feeding several parsers pays; if not, the stream
is the bottleneck and only many files in parallel help.

Engines, each run cold in a fresh child process (``--one ENGINE``), the files in the page cache::

    pyarrow:F     pa.CompressedInputStream (C++, GIL released), F in gzip/bz2/zstd
    stdlib:F      gzip.open / bz2.open / lzma.open
    zstandard:F   the zstandard package, when installed
    batchcore:F   batchcore.processors.compression.open_decompressed (what the node would use)
    parse         pyarrow.csv.read_csv(use_threads=False) on 16 MB record-aligned blocks of the
                  plain file, already in memory (the parse alone)
    chunk         record_chunks over the plain file in memory (the record-aligned cutting alone)
    gzip-serial   open_decompressed(gzip) -> record_chunks -> parse, all in one thread
    gzip-2-parsers  the same stream, 16 MB chunks parsed by 2 threads while the main thread
                  decompresses (the "one decompressor feeding two parsers" design)

Every rate is MB/s of *uncompressed* CSV (10^6 bytes), median of the repeats, engines taking
turns so drifting load hits all alike::

    python benchmarks/bench_decompress.py                       # 200 MB: results/decompress.md
    python benchmarks/bench_decompress.py --size 50MB --repeat 1
"""

from __future__ import annotations

import argparse
import bz2
import concurrent.futures
import gzip
import importlib.util
import io
import lzma
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from harness import (
    DATA_DIR,
    RESULTS,
    ROOT,
    Cell,
    Measured,
    Session,
    emit,
    fmt,
    median,
    package_versions,
    progress,
    run_child,
    table,
    take_turns,
)

MAKE_SALES = ROOT / "data" / "make_sales.py"
MB = 10**6
PIECE = 16 << 20  # what a reader asks for at a time, and the parse block size
SUFFIX = {"gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}
# The command-line tools at their default levels: the files users actually get.
TOOLS = {
    "gzip": ["gzip", "-k", "-f"],
    "bz2": ["bzip2", "-k", "-f"],
    "xz": ["xz", "-k", "-f", "-T1"],
    "zstd": ["zstd", "-q", "-f"],
}
ENGINES = [
    "pyarrow:gzip",
    "stdlib:gzip",
    "batchcore:gzip",
    "pyarrow:bz2",
    "stdlib:bz2",
    "batchcore:bz2",
    "stdlib:xz",
    "batchcore:xz",
    "pyarrow:zstd",
    "zstandard:zstd",
    "batchcore:zstd",
    "parse",
    "chunk",
    "gzip-serial",
    "gzip-2-parsers",
]


def inputs(size: str) -> Path:
    """The plain sales CSV of ``size`` and its four compressed copies (made once, kept)."""
    plain = DATA_DIR / f"sales-{size.lower()}.csv"
    if not plain.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(MAKE_SALES), str(plain), "--size", size], check=True)
    for kind, tool in TOOLS.items():
        target = plain.with_name(plain.name + SUFFIX[kind])
        if not target.exists() and shutil.which(tool[0]):
            subprocess.run([*tool, str(plain)], check=True)
    return plain


# --- the child side -----------------------------------------------------------------------------


def drain(stream: BinaryIO) -> int:
    """Read ``stream`` to its end in ``PIECE`` reads; the bytes read."""
    total = 0
    while piece := stream.read(PIECE):
        total += len(piece)
    return total


def open_with(engine: str, path: Path) -> BinaryIO:
    """The decompressed reader ``engine`` names, over the compressed copy of ``path``."""
    library, kind = engine.split(":")
    source = path.with_name(path.name + SUFFIX[kind])
    if library == "pyarrow":
        import pyarrow as pa

        return pa.CompressedInputStream(pa.OSFile(str(source)), kind)  # type: ignore[no-any-return]
    if library == "stdlib":
        opener: Callable[[Path], Any] = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[kind]
        return opener(source)  # type: ignore[no-any-return]
    if library == "zstandard":
        import zstandard

        raw = open(source, "rb")
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[no-any-return]
    from batchcore.processors.compression import open_decompressed

    return open_decompressed(open(source, "rb"), kind)


def parse_blocks(blocks: list[bytes], use_threads: bool = False) -> int:
    """Parse record-aligned blocks (the first holds the header) with pyarrow; the rows."""
    import pyarrow.csv as pacsv

    first = pacsv.read_csv(
        io.BytesIO(blocks[0]), read_options=pacsv.ReadOptions(use_threads=use_threads)
    )
    names = first.column_names
    rows = first.num_rows
    for block in blocks[1:]:
        rows += parse_one(block, names)
    return rows


def parse_one(block: bytes, names: list[str]) -> int:
    """Rows of one headerless record-aligned block, parsed on this thread only."""
    import pyarrow.csv as pacsv

    options = pacsv.ReadOptions(column_names=names, use_threads=False, block_size=PIECE + (1 << 20))
    return int(pacsv.read_csv(io.BytesIO(block), read_options=options).num_rows)


def chunks_of(stream: BinaryIO) -> Any:
    from batchcore.processors.csv.stream import record_chunks

    return record_chunks(stream, quote=ord('"'), chunk_bytes=PIECE, max_record_bytes=8 << 20)


def since(began: tuple[float, float], **result: int) -> Measured:
    """Wall and CPU seconds (all threads of this process) since ``began = clock()``: on a shared
    machine the CPU seconds say what the work costs, the wall seconds what it got."""
    wall, cpu = clock()
    return Measured(wall - began[0], result=result, details={"cpu": cpu - began[1]})


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def child(engine: str, path: Path) -> Measured:
    """Time one engine's work on ``path`` (imports and, for ``parse``, reading excluded)."""
    import pyarrow.csv  # noqa: F401  (imported before timing, for every engine alike)

    from batchcore.processors.csv.stream import split_header

    size = path.stat().st_size
    if engine in ("parse", "chunk"):
        data = path.read_bytes()
        began = clock()
        blocks = [chunk.data for chunk in chunks_of(io.BytesIO(data))]
        if engine == "chunk":
            return since(began, bytes=sum(map(len, blocks)))
        del data
        began = clock()
        rows = parse_blocks(blocks)
        return since(began, bytes=size, rows=rows)
    if engine in ("gzip-serial", "gzip-2-parsers"):
        began = clock()
        stream = open_with("batchcore:gzip", path)
        chunks = chunks_of(stream)
        header, rest = split_header(next(chunks), ord('"'))
        names = header.decode().rstrip("\r\n").split(",")
        rows = parse_one(rest.data, names) if rest else 0
        if engine == "gzip-serial":
            rows += sum(parse_one(chunk.data, names) for chunk in chunks)
        else:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                pending: list[concurrent.futures.Future[int]] = []
                for chunk in chunks:
                    pending.append(pool.submit(parse_one, chunk.data, names))
                    if len(pending) >= 3:  # bounded: at most 3 chunks waiting or parsing
                        rows += pending.pop(0).result()
                rows += sum(future.result() for future in pending)
        return since(began, bytes=size, rows=rows)
    stream = open_with(engine, path)
    began = clock()
    total = drain(stream)
    return since(began, bytes=total)


# --- the parent side ----------------------------------------------------------------------------


def available(engine: str, path: Path) -> str:
    """Why ``engine`` cannot run here, or ``""``."""
    if engine.startswith("zstandard") and importlib.util.find_spec("zstandard") is None:
        return "zstandard is not installed"
    if ":" in engine:
        kind = engine.split(":")[1]
        if not path.with_name(path.name + SUFFIX[kind]).exists():
            return f"no {TOOLS[kind][0]} tool to make the {kind} file"
    return ""


def verdict(rate: Callable[..., float]) -> list[str]:
    """What the rates say about one gzip stream: how many parsers one reader keeps busy."""
    reader = 1 / (1 / rate("batchcore:gzip", cpu=True) + 1 / rate("chunk", cpu=True))
    parse = rate("parse", cpu=True)
    return [
        f"- One gzip reader (decompress + cut into record-aligned chunks) costs "
        f"{1000 / reader:.1f} ms of CPU per MB, a parse {1000 / parse:.1f} ms: one reader "
        f"keeps {fmt(reader / parse, 1)} parser cores busy, so on 2 cores one decompressor "
        f"feeding parsers can reach about {fmt(2 / (1 / reader + 1 / parse), 0)} MB/s against "
        f"{fmt(1 / (1 / reader + 1 / parse), 0)} MB/s on one core (CPU-bound figures).",
        f"- Measured wall time, this run: 2 parser threads "
        f"{fmt(rate('gzip-2-parsers'), 0)} MB/s vs serial {fmt(rate('gzip-serial'), 0)} MB/s "
        f"({fmt(rate('gzip-2-parsers') / rate('gzip-serial'))}x; see the load average above).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="200MB", help="the plain CSV's size (default 200MB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine (default 3)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset")
    parser.add_argument("--one", metavar="ENGINE", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        emit(child(args.one, args.path), engine=args.one)
        return
    session = Session.start()
    path = inputs(args.size)
    engines = args.engines.split(",")
    cells = {engine: Cell(skip=available(engine, path)) for engine in engines}
    for repeat in range(args.repeat):
        for engine in take_turns(engines, repeat):
            if cells[engine].skip:
                continue
            command = [sys.executable, __file__, "--one", engine, "--path", str(path)]
            run = run_child(command, timeout=600, interval=None)
            cells[engine].runs.append(run)
            progress(engine, run)
    size = path.stat().st_size

    def rate(engine: str, cpu: bool = False) -> float:
        if engine not in cells:
            return float("nan")
        cell = cells[engine]
        return size / MB / (cell.median_detail("cpu") if cpu else cell.median())

    rows = []
    for engine in engines:
        cell = cells[engine]
        kind = engine.split(":")[1] if ":" in engine else ""
        compressed = path.with_name(path.name + SUFFIX[kind]).stat().st_size if kind else size
        note = cell.skip or cell.error
        rows.append(
            [
                f"`{engine}`",
                f"{compressed / MB:.0f}",
                fmt(rate(engine), 0) if not cell.skip else "-",
                fmt(rate(engine, cpu=True), 0) if not cell.skip else "-",
                cell.spread(),
                note,
            ]
        )
    parse = rate("parse")
    parse_cpu = rate("parse", cpu=True)
    lines = [
        f"# Decompression and parse speed, one core ({size / MB:.0f} MB sales CSV)",
        "",
        *session.header(package_versions(["pyarrow", "numpy", "zstandard"])),
        f"- Repeats: {args.repeat} per engine, each a fresh process; medians; files in the "
        "page cache; MB/s of uncompressed CSV",
        "",
        *table(
            [
                "engine",
                "input MB",
                "MB/s (wall)",
                "MB/s per CPU-second",
                "seconds (min-max)",
                "note",
            ],
            rows,
            "lrrrrl",
        ),
        "",
        f"Parse (one core): {fmt(parse, 0)} MB/s wall, {fmt(parse_cpu, 0)} MB/s per CPU-second. "
        "Decompression / parse speed per format (best library, per CPU-second): "
        + ", ".join(
            f"{kind} {fmt(max(rate(e, True) for e in found) / parse_cpu)}"
            for kind in TOOLS
            if (found := [e for e in engines if e.endswith(":" + kind) and not cells[e].skip])
        ),
        "",
        *verdict(rate),
        "",
    ]
    out = RESULTS / "decompress.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written to {out}")
    print("median seconds:", {e: fmt(median(r.seconds for r in cells[e].ok)) for e in engines})


if __name__ == "__main__":
    main()
