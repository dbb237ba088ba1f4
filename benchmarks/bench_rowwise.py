"""Per-row Python work on a CSV: batchcore's process backend against its sequential backend and
the parallel tools a user would pick instead.

The work (``rowwise_work.note_score``): a regex over the sales file's free-text ``note`` column,
row by row in Python, summed to ``(rows, rows with a non-zero score, total score)``. The GIL
makes it CPU-bound in one interpreter, so only processes help.

Engines:

- batchcore sequential / process: a ``CSVBatchNode`` parsing only ``note`` per record-aligned
  byte range (each worker parses its own ranges), ``exec`` scoring the range's rows;
- pandas chunks + ``multiprocessing.Pool(2)``: the parent reads ``read_csv(usecols=['note'],
  chunksize=200_000)`` and ships each chunk's notes to the pool (``imap``);
- Dask dataframe: ``dd.read_csv(blocksize=64MB, usecols=['note']).map_partitions(...)`` on a
  ``LocalCluster`` of 2 worker processes, 1 thread each;
- polars: ``scan_csv(...).select(pl.col('note').map_batches(...))``, streaming;
- pandas chunks, one process (``--engines`` only: the plain loop, slow).

Every run is a fresh process (``bench_rowwise.py --one ENGINE``); pools and clusters start inside
the timed job (a cold script), and their start-up is shown on its own.

    python benchmarks/bench_rowwise.py                    # 300 MB sales file: results/rowwise.md
    python benchmarks/bench_rowwise.py --quick            # smoke test: 20 MB, 1 repeat
    python benchmarks/bench_rowwise.py --one process --path FILE   # one child run, JSON out
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_wide import ensure_file
from harness import (
    DATA_DIR,
    Cell,
    Measured,
    Session,
    add_child_options,
    bar_chart,
    check_counts,
    default_output,
    emit,
    env_line,
    fmt,
    leftover_problems,
    package_versions,
    parse_env,
    parse_list,
    progress,
    run_child,
    sampler_line,
    table,
    take_turns,
    times,
    write_report,
)
from rowwise_work import score_frame, score_notes

HERE = Path(__file__).resolve().parent
PACKAGES = ["batchcore", "pyarrow", "pandas", "numpy", "polars", "dask", "distributed", "psutil"]
ENGINES = {
    "sequential": "batchcore sequential (CSVBatchNode)",
    "process": "batchcore process (CSVBatchNode, 2 workers)",
    "pandas-pool": "pandas chunks + `multiprocessing.Pool(2)`",
    "dask": "Dask dataframe `map_partitions` (LocalCluster, 2 processes)",
    "polars": "polars `map_batches` (streaming)",
    "pandas": "pandas chunks, one process",
}
DEFAULT_ENGINES = ["sequential", "process", "pandas-pool", "dask", "polars"]
WORKERS = 2
PANDAS_CHUNK = 200_000

# --- the child: one engine, one fresh process ----------------------------------------------------


def run_batchcore(backend: str, path: str) -> Measured:
    import batchcore
    from batchcore.processors.csv.node import CSVBatchNode

    class NoteScores(CSVBatchNode):
        """Per range: the notes' scores, row by row; ``post`` adds them up in order."""

        def exec(self, table: Any) -> tuple[int, int, int]:
            return score_notes(table["note"].to_pylist())

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            shared["scores"] = [sum(part) for part in zip(*exec_res, strict=True)]

    options: dict[str, Any] = {"backend": backend}
    if backend != "sequential":
        options["workers"] = WORKERS
    began = time.perf_counter()
    shared: dict[str, Any] = {}
    try:
        NoteScores(path, columns=["note"], **options).run(shared)
    finally:
        batchcore.shutdown()
    return Measured(time.perf_counter() - began, result=as_result(shared["scores"]))


def pandas_chunks(path: str) -> Iterator[list[Any]]:
    import pandas as pd

    with pd.read_csv(path, usecols=["note"], chunksize=PANDAS_CHUNK) as reader:
        for chunk in reader:
            yield chunk["note"].tolist()


def run_pandas(path: str) -> Measured:
    began = time.perf_counter()
    parts = [score_notes(notes) for notes in pandas_chunks(path)]
    return Measured(time.perf_counter() - began, result=add_up(parts))


def run_pandas_pool(path: str) -> Measured:
    import multiprocessing

    began = time.perf_counter()
    with multiprocessing.Pool(WORKERS) as pool:
        ready = time.perf_counter()
        parts = list(pool.imap(score_notes, pandas_chunks(path)))
    return Measured(time.perf_counter() - began, ready - began, add_up(parts))


