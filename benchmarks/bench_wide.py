"""``batchcore csv stats`` as a user runs it, cold, beside the tools a user would pick instead, on
a wide real-world-shaped file and on the sales file.

Jobs (the same question asked of every engine)::

    flights  --sum dep_delay --sum distance --group-by carrier   (data/make_flights.py: 20
             columns, integer columns with NA for missing values)
    sales    --sum amount --sum qty --group-by region              (data/make_sales.py)

Engines: the ``batchcore`` CLI with no ``--backend`` (the default), and with ``--backend
sequential``, ``thread`` and ``process``; polars ``scan_csv`` streaming (``null_values="NA"`` on
the flights file: it fails without); DuckDB ``read_csv`` (``nullstr='NA'`` on the flights file);
the seed's ``pandas.read_csv(chunksize=1_000_000)`` loop; ``pyarrow.csv.read_csv``
(multi-threaded, whole file) + ``group_by``.

Every run is a fresh process (the CLI itself, or ``bench_wide.py --one ENGINE``), timed by the
parent from start to exit: interpreter, imports and job, as a user waits for it. The parent
samples the RSS of the child's whole process tree, reads the CPU seconds of the child and the
workers it reaped, and checks every engine's rows, sums and per-group counts against the others::

    parent --pause--> child (python; imports; job; JSON line) --> parent: wall, CPU, results
       \\-- sampler thread: sum of RSS over the child's process tree, every 10 ms --/

    python benchmarks/bench_wide.py                       # 300 MB and 1 GB: results/csv-wide.md
    python benchmarks/bench_wide.py --sizes 300MB         # one size
    python benchmarks/bench_wide.py --quick               # smoke test: 20 MB, 1 repeat
    python benchmarks/bench_wide.py --one polars --job flights --path FILE   # one child run
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    DATA_DIR,
    ROOT,
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

MB = 10**6
RELATIVE = 1e-6  # sums must agree to this relative tolerance; row and group counts exactly
RSS_LIMIT_MIB = 500
PACKAGES = ["batchcore", "pyarrow", "pandas", "numpy", "polars", "duckdb", "psutil"]


@dataclass(frozen=True)
class Job:
    """One file kind and the question asked of it."""

    generator: str  # data/<generator>.py writes the file
    sums: tuple[str, ...]
    key: str
    na: bool  # integer columns hold NA: polars and DuckDB must be told

    def cli_args(self) -> list[str]:
        return [arg for name in self.sums for arg in ("--sum", name)] + ["--group-by", self.key]


JOBS = {
    "flights": Job("make_flights", ("dep_delay", "distance"), "carrier", na=True),
    "sales": Job("make_sales", ("amount", "qty"), "region", na=False),
}
CLI = {"default": None, "sequential": "sequential", "thread": "thread", "process": "process"}
ENGINES = {
    "default": "batchcore CLI, default backend (no `--backend`)",
    "sequential": "batchcore CLI `--backend sequential`",
    "thread": "batchcore CLI `--backend thread`",
    "process": "batchcore CLI `--backend process`",
    "polars": "polars `scan_csv` streaming",
    "duckdb": "DuckDB `read_csv`",
    "pandas": "pandas `read_csv(chunksize=1_000_000)` loop",
    "pyarrow": "pyarrow `read_csv` (multi-threaded) + `group_by`",
}
SMALL_ENGINES = ["default", "sequential", "process"]  # the small file: start-up costs
RATIO_BASES = ["polars", "duckdb", "pandas", "sequential"]

# --- the child: one peer engine, one fresh process ----------------------------------------------


def run_polars(job: Job, path: str) -> list[dict[str, Any]]:
    import polars as pl

    frame = pl.scan_csv(path, null_values="NA" if job.na else None)
    query = frame.group_by(job.key).agg(
        pl.len().alias("count"), *[pl.col(name).sum() for name in job.sums]
    )
    return [dict(row) for row in query.collect(engine="streaming").iter_rows(named=True)]


def run_duckdb(job: Job, path: str) -> list[dict[str, Any]]:
    import duckdb

    nulls = ", nullstr='NA'" if job.na else ""
    source = "read_csv('" + path.replace("'", "''") + "'" + nulls + ")"
    sums = ", ".join(f'sum("{name}") as "{name}"' for name in job.sums)
    sql = f'select "{job.key}", count(*) as count, {sums} from {source} group by "{job.key}"'
    relation = duckdb.sql(sql)
    assert relation is not None
    names = [column[0] for column in relation.description]
    return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]


def run_pandas(job: Job, path: str) -> list[dict[str, Any]]:
    import pandas as pd

    parts = []
    aggregations: dict[str, Any] = {"count": (job.key, "size")}
    aggregations |= {name: (name, "sum") for name in job.sums}
    with pd.read_csv(path, chunksize=1_000_000) as reader:
        for chunk in reader:
            parts.append(chunk.groupby(job.key).agg(**aggregations))
    combined = pd.concat(parts).groupby(level=0).sum()
    return [{job.key: key, **row} for key, row in combined.to_dict("index").items()]


def run_pyarrow(job: Job, path: str) -> list[dict[str, Any]]:
    import pyarrow.csv as pacsv

    whole = pacsv.read_csv(path)
    grouped = whole.group_by(job.key).aggregate(
        [([], "count_all"), *[(name, "sum") for name in job.sums]]
    )
    renamed = {"count_all": "count"} | {f"{name}_sum": name for name in job.sums}
    return [{renamed.get(k, k): v for k, v in row.items()} for row in grouped.to_pylist()]


def one(engine: str, job_name: str, path: str) -> int:
    """Child side: run one peer engine once and print one JSON line (the common result)."""
    job = JOBS[job_name]
    runners = {"polars": run_polars, "duckdb": run_duckdb}
    runners |= {"pandas": run_pandas, "pyarrow": run_pyarrow}
    began = time.perf_counter()
    rows = runners[engine](job, path)
    seconds = time.perf_counter() - began
    groups = {
        str(row[job.key]): {"count": int(row["count"])}
        | {name: float(row[name] or 0) for name in job.sums}
        for row in rows
    }
    emit(Measured(seconds, result=common_result(job, groups)), engine=engine, job=job_name)
    return 0


def common_result(job: Job, groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rows, column sums and groups as every engine reports them here."""
    return {
        "rows": sum(group["count"] for group in groups.values()),
        "sums": {name: sum(group[name] for group in groups.values()) for name in job.sums},
        "groups": groups,
    }


