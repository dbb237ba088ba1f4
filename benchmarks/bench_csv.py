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
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from common import cpu_model, leftover_processes, package_versions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MAKE_SALES = ROOT / "data" / "make_sales.py"
DATA_DIR = Path("/tmp/batchcore-bench")
MIB = 1 << 20
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


@dataclass
class Outcome:
    """What a child measured: seconds of work (start-up included), the start-up alone, the
    result (``rows`` and ``amount`` for T1; ``rows`` and ``groups`` for T2) and notes."""

    seconds: float
    result: dict[str, Any]
    startup: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def warm_up(backend: str, workers: int) -> None:
    """Start the pool and wait until every worker has imported the CSV engine."""
    import batchcore

    pool = batchcore.get_backend(backend, workers=workers)
    pool.start()  # type: ignore[attr-defined]
    node = make_warmup_node()(backend=backend, workers=workers, chunksize=1)
    seen: set[int] = set()
    while len(seen) < workers:
        shared: dict[str, Any] = {"items": 4 * workers}
        node.run(shared)
        seen |= shared["pids"]


def make_warmup_node() -> type:
    """A tiny BatchNode whose items report the worker's pid after importing the CSV engine."""
    from batchcore import BatchNode

    class WorkerPids(BatchNode):
        def prep(self, shared: dict[str, Any]) -> range:
            return range(shared["items"])

        def exec(self, item: int) -> int:
            import batchcore.processors.csv.jobs  # noqa: F401  (what the first real batch would import)

            time.sleep(0.02)  # long enough that a second worker gets the next item
            return os.getpid()

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
            shared["pids"] = set(exec_res)

    return WorkerPids


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers, once shut down)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def run_batchcore(
    backend: str, task: str, path: str, workers: int, chunk_bytes: int | None
) -> Outcome:
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
            warm_up(backend, workers)
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
    return Outcome(done - began, result, ready - began, details)


def run_pandas(task: str, path: str) -> Outcome:
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
    return Outcome(seconds, result, details={"region_dtype": f"{region_dtype} ({storage})"})


def run_pyarrow(task: str, path: str) -> Outcome:
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
    return Outcome(seconds, result, details={"table_mib": round(table.nbytes / MIB)})


def run_polars(task: str, path: str) -> Outcome:
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
    return Outcome(seconds, result, details={"threads": pl.thread_pool_size()})


def run_duckdb(task: str, path: str) -> Outcome:
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
    return Outcome(seconds, result, details={"threads": threads})


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
    report = {
        "engine": engine,
        "task": task,
        "seconds": outcome.seconds,
        "startup": outcome.startup,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "result": outcome.result,
        "details": outcome.details,
    }
    print(json.dumps(report))
    return 0


# --- the parent: files, children, the RSS sampler -----------------------------------------------


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


@dataclass
class TreeSample:
    """What the sampler saw of one child's process tree."""

    peak_mib: float = 0.0
    peak_anon_mib: float = 0.0  # RSS minus file-backed and shared pages (libraries): the data
    main_at_peak_mib: float = 0.0  # the child's own share of the peak
    processes: set[tuple[int, float]] = field(default_factory=set)  # (pid, create time) seen
    samples: int = 0
    cpu_seconds: float = 0.0  # the sampler thread's own CPU time


class TreeSampler:
    """Sums the RSS of a process and all its descendants every ``interval`` seconds.

    Finding descendants reads every process's ``/proc/PID/stat`` (~1 ms here), so it runs every
    ``rescan``-th tick; reading the RSS of the known ones costs ~10 us each.
    """

    def __init__(self, pid: int, interval: float = 0.01, rescan: int = 5) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.rescan = rescan
        self.sample = TreeSample()
        self.known: dict[int, psutil.Process] = {pid: self.root}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()

    def loop(self) -> None:
        began = time.thread_time()
        tick = 0
        while not self.stop_event.is_set():
            if tick % self.rescan == 0:
                self.discover()
            self.measure()
            tick += 1
            self.stop_event.wait(self.interval)
        self.sample.cpu_seconds = time.thread_time() - began

    def discover(self) -> None:
        with contextlib.suppress(psutil.Error):
            children = self.root.children(recursive=True)
            self.known = {self.root.pid: self.root} | {child.pid: child for child in children}
            for proc in self.known.values():
                with contextlib.suppress(psutil.Error):
                    self.sample.processes.add((proc.pid, proc.create_time()))

    def measure(self) -> None:
        total = anon = main = 0
        for pid, proc in list(self.known.items()):
            try:
                memory = proc.memory_info()
            except psutil.Error:
                continue
            total += memory.rss
            anon += memory.rss - memory.shared
            if pid == self.root.pid:
                main = memory.rss
        sample = self.sample
        sample.samples += 1
        if total / MIB > sample.peak_mib:
            sample.peak_mib = total / MIB
            sample.main_at_peak_mib = main / MIB
        sample.peak_anon_mib = max(sample.peak_anon_mib, anon / MIB)