def run_dask(path: str) -> Measured:
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    began = time.perf_counter()
    cluster = LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, Client(cluster) as client:
        client.wait_for_workers(WORKERS)
        ready = time.perf_counter()
        frame = dd.read_csv(path, usecols=["note"], blocksize="64MB")
        meta = {"rows": "int64", "nonzero": "int64", "total": "int64"}
        counts = frame.map_partitions(score_frame, meta=meta).compute()
        result = as_result([int(counts[name].sum()) for name in ("rows", "nonzero", "total")])
        seconds = time.perf_counter() - began
    return Measured(seconds, ready - began, result)


def run_polars(path: str) -> Measured:
    import polars as pl
    from rowwise_work import note_score

    def scores(notes: pl.Series) -> pl.Series:
        return pl.Series([note_score(note) for note in notes.to_list()], dtype=pl.Int64)

    began = time.perf_counter()
    scored = pl.scan_csv(path).select(
        pl.col("note").map_batches(scores, return_dtype=pl.Int64, is_elementwise=True).alias("s")
    )
    row = (
        scored.select(
            pl.len(), (pl.col("s") > 0).sum().alias("nonzero"), pl.col("s").sum().alias("total")
        )
        .collect(engine="streaming")
        .row(0)
    )
    return Measured(time.perf_counter() - began, result=as_result([int(v) for v in row]))


def as_result(values: list[int]) -> dict[str, int]:
    rows, nonzero, total = values
    return {"rows": rows, "nonzero": nonzero, "total": total}


def add_up(parts: list[tuple[int, int, int]]) -> dict[str, int]:
    return as_result([sum(column) for column in zip(*parts, strict=True)])