def from_cli(job: Job, report: dict[str, Any]) -> dict[str, Any]:
    """The common result from ``batchcore csv stats --json``'s object."""
    groups = {
        key: {"count": int(group["rows"])} | {name: float(group["sum"][name]) for name in job.sums}
        for key, group in report.get("groups", {}).items()
    }
    result = common_result(job, groups)
    result["rows"] = int(report["rows"])
    result["sums"] = {name: float(report["sum"][name]) for name in job.sums}
    return result


# --- the parent: files, runs, checks -----------------------------------------------------------


def size_label(text: str) -> str:
    """``"1GB"`` -> ``"1g"``, ``"300MB"`` -> ``"300m"``: the file name part."""
    return re.sub(r"[^0-9a-z.]", "", text.lower()).removesuffix("b") or "x"


def parse_size(text: str) -> int:
    sys.path.insert(0, str(ROOT / "data"))
    from make_sales import parse_size as parse

    return parse(text)


def ensure_file(job_name: str, size_text: str, data_dir: Path) -> Path:
    """The generated file of ``job_name`` and ``size_text``; made with its generator if missing."""
    job = JOBS[job_name]
    wanted = parse_size(size_text)
    stem = job.generator.removeprefix("make_")
    path = data_dir / f"{stem}-{size_label(size_text)}.csv"
    if path.exists() and wanted <= path.stat().st_size < wanted + 4096:
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    generator = ROOT / "data" / f"{job.generator}.py"
    print(f"generating {path} ({size_text}) with {generator.name}", flush=True)
    subprocess.run([sys.executable, str(generator), str(partial), "--size", size_text], check=True)
    os.replace(partial, path)
    return path