@dataclass
class Run:
    """One child run: its report, or why there is none."""

    seconds: float = math.nan
    startup: float = 0.0
    wall: float = math.nan  # the child process from Popen to exit, as the parent saw it
    tree: TreeSample = field(default_factory=TreeSample)
    maxrss_mib: float = math.nan
    result: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def leftovers(seen: set[tuple[int, float]], child_pid: int) -> list[str]:
    """Descendants of a finished child still alive after 5 s: killed here, and reported."""
    alive = []
    for pid, created in seen:
        if pid == child_pid:
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                alive.append(proc)
    if not alive:
        return []
    _gone, still = psutil.wait_procs(alive, timeout=5)
    names = []
    for proc in still:
        with contextlib.suppress(psutil.Error):
            names.append(f"pid {proc.pid} ({' '.join(proc.cmdline())[:80]})")
            proc.kill()
    psutil.wait_procs(still, timeout=5)
    return names


def run_child(command: list[str], env: dict[str, str], timeout: float, interval: float) -> Run:
    """Start ``command`` in its own session, sample its tree, parse its JSON report."""
    run = Run()
    began = time.perf_counter()
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    sampler = TreeSampler(child.pid, interval)
    try:
        with sampler:
            try:
                out, err = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)  # the child and its workers
                out, err = child.communicate()
                run.error = f"timed out after {timeout:g} s"
    except BaseException:  # Ctrl-C: the child's session does not get it from the terminal
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        leftovers(sampler.sample.processes, child.pid)
        raise
    run.wall = time.perf_counter() - began
    run.tree = sampler.sample
    stray = leftovers(run.tree.processes, child.pid)
    if stray:
        run.error = (run.error + "; " if run.error else "") + f"left behind: {', '.join(stray)}"
    if child.returncode != 0 and not run.error:
        tail = (err.strip() or out.strip())[-800:]
        run.error = f"child exited {child.returncode}: {tail}"
    if run.error:
        return run
    report = json.loads(out.strip().splitlines()[-1])
    run.seconds = report["seconds"]
    run.startup = report["startup"]
    run.maxrss_mib = report["maxrss_mib"]
    run.result = report["result"]
    run.details = report["details"]
    return run


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


@dataclass
class Cell:
    """One engine on one task and file: its runs."""

    runs: list[Run] = field(default_factory=list)
    skip: str = ""

    @property
    def ok(self) -> list[Run]:
        return [run for run in self.runs if not run.error]

    @property
    def error(self) -> str:
        return next((run.error for run in self.runs if run.error), "")

    def median(self, name: str = "seconds") -> float:
        values = [getattr(run, name) for run in self.ok]
        return statistics.median(values) if values else math.nan

    def peak(self) -> float:
        values = [run.tree.peak_mib for run in self.ok]
        return statistics.median(values) if values else math.nan

    def peak_anon(self) -> float:
        values = [run.tree.peak_anon_mib for run in self.ok]
        return statistics.median(values) if values else math.nan


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
    env: dict[str, str],
    cells: dict[tuple[str, str, str], Cell],
) -> None:
    """Every repeat runs every (file, task, engine); engines take turns in the order."""
    for repeat in range(args.repeats):
        for which, engines in plan.items():
            for task in args.tasks:
                active = [e for e in engines if not cells[which, task, e].skip]
                active = [e for e in active if not cells[which, task, e].error]
                turn = repeat % max(len(active), 1)
                for engine in active[turn:] + active[:turn]:
                    time.sleep(args.pause)
                    command = child_command(engine, task, files[which], args)
                    run = run_child(command, env, args.timeout, args.interval)
                    cells[which, task, engine].runs.append(run)
                    tag = f"{which} {task} repeat {repeat + 1}: {ENGINES[engine]}"
                    if run.error:
                        print(f"  {tag}: ERROR {run.error}", flush=True)
                        continue
                    startup = f" (start-up {run.startup:.2f} s)" if run.startup >= 0.005 else ""
                    print(
                        f"  {tag}: {run.seconds:.2f} s{startup}, "
                        f"peak tree RSS {run.tree.peak_mib:.0f} MiB",
                        flush=True,
                    )


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