def one(engine: str, path: str) -> int:
    """Child side: run ``engine`` once and print one JSON line."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    runners = {"pandas": run_pandas, "pandas-pool": run_pandas_pool}
    runners |= {"dask": run_dask, "polars": run_polars}
    if engine in ("sequential", "process"):
        measured = run_batchcore(engine, path)
    else:
        measured = runners[engine](path)
    emit(measured, engine=engine)
    return 0


# --- the parent -------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, path: Path) -> dict[str, Cell]:
    cells = {engine: Cell() for engine in args.engines}
    script = str(Path(__file__).resolve())
    for repeat in range(args.repeats):
        for engine in take_turns(args.engines, repeat):
            time.sleep(args.pause)
            run = run_child(
                [sys.executable, script, "--one", engine, "--path", str(path)],
                timeout=args.timeout,
                extra_env=args.env,
                interval=args.interval,
            )
            cells[engine].runs.append(run)
            tag = f"{engine} #{repeat + 1}"
            progress(tag, run, f"wall {run.wall:.2f} s", f"CPU {run.cpu_seconds:.2f} s")
    return cells


def check_results(cells: dict[str, Cell]) -> list[str]:
    problems = []
    base: tuple[str, dict[str, Any]] | None = None
    for engine, cell in cells.items():
        for run in cell.ok:
            if base is None:
                base = (engine, run.result)
            elif run.result != base[1]:
                problems.append(
                    f"{ENGINES[engine]}: {run.result} != {ENGINES[base[0]]}'s {base[1]}"
                )
    return problems


def ratio(cells: dict[str, Cell], base: str, engine: str, name: str = "wall") -> float:
    a, b = cells.get(base), cells.get(engine)
    if a is None or b is None or not a.ok or not b.ok:
        return math.nan
    return a.median(name) / b.median(name)


def report(
    args: argparse.Namespace,
    header: list[str],
    cells: dict[str, Cell],
    path: Path,
    problems: list[str],
) -> str:
    lines = ["# Per-row Python work on a CSV: batchcore process and its peers", ""]
    lines += header
    lines += ["", "## The issue's targets", ""]
    if args.quick:
        lines += ["Smoke test (`--quick`): a small file and one repeat; indicative only.", ""]
    rows = []
    judged = []
    for base, minimum in (("sequential", 1.85), ("pandas-pool", 1.0), ("dask", 1.0)):
        if base not in cells or "process" not in cells:
            continue
        value = ratio(cells, base, "process")
        ok = None if math.isnan(value) else value >= minimum
        judged.append(ok)
        shown = "-" if ok is None else ("**pass**" if ok else "**FAIL**")
        rows.append(
            [f"batchcore process vs {ENGINES[base]}", times(value), f">= {minimum}x", shown]
        )
    lines += table(["target", "measured (wall)", "wanted", "verdict"], rows, align="lrrl")
    lines += [
        "",
        f"{sum(1 for ok in judged if ok)} of {len(judged)} pass (medians of wall seconds from "
        f"this run; job seconds give {times(ratio(cells, 'sequential', 'process', 'seconds'))} "
        "for process over sequential).",
        "",
        f"## Results: `{path}`",
        "",
    ]
    head = ["engine", "wall s (min-max)", "job s", "start-up s", "CPU s", "peak tree RSS MiB"]
    head += ["others' cores"]
    head += ["x bc sequential", "x bc process"]
    rows = []
    for engine, cell in cells.items():
        walls = [run.wall for run in cell.ok]
        wall = fmt(cell.median("wall")) if walls else ("ERROR" if cell.error else "-")
        if len(walls) > 1:
            wall += f" ({min(walls):.2f}-{max(walls):.2f})"
        rows.append(
            [
                ENGINES[engine],
                wall,
                fmt(cell.median()),
                fmt(cell.median("startup")),
                fmt(cell.median("cpu_seconds")),
                fmt(cell.peak(), 0),
                fmt(cell.median("other_cores"), 1),
                times(ratio(cells, "sequential", engine)),
                times(ratio(cells, "process", engine)),
            ]
        )
    lines += table(head, rows)
    first = next((c.ok[0].result for c in cells.values() if c.ok), {})
    lines += [
        "",
        f"Result (every engine agrees unless listed below): {first}.",
        "",
        "Wall: the fresh child process from start to exit (interpreter, imports, pool or cluster "
        "start-up, job), median (min-max). Job: the child's own timing of the work, start-up "
        "included. Start-up: `Pool()` / `LocalCluster` + `wait_for_workers` (batchcore starts "
        "its pool inside the job, while the parent splits the file). CPU: user + system seconds "
        "of the child and the workers it reaped (Dask's workers are reaped by its nanny "
        "processes, so they count too). `x ENGINE`: that engine's median wall / this row's. "
        "Others' cores: how many cores other processes on the machine kept busy during the run "
        "(median): the machine is shared.",
    ]
    if problems:
        lines += ["", "## Errors and mismatches", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default=None, help="sales file size (default 300MB)")
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help="engines to run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per engine (default 3)")
    parser.add_argument("--workers", type=int, default=WORKERS, help=argparse.SUPPRESS)
    add_child_options(parser, pause=2.0, interval=0.02, env_example="OMP_NUM_THREADS=1")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="generated files go here")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--quick", action="store_true", help="20MB file, 1 repeat")
    parser.add_argument("--one", choices=list(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        if not args.path:
            parser.error("--one needs --path")
        return args
    args.env = parse_env(args.env, parser)
    args.engines = parse_list(parser, "--engines", args.engines, ENGINES)
    args.size = args.size or ("20MB" if args.quick else "300MB")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.pause = args.pause if args.pause is not None else (0.3 if args.quick else 2.0)
    args.timeout = args.timeout or (120.0 if args.quick else 900.0)
    check_counts(parser, args)
    args.output = args.output or default_output("rowwise", args.quick, args.env)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return one(args.one, args.path)
    session = Session.start()
    path = ensure_file("sales", args.size, args.data_dir)
    with open(path, "rb") as handle:  # into the page cache
        while handle.read(16 << 20):
            pass
    parent_cpu = time.process_time()
    try:
        cells = run_all(args, path)
    except KeyboardInterrupt:
        print("interrupted: the running child and its workers were killed", file=sys.stderr)
        return 130
    parent_cpu = time.process_time() - parent_cpu
    problems = check_results(cells)
    problems += [f"{ENGINES[e]}: {r.error}" for e, c in cells.items() for r in c.runs if r.error]
    problems += leftover_problems()
    panels = {"wall s (median), lower is better": {e: c.median("wall") for e, c in cells.items()}}
    header = session.header(package_versions(PACKAGES))
    header += [
        f"- File: `{path}`, {path.stat().st_size:,} bytes",
        "- **The machine is 2 cores, shared and noisy**: compare ratios within this run, not "
        "seconds across runs.",
        f"- Method: every run a fresh process after a {args.pause:g} s pause; {args.repeats} "
        "repeat(s), medians; engines take turns within each repeat",
        f"- Children's extra environment: {env_line(args.env)}",
        sampler_line(cells.values(), args.interval, parent_cpu),
        "- Results: `(rows, non-zero rows, total score)` compared exactly; "
        + (f"{len(problems)} problem(s), see the end" if problems else "all agree"),
        bar_chart(args.output.with_suffix(".png"), panels, "seconds"),
    ]
    write_report(args.output, report(args, header, cells, path, problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