def command(engine: str, job_name: str, path: Path) -> list[str]:
    """The child's command line: the CLI itself, or this script's ``--one``."""
    if engine in CLI:
        cli = Path(sys.executable).with_name("batchcore")
        backend = CLI[engine]
        chosen = ["--backend", backend] if backend else []
        job = JOBS[job_name]
        return [str(cli), "csv", "stats", str(path), *job.cli_args(), *chosen, "--json"]
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "--one", engine, "--job", job_name, "--path", str(path)]


def run_all(
    args: argparse.Namespace, files: dict[tuple[str, str], Path]
) -> dict[tuple[str, str, str], Cell]:
    """Every (file, engine) run, engines taking turns within each repeat."""
    cells: dict[tuple[str, str, str], Cell] = {}
    for (job_name, size), path in files.items():
        engines = args.small_engines if size == args.small_size else args.engines
        for engine in engines:
            cells[job_name, size, engine] = Cell()
        for repeat in range(args.repeats):
            for engine in take_turns(engines, repeat):
                time.sleep(args.pause)
                run = run_child(
                    command(engine, job_name, path),
                    timeout=args.timeout,
                    extra_env=args.env,
                    interval=args.interval,
                )
                if not run.error and engine in CLI:
                    try:
                        run.result = from_cli(JOBS[job_name], run.report)
                    except (KeyError, TypeError, ValueError) as exc:
                        run.error = f"unexpected CLI output: {exc!r}"
                cells[job_name, size, engine].runs.append(run)
                tag = f"{job_name} {size} {engine} #{repeat + 1}"
                progress(tag, run, f"wall {run.wall:.2f} s", f"CPU {run.cpu_seconds:.2f} s")
    return cells


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RELATIVE, abs_tol=1e-9)


def check_results(cells: dict[tuple[str, str, str], Cell]) -> list[str]:
    """Every run's rows, sums and per-group counts and sums against the first run on its file."""
    problems = []
    first: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for (job_name, size, engine), cell in cells.items():
        for run in cell.ok:
            where = (job_name, size)
            if where not in first:
                first[where] = (engine, run.result)
                continue
            base_engine, base = first[where]
            got = run.result
            tag = f"{job_name} {size}: {ENGINES[engine]} vs {ENGINES[base_engine]}"
            if got["rows"] != base["rows"]:
                problems.append(f"{tag}: rows {got['rows']} != {base['rows']}")
            for name, value in base["sums"].items():
                if not close(got["sums"][name], value):
                    problems.append(f"{tag}: sum {name} {got['sums'][name]} != {value}")
            if set(got["groups"]) != set(base["groups"]):
                problems.append(
                    f"{tag}: groups {sorted(got['groups'])} != {sorted(base['groups'])}"
                )
                continue
            for key, group in base["groups"].items():
                mine = got["groups"][key]
                if mine["count"] != group["count"]:
                    problems.append(f"{tag}: group {key} count {mine['count']} != {group['count']}")
                for name in JOBS[job_name].sums:
                    if not close(mine[name], group[name]):
                        problems.append(f"{tag}: group {key} {name} {mine[name]} != {group[name]}")
    return problems


def probe_without_options(path: Path) -> dict[str, str]:
    """What polars and DuckDB say on the NA file without ``null_values``/``nullstr``."""
    code = {
        "polars": "import polars as pl; pl.scan_csv(P).group_by('carrier')"
        ".agg(pl.col('dep_delay').sum()).collect(engine='streaming')",
        "duckdb": 'import duckdb; duckdb.sql(f"select carrier, sum(dep_delay) from '
        "read_csv('{P}') group by carrier\").fetchall()",
    }
    said = {}
    for engine, body in code.items():
        done = subprocess.run(
            [sys.executable, "-c", f"P = {str(path)!r}; {body}"], capture_output=True, text=True
        )
        if done.returncode == 0:
            said[engine] = "no error (it got through without the option)"
            continue
        error = [line for line in done.stderr.strip().splitlines() if line.strip()]
        last = next((line for line in error if "Error" in line), error[-1] if error else "?")
        said[engine] = last.strip().replace("`", "'")[:160]
    return said


