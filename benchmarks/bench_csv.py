"""Compare batchcore's CSV engine with the tools a user would pick instead, on one sales CSV.

Tasks (from /work/shared/anchors.md)::

    T1  total amount and row count                      (the seed tutorial's statistics)
    T2  group by region: sum amount, sum qty, count

Engines: batchcore ``csv_stats`` on the sequential, thread and process backends; the seed's
``pandas.read_csv(chunksize=1_000_000)`` loop; ``pyarrow.csv.read_csv`` (multi-threaded, whole
file) with ``Table.group_by``; polars ``scan_csv`` (streaming) and DuckDB SQL when installed.

Every (engine, task) run is a fresh child process (``--one ENGINE TASK``) started after a pause,
so no run inherits another's warm memory (see the anchors: first touch costs ~3 s/GiB here); the
file itself stays in the page cache. The child times its own work (imports excluded, pool
start-up included) and checks nothing; the parent samples the RSS of the child and all its
descendants every 10 ms, compares every engine's results, and writes the table::

    parent --pause--> child (imports; t0; [start pool]; job; t1) --JSON--> parent
       \\-- sampler thread: sum of RSS over the child's process tree, every 10 ms --/

    python benchmarks/bench_csv.py                        # 1 GB file (+ 100 MB): results/csv.md
    python benchmarks/bench_csv.py --quick                # smoke test: 50 MB, 1 repeat
    python benchmarks/bench_csv.py --size 200MB --tasks T2 --engines process,polars
    python benchmarks/bench_csv.py --env ARROW_DEFAULT_MEMORY_POOL=system
    python benchmarks/bench_csv.py --one process T2 --path /tmp/batchcore-bench/sales-1g.csv
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    DATA_DIR,
    MIB,
    ROOT,
    Cell,
    Measured,
    Session,
    add_child_options,
    check_counts,
    default_output,
    emit,
    env_line,
    fmt,
    leftover_problems,
    median,
    package_versions,
    parse_env,
    parse_list,
    progress,
    run_child,
    sampler_line,
    speedup,
    start_batchcore,
    startup_note,
    table,
    take_turns,
    times,
    write_report,
)

MAKE_SALES = ROOT / "data" / "make_sales.py"
MB = 10**6

TASKS = {
    "T1": "total amount and row count",
    "T2": "group by region: sum amount, sum qty, count",
}
ENGINES = {
    "sequential": "batchcore sequential",
    "thread": "batchcore thread",
    "process": "batchcore process",
    "process-warm": "batchcore process, warm pool",
    "pandas": "seed: pandas `read_csv(chunksize=1_000_000)` loop",
    "pyarrow": "pyarrow `read_csv` (multi-threaded, whole file) + `group_by`",
    "polars": "polars `scan_csv` streaming",
    "duckdb": "DuckDB SQL",
}
BATCHCORE = ("sequential", "thread", "process", "process-warm")
OPTIONAL = {"polars": "polars", "duckdb": "duckdb"}  # engine -> module it needs
PACKAGES = ["batchcore", "pyarrow", "pandas", "numpy", "polars", "duckdb", "psutil"]
RSS_LIMIT_MIB = 500
RSS_GROWTH = 0.10  # "the same" peak on the small and the big file: at most 10% more
RELATIVE = 1e-6  # sums must agree to this relative tolerance; row counts exactly

# The targets for batchcore process on T2: (peer engine, minimum speedup over it).
SPEED_TARGETS = [("sequential", 1.8), ("pandas", 2.0), ("pyarrow", 1.5), ("duckdb", 1.0)]
NEXT_MARK = ("polars", 1.0)  # reported, not judged: the next mark after DuckDB

HOW = {
    "sequential": "`csv_stats(path, sums, group_by=..., backend='sequential')`: "
    "the same record-aligned ranges parsed one after another in the child",
    "thread": "`csv_stats(..., backend='thread', workers=W)`: ranges parsed on W threads "
    "(pyarrow releases the GIL); pool start-up included in the time",
    "process": "`csv_stats(..., backend='process', workers=W)` from a cold start, as a "
    "command-line run: the time includes starting the worker processes (they boot while the "
    "parent reads the header and counts quotes) and their imports",
    "process-warm": "the same call in a child whose pool was started and warmed first (both "
    "workers have imported the CSV engine), as in a program that runs several jobs: the time "
    "excludes the start-up, shown in brackets",
    "pandas": "`with pd.read_csv(path, chunksize=1_000_000) as reader:` every column, default "
    "engine (pandas 3: still the C parser; text columns become the new default `str` dtype, "
    "pyarrow-backed when pyarrow is installed); T1 sums `chunk['amount']`, T2 "
    "`chunk.groupby('region').agg(...)` per chunk, partials combined at the end",
    "pyarrow": "`pyarrow.csv.read_csv(path)` (default `use_threads=True`, every column, the "
    "whole table in memory), then `pc.sum` (T1) or `table.group_by('region').aggregate(...)` (T2)",
    "polars": "`pl.scan_csv(path)` then `.select(pl.len(), pl.col('amount').sum())` (T1) or "
    "`.group_by('region').agg(pl.len(), pl.col('amount').sum(), pl.col('qty').sum())` (T2), "
    "`.collect(engine='streaming')`",
    "duckdb": "`duckdb.sql(\"select count(*), sum(amount) from read_csv_auto('PATH')\")` (T1), "
    "`select region, count(*), sum(amount), sum(qty) ... group by region` (T2), default threads",
}

# --- the child: one engine, one task, one fresh process ------------------------------------------


def worker_pid(_: int) -> int:
    """Warm-up item: import the CSV engine (as the first real batch would), report the pid."""
    import batchcore.processors.csv.jobs  # noqa: F401  (what the first real batch would import)

    time.sleep(0.02)  # long enough that a second worker gets the next item
    return os.getpid()


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers, once shut down)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def run_batchcore(
    backend: str, task: str, path: str, workers: int, chunk_bytes: int | None
) -> Measured:
    import batchcore
    from batchcore.processors.csv.jobs import csv_stats

    warm = backend == "process-warm"
    backend = "process" if warm else backend
    options: dict[str, Any] = {"backend": backend}
    if backend != "sequential":
        options["workers"] = workers
    if chunk_bytes:
        options["chunk_bytes"] = chunk_bytes
    sums, group_by = (["amount"], None) if task == "T1" else (["amount", "qty"], "region")
    details: dict[str, Any] = {}
    try:
        # Timed from a cold start, as a command-line run is: the pool starts inside the call
        # (its workers boot while the parent reads the header and counts quotes).
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        if warm:
            start_batchcore(backend, workers, worker_pid, per_worker=4)
        began = time.perf_counter()
        ready = began
        stats = csv_stats(path, sums, group_by=group_by, **options)
        result: dict[str, Any] = {"rows": stats.rows}
        if task == "T1":
            result["amount"] = stats.columns["amount"].sum
        else:
            result["groups"] = {}
            for key, group in stats.groups.items():
                result["groups"][str(key)] = {
                    "count": group.rows,
                    "amount": group.columns["amount"].sum,
                    "qty": group.columns["qty"].sum,
                }
        done = time.perf_counter()
    finally:
        batchcore.shutdown()  # waits for the workers, so their CPU time is counted below
    details["skipped_rows"] = stats.skipped_rows
    details["cpu_s"] = round(cpu_seconds() - cpu_before, 2)
    if warm:
        details["pool_start"] = began - started
    return Measured(done - began, ready - began, result, details)


def run_pandas(task: str, path: str) -> Measured:
    import pandas as pd

    began = time.perf_counter()
    rows = 0
    amount = 0.0
    parts = []
    region_dtype: Any = "-"
    with pd.read_csv(path, chunksize=1_000_000) as reader:
        for chunk in reader:
            rows += len(chunk)
            region_dtype = chunk["region"].dtype
            if task == "T1":
                amount += float(chunk["amount"].sum())
            else:
                parts.append(
                    chunk.groupby("region").agg(
                        count=("amount", "size"), amount=("amount", "sum"), qty=("qty", "sum")
                    )
                )
    if task == "T1":
        result: dict[str, Any] = {"rows": rows, "amount": amount}
    else:
        combined = pd.concat(parts).groupby(level=0).sum()
        result = {"rows": rows, "groups": {}}
        for key, row in combined.iterrows():
            result["groups"][str(key)] = {
                "count": int(row["count"]),
                "amount": float(row["amount"]),
                "qty": float(row["qty"]),
            }
    seconds = time.perf_counter() - began
    storage = getattr(region_dtype, "storage", "-")
    return Measured(seconds, result=result, details={"region_dtype": f"{region_dtype} ({storage})"})


def run_pyarrow(task: str, path: str) -> Measured:
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    began = time.perf_counter()
    table = pacsv.read_csv(path)
    if task == "T1":
        result: dict[str, Any] = {
            "rows": table.num_rows,
            "amount": pc.sum(table["amount"]).as_py(),
        }
    else:
        grouped = table.group_by("region").aggregate(
            [([], "count_all"), ("amount", "sum"), ("qty", "sum")]
        )
        result = {"rows": table.num_rows, "groups": {}}
        for row in grouped.to_pylist():
            result["groups"][str(row["region"])] = {
                "count": row["count_all"],
                "amount": row["amount_sum"],
                "qty": row["qty_sum"],
            }
    seconds = time.perf_counter() - began
    return Measured(seconds, result=result, details={"table_mib": round(table.nbytes / MIB)})


def run_polars(task: str, path: str) -> Measured:
    import polars as pl

    began = time.perf_counter()
    frame = pl.scan_csv(path)
    if task == "T1":
        query = frame.select(pl.len().alias("rows"), pl.col("amount").sum())
        row = query.collect(engine="streaming").row(0, named=True)
        result: dict[str, Any] = {"rows": row["rows"], "amount": row["amount"]}
    else:
        query = frame.group_by("region").agg(
            pl.len().alias("count"), pl.col("amount").sum(), pl.col("qty").sum()
        )
        result = {"rows": 0, "groups": {}}
        for row in query.collect(engine="streaming").iter_rows(named=True):
            result["rows"] += row["count"]
            result["groups"][str(row["region"])] = {
                "count": row["count"],
                "amount": row["amount"],
                "qty": row["qty"],
            }
    seconds = time.perf_counter() - began
    return Measured(seconds, result=result, details={"threads": pl.thread_pool_size()})


def run_duckdb(task: str, path: str) -> Measured:
    import duckdb

    def fetch(sql: str) -> list[Any]:
        relation = duckdb.sql(sql)
        assert relation is not None, sql
        return relation.fetchall()

    source = "read_csv_auto('" + path.replace("'", "''") + "')"
    began = time.perf_counter()
    if task == "T1":
        rows, amount = fetch(f"select count(*), sum(amount) from {source}")[0]
        result: dict[str, Any] = {"rows": int(rows), "amount": float(amount)}
    else:
        query = f"select region, count(*), sum(amount), sum(qty) from {source} group by region"
        result = {"rows": 0, "groups": {}}
        for region, count, amount, qty in fetch(query):
            result["rows"] += int(count)
            result["groups"][str(region)] = {
                "count": int(count),
                "amount": float(amount),
                "qty": float(qty),
            }
    seconds = time.perf_counter() - began
    threads = fetch("select current_setting('threads')")[0][0]
    return Measured(seconds, result=result, details={"threads": threads})


def one(engine: str, task: str, path: str, workers: int, chunk_bytes: int | None) -> int:
    """Child side: run ``engine`` on ``task`` once and print one JSON line."""
    if engine in BATCHCORE:
        outcome = run_batchcore(engine, task, path, workers, chunk_bytes)
    else:
        runners = {"pandas": run_pandas, "pyarrow": run_pyarrow}
        runners |= {"polars": run_polars, "duckdb": run_duckdb}
        outcome = runners[engine](task, path)
    if "pyarrow" in sys.modules:  # which allocator pyarrow used (ARROW_DEFAULT_MEMORY_POOL)
        import pyarrow

        outcome.details["arrow_pool"] = pyarrow.default_memory_pool().backend_name
    emit(outcome, engine=engine, task=task)
    return 0


# --- the parent: the files, and every run in a child ------------------------------------------


def load_make_sales() -> Any:
    """data/make_sales.py as a module (for ``parse_size``: the same sizes as the generator)."""
    if "make_sales" in sys.modules:
        return sys.modules["make_sales"]
    spec = importlib.util.spec_from_file_location("make_sales", MAKE_SALES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_sales"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def size_label(text: str) -> str:
    """``"1GB"`` -> ``"1g"``, ``"100MB"`` -> ``"100m"``: the default file's name part."""
    return re.sub(r"[^0-9a-z.]", "", text.lower()).removesuffix("b") or "x"