def versions() -> str:
    return ", ".join(package_versions(PACKAGES))


def fmt(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def label(engine: str, workers: int) -> str:
    if engine in ("thread", "process", "process-warm"):
        return f"{ENGINES[engine]} ({workers} workers)"
    return ENGINES[engine]


def seconds_cell(cell: Cell) -> str:
    if cell.skip:
        return cell.skip
    if not cell.ok:
        return "ERROR" if cell.error else "?"
    text = fmt(cell.median())
    startup = cell.median("startup")
    if startup >= 0.005:
        text += f" (start-up {startup:.2f})"
    return text


def ratio(
    cells: dict[tuple[str, str, str], Cell], task: str, other: str, mine_key: str = "process"
) -> float:
    mine = cells.get(("main", task, mine_key))
    theirs = cells.get(("main", task, other))
    if mine is None or theirs is None or not mine.ok or not theirs.ok:
        return math.nan
    return theirs.median() / mine.median()


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
    tasks = args.tasks
    head = "| engine |"
    rule = "|---|"
    for task in tasks:
        head += f" {task} s | {task} MB/s | {task} peak tree RSS MiB |"
        rule += "---:|---:|---:|"
    lines += [head, rule]
    for engine in plan["main"]:
        row = f"| {label(engine, args.workers)} |"
        for task in tasks:
            cell = cells["main", task, engine]
            if cell.skip or not cell.ok:
                row += f" {seconds_cell(cell)} | - | - |"
                continue
            row += f" {seconds_cell(cell)} | {size / MB / cell.median():.0f} | {cell.peak():.0f} |"
        lines.append(row)
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


def targets_section(
    args: argparse.Namespace, cells: dict[tuple[str, str, str], Cell], plan: dict[str, list[str]]
) -> list[str]:
    lines = ["", "## batchcore process against the issue's targets", ""]
    if "process" not in plan["main"]:
        return [*lines, "Not judged: batchcore process was not among `--engines`."]
    warm = "process-warm" in plan["main"] and "T2" in args.tasks
    lines.append(
        "| batchcore process vs | "
        + " | ".join(args.tasks)
        + (" | T2, warm pool" if warm else "")
        + " | target (T2) | verdict |"
    )
    lines.append("|---|" + "---:|" * (len(args.tasks) + warm) + "---|---|")
    peers = [*SPEED_TARGETS, NEXT_MARK]
    for other, minimum in peers:
        if other not in plan["main"]:
            continue
        cell = cells["main", args.tasks[0], other]
        values = [ratio(cells, task, other) for task in args.tasks]
        if warm:
            values.append(ratio(cells, "T2", other, "process-warm"))
        shown = [f"{v:.2f}x" if not math.isnan(v) else (cell.skip or "-") for v in values]
        t2 = ratio(cells, "T2", other) if "T2" in args.tasks else math.nan
        if (other, minimum) == NEXT_MARK:
            target, verdict = "the next mark (>= 1.0x)", "reached" if t2 >= minimum else "-"
        else:
            target = f">= {minimum:g}x"
            verdict = "-" if math.isnan(t2) else ("**pass**" if t2 >= minimum else "**FAIL**")
        lines.append(
            f"| {label(other, args.workers)} | " + " | ".join(shown) + f" | {target} | {verdict} |"
        )
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
    shown = [f"{v:.0f} MiB" if not math.isnan(v) else "-" for v in peaks]
    lines.append(
        "| peak tree RSS (main file) | " + " | ".join(shown) + f" | {rss_target} | {verdict} |"
    )
    if small_peaks:
        shown = [f"{v:.0f} MiB" if not math.isnan(v) else "-" for v in small_peaks]
        blank = " | -" if warm else ""
        lines.append("| peak tree RSS (small file) | " + " | ".join(shown) + blank + " | | |")
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
        lines.append(
            "| file | bytes | "
            + " | ".join(f"{t} s | {t} peak tree RSS MiB | {t} peak anon MiB" for t in args.tasks)
            + " |"
        )
        lines.append("|---|---:|" + "---:|---:|---:|" * len(args.tasks))
        for which in ("small", "main"):
            path = args.files[which]
            row = f"| {path.name} | {path.stat().st_size:,} |"
            for task in args.tasks:
                cell = cells[which, task, "process"]
                row += (
                    f" {seconds_cell(cell)} | {fmt(cell.peak(), 0)} | {fmt(cell.peak_anon(), 0)} |"
                )
            lines.append(row)
    return lines


def detail_section(
    args: argparse.Namespace,
    files: dict[str, Path],
    cells: dict[tuple[str, str, str], Cell],
    plan: dict[str, list[str]],
) -> list[str]:
    lines = ["", "## Every run: seconds (min-max), start-up, memory", ""]
    lines += [
        "| file | task | engine | median s (min-max) | start-up s | child wall s | "
        "peak tree RSS MiB | peak anon MiB | child's own share at peak MiB | "
        "child ru_maxrss MiB | processes | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for which, engines in plan.items():
        for task in args.tasks:
            for engine in engines:
                cell = cells[which, task, engine]
                name = files[which].name
                if cell.skip or not cell.ok:
                    status = cell.skip or ("ERROR" if cell.error else "?")
                    lines.append(
                        f"| {name} | {task} | {label(engine, args.workers)} | {status} |" + " |" * 8
                    )
                    continue
                seconds = [run.seconds for run in cell.ok]
                spread = fmt(cell.median())
                if len(seconds) > 1:
                    spread += f" ({min(seconds):.2f}-{max(seconds):.2f})"
                runs = cell.ok
                processes = statistics.median(len(run.tree.processes) for run in runs)
                notes = {k: v for k, v in runs[-1].details.items() if v != 0}
                note = ", ".join(f"{k} {v}" for k, v in notes.items() if k != "pool_start")
                if "pool_start" in notes:
                    note = f"`start()` {notes['pool_start']:.3f} s, " + note
                lines.append(
                    f"| {name} | {task} | {label(engine, args.workers)} | {spread} | "
                    f"{fmt(cell.median('startup'))} | {fmt(cell.median('wall'))} | "
                    f"{fmt(cell.peak(), 0)} | {fmt(cell.peak_anon(), 0)} | "
                    f"{fmt(statistics.median(r.tree.main_at_peak_mib for r in runs), 0)} | "
                    f"{fmt(cell.median('maxrss_mib'), 0)} | {processes:g} | {note} |"
                )
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


def parse_env(items: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env must look like KEY=VALUE, got {item!r}")
        env[key] = value
    return env


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
    parser.add_argument("--pause", type=float, default=None, help="seconds before each run (3)")
    parser.add_argument("--workers", type=int, default=2, help="batchcore thread/process workers")
    parser.add_argument("--chunk-bytes", type=int, default=None, help="batchcore range size")
    parser.add_argument("--tasks", default="T1,T2", help="tasks to run, e.g. T2")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to run")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in every child's environment, e.g. ARROW_DEFAULT_MEMORY_POOL=system",
    )
    parser.add_argument("--interval", type=float, default=0.01, help="RSS sampling period, s")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="generated files go here")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--quick", action="store_true", help="50MB file, 1 repeat, 0.5 s pause")
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.env = parse_env(args.env, parser)
    args.tasks = [t.strip().upper() for t in args.tasks.split(",") if t.strip()]
    bad = sorted(set(args.tasks) - set(TASKS))
    if bad or not args.tasks:
        parser.error(f"--tasks: unknown {bad}; valid tasks are {sorted(TASKS)}")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = sorted(set(engines) - set(ENGINES))
    if bad or not engines:
        parser.error(f"--engines: unknown {bad}; valid engines are {sorted(ENGINES)}")
    args.engines = [e for e in ENGINES if e in engines]
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
    if args.repeats < 1 or args.workers < 1 or args.pause < 0 or args.interval <= 0:
        parser.error("--repeats and --workers must be >= 1, --pause >= 0, --interval > 0")
    if args.output is None:
        name = "csv-quick" if args.quick else "csv"
        for key, value in sorted(args.env.items()):
            name += "-" + re.sub(r"[^A-Za-z0-9.]+", "-", f"{key}-{value}").lower()
        args.output = RESULTS / f"{name}.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return one(args.one[0], args.one[1], str(args.path), args.workers, args.chunk_bytes)
    began = time.perf_counter()
    started_at = datetime.datetime.now().astimezone()
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
    env = {**os.environ, **args.env}
    load_before = os.getloadavg()
    print(
        f"{files['main']}: {files['main'].stat().st_size:,} bytes, cached read "
        f"{floor['main']:.1f} GB/s; {args.repeats} repeats, pause {args.pause:g} s",
        flush=True,
    )
    cells = make_cells(args, plan)
    parent_cpu = time.process_time()
    try:
        run_all(args, files, plan, env, cells)
    except KeyboardInterrupt:
        print("interrupted: the running child and its workers were killed", file=sys.stderr)
        return 130
    sampler_cpu = sum(run.tree.cpu_seconds for cell in cells.values() for run in cell.runs)
    child_wall = sum(run.wall for cell in cells.values() for run in cell.runs if run.wall > 0)
    parent_cpu = time.process_time() - parent_cpu
    problems = check_results(cells)
    problems += [
        f"{which} file {task}: {ENGINES[engine]}: {run.error}"
        for (which, task, engine), cell in cells.items()
        for run in cell.runs
        if run.error
    ]
    stray = leftover_processes()
    if stray:
        problems.append(f"processes still running at the end: {stray}")
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - began

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
    command = shlex.join([sys.executable, *sys.argv])
    file_lines = [
        f"`{path}`: {path.stat().st_size:,} bytes, {rows.get(which, 0):,} rows, cached "
        f"16 MiB `readinto` {floor[which]:.1f} GB/s"
        for which, path in files.items()
    ]
    header = [
        f"- Date: {started_at:%Y-%m-%d %H:%M %Z}; whole run {elapsed:.0f} s",
        f"- Machine: nproc {len(os.sched_getaffinity(0))} ({cpu_model()}), "
        f"{platform.system()} {platform.release()}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after",
        f"- Python {platform.python_version()}; packages: {versions()}",
        f"- Command: `cd {os.getcwd()} && {command}`",
        "- Files: " + "; ".join(file_lines),
        f"- Method: every (engine, task) run in a fresh child process after a {args.pause:g} s "
        f"pause; {args.repeats} repeat(s), medians; engines take turns within each repeat; "
        f"batchcore workers: {args.workers}"
        + (f", chunk_bytes {args.chunk_bytes:,}" if args.chunk_bytes else ", default chunk_bytes"),
        "- Children's extra environment: "
        + (", ".join(f"`{k}={v}`" for k, v in args.env.items()) if args.env else "none")
        + f"; pyarrow memory pool seen in children: {', '.join(pools) or '-'}",
        f"- RSS sampler: every {args.interval * 1000:.0f} ms (descendants rediscovered every "
        f"5th sample); it used {sampler_cpu:.1f} s CPU over {child_wall:.0f} s of child runs "
        f"({100 * sampler_cpu / max(child_wall, 1e-9):.1f}% of a core); "
        f"parent CPU {parent_cpu:.1f} s",
        "- Results: every engine's rows, sums (1e-6 relative) and per-region counts checked "
        "against the first run; "
        + (f"{len(problems)} problem(s), see the end" if problems else "all agree"),
    ]
    text = report(args, header, files, cells, plan, problems)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    print(text)
    print(f"written to {args.output}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