# --- the report -------------------------------------------------------------------------------


def speedup_over(
    cells: dict[tuple[str, str, str], Cell],
    where: tuple[str, str],
    base: str,
    engine: str,
    name: str = "wall",
) -> float:
    """``base``'s median wall seconds over ``engine``'s on one file (NaN if either failed)."""
    a, b = cells.get((*where, base)), cells.get((*where, engine))
    if a is None or b is None or not a.ok or not b.ok:
        return math.nan
    return a.median(name) / b.median(name)


def wall_spread(cell: Cell) -> str:
    walls = [run.wall for run in cell.ok]
    if not walls:
        return "ERROR" if cell.error else "-"
    text = fmt(cell.median("wall"))
    return text + (f" ({min(walls):.2f}-{max(walls):.2f})" if len(walls) > 1 else "")


def file_table(
    args: argparse.Namespace, cells: dict[tuple[str, str, str], Cell], where: tuple[str, str]
) -> list[str]:
    engines = [e for e in ENGINES if (*where, e) in cells]
    bases = [b for b in RATIO_BASES if b in engines]
    head = ["engine", "wall s (min-max)", "job s", "CPU s", "peak tree RSS MiB", "others' cores"]
    head += [
        f"x {ENGINES[b].split(' ')[0] if b != 'sequential' else 'bc sequential'}" for b in bases
    ]
    rows = []
    for engine in engines:
        cell = cells[(*where, engine)]
        row = [
            ENGINES[engine],
            wall_spread(cell),
            fmt(cell.median()),
            fmt(cell.median("cpu_seconds")),
        ]
        row += [fmt(cell.peak(), 0), fmt(cell.median("other_cores"), 1)]
        row += [times(speedup_over(cells, where, b, engine)) for b in bases]
        rows.append(row)
    return table(head, rows)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**pass**" if ok else "**FAIL**")


def at_least(value: float, minimum: float) -> bool | None:
    return None if math.isnan(value) else value >= minimum


def targets(
    args: argparse.Namespace, cells: dict[tuple[str, str, str], Cell]
) -> tuple[list[str], list[tuple[str, bool | None]]]:
    """The issue's targets per file: table lines, and (name, verdict) for the summary."""
    rows = []
    judged: list[tuple[str, bool | None]] = []

    def add(name: str, shown: str, target: str, ok: bool | None) -> None:
        rows.append([name, shown, target, verdict(ok)])
        judged.append((name, ok))

    for job_name in args.jobs:
        for size in args.sizes:
            where = (job_name, size)
            for peer in ("polars", "duckdb"):
                value = speedup_over(cells, where, peer, "default")
                add(
                    f"{job_name} {size}: default vs {peer}",
                    times(value),
                    ">= 1.00x",
                    at_least(value, 1.0),
                )
            value = speedup_over(cells, where, "pandas", "default")
            add(
                f"{job_name} {size}: default vs pandas loop",
                times(value),
                ">= 2.00x",
                at_least(value, 2.0),
            )
            if parse_size(size) < 600 * MB:
                value = speedup_over(cells, where, "sequential", "process")
                add(
                    f"{job_name} {size}: process vs its sequential",
                    times(value),
                    ">= 1.60x",
                    at_least(value, 1.6),
                )
            if parse_size(size) >= 900 * MB:
                cell = cells.get((*where, "process"))
                peak = cell.peak() if cell and cell.ok else math.nan
                add(
                    f"{job_name} {size}: process peak tree RSS",
                    fmt(peak, 0) + " MiB",
                    f"< {RSS_LIMIT_MIB} MiB",
                    None if math.isnan(peak) else peak < RSS_LIMIT_MIB,
                )
        if args.small_size:
            value = speedup_over(cells, (job_name, args.small_size), "sequential", "default")
            add(
                f"{job_name} {args.small_size}: default vs sequential",
                times(value),
                ">= 1.00x",
                at_least(value, 1.0),
            )
    lines = table(["target", "measured", "wanted", "verdict"], rows, align="lrrl")
    return lines, judged