def ensure_file(size_text: str, data_dir: Path) -> Path:
    """The generated sales CSV of ``size_text``; made with data/make_sales.py if missing."""
    wanted = load_make_sales().parse_size(size_text)
    path = data_dir / f"sales-{size_label(size_text)}.csv"
    if path.exists() and wanted <= path.stat().st_size < wanted + 4096:
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    print(f"generating {path} ({size_text}) with {MAKE_SALES.name}", flush=True)
    command = [sys.executable, str(MAKE_SALES), str(partial), "--size", size_text]
    subprocess.run(command, check=True)
    os.replace(partial, path)
    return path


def read_rate(path: Path) -> float:
    """Read the file twice in 16 MiB ``readinto`` chunks (the first read fills the page cache);
    return the second read's GB/s: the floor no CSV engine can beat."""
    buffer = bytearray(16 * MIB)
    seconds = 0.0
    for _ in range(2):
        began = time.perf_counter()
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
        seconds = time.perf_counter() - began
    return path.stat().st_size / 1e9 / max(seconds, 1e-9)


# --- checking results -------------------------------------------------------------------------


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RELATIVE, abs_tol=1e-9)


def differences(task: str, got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """How ``got`` differs from ``want``: rows and counts exactly, sums to 1e-6 relative."""
    problems = []
    if got.get("rows") != want.get("rows"):
        problems.append(f"rows {got.get('rows')} != {want.get('rows')}")
    if task == "T1":
        if not close(got["amount"], want["amount"]):
            problems.append(f"sum(amount) {got['amount']!r} != {want['amount']!r}")
        return problems
    if sorted(got["groups"]) != sorted(want["groups"]):
        problems.append(f"regions {sorted(got['groups'])} != {sorted(want['groups'])}")
        return problems
    for region, mine in sorted(got["groups"].items()):
        theirs = want["groups"][region]
        if mine["count"] != theirs["count"]:
            problems.append(f"{region} count {mine['count']} != {theirs['count']}")
        for name in ("amount", "qty"):
            if not close(mine[name], theirs[name]):
                problems.append(f"{region} sum({name}) {mine[name]!r} != {theirs[name]!r}")
    return problems


# --- the run plan -----------------------------------------------------------------------------


def child_command(engine: str, task: str, path: Path, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--one", engine, task]
    command += ["--path", str(path), "--workers", str(args.workers)]
    if args.chunk_bytes:
        command += ["--chunk-bytes", str(args.chunk_bytes)]
    return command


def make_cells(
    args: argparse.Namespace, plan: dict[str, list[str]]
) -> dict[tuple[str, str, str], Cell]:
    """A cell per (file, task, engine); engines whose package is not installed are skipped."""
    cells: dict[tuple[str, str, str], Cell] = {}
    for which, engines in plan.items():
        for task in args.tasks:
            for engine in engines:
                cell = cells[which, task, engine] = Cell()
                module = OPTIONAL.get(engine)
                if module is not None and importlib.util.find_spec(module) is None:
                    cell.skip = f"not installed (`pip install {module}` failed or was not run)"
    return cells


def run_all(
    args: argparse.Namespace,
    files: dict[str, Path],
    plan: dict[str, list[str]],
    cells: dict[tuple[str, str, str], Cell],
) -> None:
    """Every repeat runs every (file, task, engine); engines take turns in the order."""
    for repeat in range(args.repeats):
        for which, engines in plan.items():
            for task in args.tasks:
                active = [e for e in engines if not cells[which, task, e].skip]
                active = [e for e in active if not cells[which, task, e].error]
                for engine in take_turns(active, repeat):
                    time.sleep(args.pause)
                    command = child_command(engine, task, files[which], args)
                    run = run_child(
                        command, timeout=args.timeout, extra_env=args.env, interval=args.interval
                    )
                    cells[which, task, engine].runs.append(run)
                    progress(f"{which} {task} repeat {repeat + 1}: {ENGINES[engine]}", run)


def check_results(cells: dict[tuple[str, str, str], Cell]) -> list[str]:
    """Every run of every engine against the first run of the first engine (per file, task);
    T2's total count against T1's rows."""
    problems = []
    reference: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for (which, task, engine), cell in cells.items():
        for run in cell.ok:
            key = (which, task)
            if key not in reference:
                reference[key] = (engine, run.result)
                continue
            base_engine, base = reference[key]
            for problem in differences(task, run.result, base):
                problems.append(
                    f"{which} file {task}: {ENGINES[engine]} differs from "
                    f"{ENGINES[base_engine]}: {problem}"
                )
    for (which, task), (_engine, result) in reference.items():
        if task == "T2" and (which, "T1") in reference:
            rows = reference[which, "T1"][1]["rows"]
            total = sum(group["count"] for group in result["groups"].values())
            if total != rows:
                problems.append(f"{which} file: T2 counts add up to {total}, T1 has {rows} rows")
    return problems


# --- reporting --------------------------------------------------------------------------------


def label(engine: str, workers: int) -> str:
    if engine in ("thread", "process", "process-warm"):
        return f"{ENGINES[engine]} ({workers} workers)"
    return ENGINES[engine]


def seconds_cell(cell: Cell) -> str:
    if cell.skip:
        return cell.skip
    if not cell.ok:
        return "ERROR" if cell.error else "?"
    return fmt(cell.median()) + startup_note(cell.median("startup"), unit="")


def ratio(
    cells: dict[tuple[str, str, str], Cell], task: str, other: str, mine_key: str = "process"
) -> float:
    """How many times faster batchcore (``mine_key``) ran ``task`` on the main file than
    ``other``."""
    return speedup(cells.get(("main", task, other)), cells.get(("main", task, mine_key)))


def report(
    args: argparse.Namespace,
    header: list[str],
    files: dict[str, Path],
    cells: dict[tuple[str, str, str], Cell],
    plan: dict[str, list[str]],
    problems: list[str],
) -> str:
    size = files["main"].stat().st_size
    lines = ["# CSV: batchcore's CSV engine and the tools a user would pick instead", ""]
    lines += header
    lines += ["", f"## Results ({size / MB:,.0f} MB file)", ""]
    if args.quick:
        lines += ["Smoke test (`--quick`): a small file and one repeat; indicative only.", ""]
    head = ["engine"]
    for task in args.tasks:
        head += [f"{task} s", f"{task} MB/s", f"{task} peak tree RSS MiB"]
    rows = []
    for engine in plan["main"]:
        row = [label(engine, args.workers)]
        for task in args.tasks:
            cell = cells["main", task, engine]
            if cell.skip or not cell.ok:
                row += [seconds_cell(cell), "-", "-"]
                continue
            row += [seconds_cell(cell), f"{size / MB / cell.median():.0f}", f"{cell.peak():.0f}"]
        rows.append(row)
    lines += table(head, rows)
    lines += [
        "",
        "Seconds: median over repeats of the job's time inside a fresh child process (imports "
        "excluded; for batchcore thread and process the pool start-up is included, and shown in "
        "brackets). MB/s: file bytes (10^6) / seconds. Peak tree RSS: the highest sum of the "
        f"RSS of the child and all its descendants, sampled every {args.interval * 1000:.0f} ms "
        "(median over repeats; shared library pages count once per process, as RSS does).",
    ]
    lines += targets_section(args, cells, plan)
    lines += ["", "## How each engine runs", ""]
    lines += [f"- {label(e, args.workers)}: {HOW[e]}" for e in plan["main"]]
    lines += detail_section(args, files, cells, plan)
    if problems:
        lines += ["", "## Errors and mismatches", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def mib(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f} MiB"


def targets_section(
    args: argparse.Namespace, cells: dict[tuple[str, str, str], Cell], plan: dict[str, list[str]]
) -> list[str]:
    lines = ["", "## batchcore process against the issue's targets", ""]
    if "process" not in plan["main"]:
        return [*lines, "Not judged: batchcore process was not among `--engines`."]
    warm = "process-warm" in plan["main"] and "T2" in args.tasks
    head = ["batchcore process vs", *args.tasks, *(["T2, warm pool"] if warm else [])]
    head += ["target (T2)", "verdict"]
    rows = []
    for other, minimum in [*SPEED_TARGETS, NEXT_MARK]:
        if other not in plan["main"]:
            continue
        cell = cells["main", args.tasks[0], other]
        values = [ratio(cells, task, other) for task in args.tasks]
        if warm:
            values.append(ratio(cells, "T2", other, "process-warm"))
        shown = [times(v, missing=cell.skip or "-") for v in values]
        t2 = ratio(cells, "T2", other) if "T2" in args.tasks else math.nan
        if (other, minimum) == NEXT_MARK:
            target, verdict = "the next mark (>= 1.0x)", "reached" if t2 >= minimum else "-"
        else:
            target = f">= {minimum:g}x"
            verdict = "-" if math.isnan(t2) else ("**pass**" if t2 >= minimum else "**FAIL**")
        rows.append([label(other, args.workers), *shown, target, verdict])
    peaks = [cells["main", task, "process"].peak() for task in args.tasks]
    if warm:
        peaks.append(cells["main", "T2", "process-warm"].peak())
    rss_target = f"< {RSS_LIMIT_MIB} MiB"
    small_peaks: list[float] = []
    if "small" in plan:
        small_peaks = [cells["small", task, "process"].peak() for task in args.tasks]
        rss_target += f", and not over {RSS_GROWTH:.0%} more than on the small file"
    every = peaks + small_peaks
    verdict = "-"
    if every and not any(math.isnan(v) for v in every):
        ok = all(v < RSS_LIMIT_MIB for v in every)
        ok = ok and all(
            big <= small * (1 + RSS_GROWTH) for big, small in zip(peaks, small_peaks, strict=False)
        )
        verdict = "**pass**" if ok else "**FAIL**"
    rows.append(["peak tree RSS (main file)", *map(mib, peaks), rss_target, verdict])
    if small_peaks:
        blank = ["-"] if warm else []
        rows.append(["peak tree RSS (small file)", *map(mib, small_peaks), *blank, "", ""])
    lines += table(head, rows, align="l" + "r" * (len(head) - 3) + "ll")
    lines += [
        "",
        "Speedup: the peer's median seconds / batchcore process's median seconds (its pool "
        "start-up included), both measured in this run. The issue's speed targets are for T2; "
        "T1 is shown for information. 2.00x over batchcore sequential is the ceiling on 2 cores. "
        "The verdict judges the cold run; the warm-pool column is the same job in a program "
        "whose pool is already running (its start-up excluded), for information.",
    ]
    if "small" in plan:
        lines += ["", "### Peak RSS and file size (batchcore process)", ""]
        head = ["file", "bytes"]
        for t in args.tasks:
            head += [f"{t} s", f"{t} peak tree RSS MiB", f"{t} peak anon MiB"]
        rows = []
        for which in ("small", "main"):
            path = args.files[which]
            row = [path.name, f"{path.stat().st_size:,}"]
            for task in args.tasks:
                cell = cells[which, task, "process"]
                row += [seconds_cell(cell), fmt(cell.peak(), 0), fmt(cell.peak_anon(), 0)]
            rows.append(row)
        lines += table(head, rows)
    return lines


def detail_section(
    args: argparse.Namespace,
    files: dict[str, Path],
    cells: dict[tuple[str, str, str], Cell],
    plan: dict[str, list[str]],
) -> list[str]:
    lines = ["", "## Every run: seconds (min-max), start-up, memory", ""]
    head = ["file", "task", "engine", "median s (min-max)", "start-up s", "child wall s"]
    head += ["peak tree RSS MiB", "peak anon MiB", "child's own share at peak MiB"]
    head += ["child ru_maxrss MiB", "processes", "notes"]
    rows = []
    for which, engines in plan.items():
        for task in args.tasks:
            for engine in engines:
                cell = cells[which, task, engine]
                first = [files[which].name, task, label(engine, args.workers)]
                if cell.skip or not cell.ok:
                    status = cell.skip or ("ERROR" if cell.error else "?")
                    rows.append([*first, status, *[""] * 8])
                    continue
                runs = cell.ok
                processes = statistics.median(len(run.tree.processes) for run in runs)
                notes = {k: v for k, v in runs[-1].details.items() if v != 0}
                note = ", ".join(f"{k} {v}" for k, v in notes.items() if k != "pool_start")
                if "pool_start" in notes:
                    note = f"`start()` {notes['pool_start']:.3f} s, " + note
                rows.append(
                    [
                        *first,
                        cell.spread(),
                        fmt(cell.median("startup")),
                        fmt(cell.median("wall")),
                        fmt(cell.peak(), 0),
                        fmt(cell.peak_anon(), 0),
                        fmt(median(r.tree.main_at_peak_mib for r in runs), 0),
                        fmt(cell.median("maxrss_mib"), 0),
                        f"{processes:g}",
                        note,
                    ]
                )
    lines += table(head, rows, align="lll" + "r" * 8 + "l")
    lines += [
        "",
        "Start-up: pool start-up inside the timed job (batchcore thread and process). Child "
        "wall: the child process from start to exit as the parent saw it (interpreter, imports, "
        "job, shutdown). Peak anon: the same tree sum without file-backed and shared pages "
        "(libraries), i.e. the data. ru_maxrss: the child's own peak, exact but without its "
        "workers (Linux starts it at the launching parent's peak, which is small here). "
        "Processes: how many processes the tree had (the child and its workers).",
    ]
    return lines


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default=None, help="generated file size (default 1GB)")
    parser.add_argument("--path", type=Path, help="use this CSV file (same columns) instead")
    parser.add_argument(
        "--small-size",
        default=None,
        help="a second, smaller file for batchcore process only, to compare peak RSS "
        "(default 100MB, 10MB with --quick; 0 to skip)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="batchcore thread/process workers")
    parser.add_argument("--chunk-bytes", type=int, default=None, help="batchcore range size")
    parser.add_argument("--tasks", default="T1,T2", help="tasks to run, e.g. T2")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to run")
    add_child_options(
        parser, pause=3.0, interval=0.01, env_example="ARROW_DEFAULT_MEMORY_POOL=system"
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="generated files go here")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--quick", action="store_true", help="50MB file, 1 repeat, 0.5 s pause")
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.env = parse_env(args.env, parser)
    args.tasks = parse_list(parser, "--tasks", args.tasks, TASKS, upper=True)
    args.engines = parse_list(parser, "--engines", args.engines, ENGINES)
    if args.one:
        engine, task = args.one
        if engine not in ENGINES or task not in TASKS:
            parser.error(f"--one ENGINE TASK: engines {sorted(ENGINES)}, tasks {sorted(TASKS)}")
        if args.path is None:
            parser.error("--one needs --path")
        return args
    if args.path is not None and not args.path.is_file():
        parser.error(f"--path: no such file: {str(args.path)!r}")
    args.size = args.size or ("50MB" if args.quick else "1GB")
    if args.small_size is None:
        args.small_size = "10MB" if args.quick else "100MB"
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.pause = args.pause if args.pause is not None else (0.5 if args.quick else 3.0)
    args.timeout = args.timeout or (120.0 if args.quick else 600.0)
    check_counts(parser, args)
    args.output = args.output or default_output("csv", args.quick, args.env)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return one(args.one[0], args.one[1], str(args.path), args.workers, args.chunk_bytes)
    session = Session.start()
    files = {"main": args.path.resolve() if args.path else ensure_file(args.size, args.data_dir)}
    plan = {"main": list(args.engines)}
    small_bytes = 0
    if args.small_size not in ("0", "none") and "process" in args.engines:
        small_bytes = load_make_sales().parse_size(args.small_size)
        if small_bytes < files["main"].stat().st_size:
            files["small"] = ensure_file(args.small_size, args.data_dir)
            plan["small"] = ["process"]
    args.files = files
    floor = {which: read_rate(path) for which, path in files.items()}
    print(
        f"{files['main']}: {files['main'].stat().st_size:,} bytes, cached read "
        f"{floor['main']:.1f} GB/s; {args.repeats} repeats, pause {args.pause:g} s",
        flush=True,
    )
    cells = make_cells(args, plan)
    parent_cpu = time.process_time()
    try:
        run_all(args, files, plan, cells)
    except KeyboardInterrupt:
        print("interrupted: the running child and its workers were killed", file=sys.stderr)
        return 130
    parent_cpu = time.process_time() - parent_cpu
    problems = check_results(cells)
    problems += [
        f"{which} file {task}: {ENGINES[engine]}: {run.error}"
        for (which, task, engine), cell in cells.items()
        for run in cell.runs
        if run.error
    ]
    problems += leftover_problems()

    rows: dict[str, int] = {}
    for (which, _task, _engine), cell in cells.items():
        if cell.ok:
            rows.setdefault(which, cell.ok[0].result["rows"])
    pools = sorted(
        {
            run.details["arrow_pool"]
            for c in cells.values()
            for run in c.ok
            if "arrow_pool" in run.details
        }
    )
    file_lines = [
        f"`{path}`: {path.stat().st_size:,} bytes, {rows.get(which, 0):,} rows, cached "
        f"16 MiB `readinto` {floor[which]:.1f} GB/s"
        for which, path in files.items()
    ]
    header = session.header(package_versions(PACKAGES))
    header += [
        "- Files: " + "; ".join(file_lines),
        f"- Method: every (engine, task) run in a fresh child process after a {args.pause:g} s "
        f"pause; {args.repeats} repeat(s), medians; engines take turns within each repeat; "
        f"batchcore workers: {args.workers}"
        + (f", chunk_bytes {args.chunk_bytes:,}" if args.chunk_bytes else ", default chunk_bytes"),
        f"- Children's extra environment: {env_line(args.env)}; pyarrow memory pool seen in "
        f"children: {', '.join(pools) or '-'}",
        sampler_line(cells.values(), args.interval, parent_cpu),
        "- Results: every engine's rows, sums (1e-6 relative) and per-region counts checked "
        "against the first run; "
        + (f"{len(problems)} problem(s), see the end" if problems else "all agree"),
    ]
    write_report(args.output, report(args, header, files, cells, plan, problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