def report(
    args: argparse.Namespace,
    header: list[str],
    cells: dict[tuple[str, str, str], Cell],
    files: dict[tuple[str, str], Path],
    probes: dict[str, str],
    problems: list[str],
) -> str:
    lines = ["# CSV stats, cold, on a wide real-world-shaped file and on the sales file", ""]
    lines += header
    target_lines, judged = targets(args, cells)
    passed = sum(1 for _, ok in judged if ok)
    lines += ["", "## The issue's targets", ""]
    if args.quick:
        lines += ["Smoke test (`--quick`): small files and one repeat; indicative only.", ""]
    lines += target_lines
    lines += [
        "",
        f"{passed} of {len(judged)} pass. Ratios are medians of wall seconds (the whole fresh "
        "process, as a user waits for it) from this run; `default` is the CLI without "
        "`--backend`. Not tuned: batchcore runs as shipped.",
    ]
    for (job_name, size), path in files.items():
        job = JOBS[job_name]
        cell = next(c for (j, s, _e), c in cells.items() if (j, s) == (job_name, size))
        rows = cell.ok[0].result["rows"] if cell.ok else 0
        lines += ["", f"## {job_name}, {size}: `{' '.join(job.cli_args())}`", ""]
        lines += [f"`{path}`: {path.stat().st_size:,} bytes, {rows:,} rows.", ""]
        lines += file_table(args, cells, (job_name, size))
    lines += [
        "",
        "Wall: the child process from start to exit as the parent saw it (interpreter, imports, "
        "job), median (min-max) over repeats. Job: the time the child measured around the work "
        "itself (the CLI's own `seconds`: parsing arguments and imports excluded). CPU: user + "
        "system seconds of the child and the workers it reaped. Peak tree RSS: the highest sum "
        "of the RSS of the child and all its descendants, sampled every "
        f"{args.interval * 1000:.0f} ms. `x ENGINE`: that engine's median wall / this row's "
        "(above 1.00x: this row is faster). Others' cores: how many cores other "
        "processes on the machine kept busy during the run (median): the machine is shared.",
        "",
        "## How each engine runs",
        "",
        "- batchcore: the installed `batchcore` console script, `csv stats PATH --sum ... "
        "--group-by KEY --json [--backend B]`; workers default to one per CPU. Its JSON is the "
        "result checked.",
        "- polars: `pl.scan_csv(path, null_values='NA')` (flights; none on sales) "
        "`.group_by(key).agg(pl.len(), pl.col(c).sum() ...)` `.collect(engine='streaming')`.",
        "- DuckDB: `select key, count(*), sum(c) ... from read_csv('path', nullstr='NA') "
        "group by key` (no `nullstr` on sales), default threads.",
        "- pandas: `with pd.read_csv(path, chunksize=1_000_000)` (every column, NA read as "
        "missing by default), `chunk.groupby(key).agg(...)` per chunk, partials summed.",
        "- pyarrow: `pyarrow.csv.read_csv(path)` (every column, multi-threaded, whole table in "
        "memory), `table.group_by(key).aggregate(...)`.",
    ]
    if probes:
        lines += ["", "## Without telling them about `NA` (flights file)", ""]
        lines += [f"- {engine}: `{said}`" for engine, said in probes.items()]
        lines += ["- batchcore and pyarrow: no option needed (pyarrow's null values include `NA`)."]
    if problems:
        lines += ["", "## Errors and mismatches", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def chart(args: argparse.Namespace, cells: dict[tuple[str, str, str], Cell]) -> str:
    panels: dict[str, dict[str, float]] = {}
    for (job_name, size, engine), cell in cells.items():
        if cell.ok:
            title = f"{job_name} {size}: wall s (median)"
            panels.setdefault(title, {})[engine] = cell.median("wall")
    return bar_chart(args.output.with_suffix(".png"), panels, "seconds (lower is better)")


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=None, help="file sizes (default 300MB,1GB)")
    parser.add_argument(
        "--small-size",
        default=None,
        help="a small file for default/sequential/process only (default 31MB; 0 skips)",
    )
    parser.add_argument("--jobs", default="flights,sales", help="files to run: flights,sales")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3)")
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    add_child_options(
        parser, pause=2.0, interval=0.01, env_example="ARROW_DEFAULT_MEMORY_POOL=system"
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="generated files go here")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--quick", action="store_true", help="20MB and 5MB files, 1 repeat")
    parser.add_argument(
        "--one", choices=["polars", "duckdb", "pandas", "pyarrow"], help=argparse.SUPPRESS
    )
    parser.add_argument("--job", choices=list(JOBS), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        if not (args.job and args.path):
            parser.error("--one needs --job and --path")
        return args
    args.env = parse_env(args.env, parser)
    args.jobs = parse_list(parser, "--jobs", args.jobs, JOBS)
    args.engines = parse_list(parser, "--engines", args.engines, ENGINES)
    args.sizes = [
        s.strip() for s in (args.sizes or ("20MB" if args.quick else "300MB,1GB")).split(",")
    ]
    small = args.small_size or ("5MB" if args.quick else "31MB")
    args.small_size = None if small in ("0", "none") else small
    args.small_engines = [e for e in SMALL_ENGINES if e in args.engines]
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.pause = args.pause if args.pause is not None else (0.3 if args.quick else 2.0)
    args.timeout = args.timeout or (120.0 if args.quick else 900.0)
    check_counts(parser, args)
    args.output = args.output or default_output("csv-wide", args.quick, args.env)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return one(args.one, args.job, args.path)
    session = Session.start()
    files: dict[tuple[str, str], Path] = {}
    for job_name in args.jobs:
        for size in [*args.sizes, *([args.small_size] if args.small_size else [])]:
            files[job_name, size] = ensure_file(job_name, size, args.data_dir)
    for path in files.values():  # into the page cache: every engine reads a cached file
        with open(path, "rb") as handle:
            while handle.read(16 << 20):
                pass
    probes = {}
    if "flights" in args.jobs:
        smallest = min(
            (p for (j, _s), p in files.items() if j == "flights"), key=lambda p: p.stat().st_size
        )
        probes = probe_without_options(smallest)
    parent_cpu = time.process_time()
    try:
        cells = run_all(args, files)
    except KeyboardInterrupt:
        print("interrupted: the running child and its workers were killed", file=sys.stderr)
        return 130
    parent_cpu = time.process_time() - parent_cpu
    problems = check_results(cells)
    problems += [
        f"{job_name} {size} {ENGINES[engine]}: {run.error}"
        for (job_name, size, engine), cell in cells.items()
        for run in cell.runs
        if run.error
    ]
    problems += leftover_problems()
    header = session.header(package_versions(PACKAGES))
    header += [
        "- **The machine is 2 cores, shared and noisy**: compare ratios within this run, not "
        "seconds across runs.",
        f"- Method: every run a fresh process after a {args.pause:g} s pause; {args.repeats} "
        "repeat(s), medians; engines take turns within each repeat; files read once before, so "
        "they are in the page cache",
        f"- Children's extra environment: {env_line(args.env)}",
        sampler_line(cells.values(), args.interval, parent_cpu),
        "- Results: every engine's rows, sums (1e-6 relative) and per-group counts and sums "
        "checked against the first run on the same file; "
        + (f"{len(problems)} problem(s), see the end" if problems else "all agree"),
        chart(args, cells),
    ]
    write_report(args.output, report(args, header, cells, files, probes, problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
