"""``--resume`` on the CSV jobs, every run a cold CLI in a fresh process: what the journal costs on
CSV T2 (``csv stats --group-by``), and how long a 1 GB ``csv to-parquet`` killed at 90% takes
to resume against a whole run.

    T2       csv stats FILE --sum amount --sum qty --group-by region: without --resume, with
             --resume on a fresh journal, and with --resume on a finished journal
    parquet  csv to-parquet FILE OUT: without --resume, and with it (whole runs); then a --resume
             run SIGKILLed once its journal holds 90% of the parts, and the --resume rerun

Targets (issue 13): the journal adds at most 3% on T2; the rerun after a kill at 90% takes at most
15% of a whole run's time. Engines take turns in every repeat; medians.

    python data/make_sales.py /tmp/batchcore-bench/sales-1g.csv --size 1GB
    python benchmarks/bench_resume.py                      # 5 repeats: ~5 min on 2 cores
    python benchmarks/bench_resume.py --repeats 1 --path data/sales.csv --chunk-bytes 20000

Also timed, taking turns: a Python that only imports what the job's processes need, from which
the report estimates the least a rerun could take on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import compile_bytecode, write_report  # noqa: E402

DEFAULT_PATH = Path("/tmp/batchcore-bench/sales-1g.csv")
T2 = ["--sum", "amount", "--sum", "qty", "--group-by", "region", "--json"]
# The least any process that parses CSV and writes Parquet with pyarrow pays before its first row.
IMPORTS = "import numpy, pyarrow, pyarrow.csv, pyarrow.compute, pyarrow.parquet"
FLOOR = "floor: a Python that only imports numpy and pyarrow (csv, compute, parquet)"
JOURNAL = "_checkpoint.sqlite"  # processors.csv.jobs.JOURNAL


CPU: dict[str, list[float]] = {}  # per case: CPU seconds of the CLI and every worker it reaped


def cpu_seconds() -> float:
    """User + system seconds of this process's reaped children (and theirs, recursively)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    command: list[str], env: dict[str, str], case: str = ""
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of ``command`` in a fresh process, and what it printed; it must succeed.
    Its CPU seconds go to ``CPU[case]``: on a busy machine they drift less than wall time."""
    began, cpu = time.perf_counter(), cpu_seconds()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    if case:
        CPU.setdefault(case, []).append(cpu_seconds() - cpu)
    return seconds, done


def committed(out: Path) -> int:
    """Parts the journal of ``out``'s staging folder holds as done (0 before it exists)."""
    for journal in out.parent.glob(f".{out.name}.staging-*/{JOURNAL}"):
        try:
            with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as connection:
                return sum(oks.count(1) for (oks,) in connection.execute("select oks from groups"))
        except sqlite3.Error:
            return 0
    return 0


def written(out: Path) -> int:
    """Parts written so far into ``out``'s staging folder."""
    return len(list(out.parent.glob(f".{out.name}.staging-*/part-*.parquet")))


def kill_at(
    command: list[str], env: dict[str, str], out: Path, parts: int
) -> tuple[int, int, float]:
    """Run ``command`` and SIGKILL it (and its workers) once ``parts`` parts are written: 90% of
    the work done, as a user watching would see it. Returns how many of them its journal had
    committed then, how many parts were written (the resumed run keeps those by their footers),
    and the seconds the run had taken."""
    began = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while written(out) < parts:
        if child.poll() is not None:
            raise SystemExit("the run finished before it could be killed at 90%")
        time.sleep(0.002)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    return committed(out), written(out), time.perf_counter() - began


def clear(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for leftover in out.parent.glob(f".{out.name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="process")
    parser.add_argument("--chunk-bytes", default=None, help="batchcore's --chunk-bytes")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/resume.md")
    args = parser.parse_args()
    path = args.path.resolve()
    compile_bytecode()
    common = ["--backend", args.backend, "--workers", "2"]
    if args.chunk_bytes:
        common += ["--chunk-bytes", args.chunk_bytes]
    cli = [sys.executable, "-m", "batchcore", "csv"]
    stats = [*cli, "stats", str(path), *T2, *common]
    times: dict[str, list[float]] = {}
    notes: dict[str, list[Any]] = {"killed": [], "written": [], "killed_after": []}
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        folder = Path(scratch)
        out = folder / "out"
        env = {**os.environ, "BATCHCORE_CACHE_DIR": str(folder / "warm-cache")}
        parquet = [*cli, "to-parquet", str(path), str(out), *common]
        run([*stats, "--resume"], env)  # the finished journal "all resumed" reads
        run(parquet, env)
        parts = json.loads((out / "_SUCCESS").read_text())["parts"]
        rows = json.loads((out / "_SUCCESS").read_text())["rows"]
        reference = json.loads(run(stats, env)[1].stdout)
        for repeat in range(args.repeats):
            fresh = {**env, "BATCHCORE_CACHE_DIR": str(folder / f"cache-{repeat}")}
            cases: list[tuple[str, list[str], dict[str, str]]] = [
                ("T2: no journal", stats, env),
                ("T2: --resume, fresh journal", [*stats, "--resume"], fresh),
                ("T2: --resume, all resumed", [*stats, "--resume"], env),
            ]
            for name, command, case_env in cases:
                time.sleep(args.pause)
                seconds, done = run(command, case_env, name)
                report = json.loads(done.stdout)
                report.pop("checkpoint", None)
                for key in ("seconds", "backend", "backend_reason"):
                    report.pop(key, None)
                    reference.pop(key, None)
                assert report == reference, f"{name}: another answer"
                times.setdefault(name, []).append(seconds)
            for name, command in (
                ("to-parquet: no --resume", parquet),
                ("to-parquet: --resume, whole run", [*parquet, "--resume"]),
            ):
                clear(out)
                time.sleep(args.pause)
                times.setdefault(name, []).append(run(command, env, name)[0])
            clear(out)
            time.sleep(args.pause)
            held, kept, after = kill_at([*parquet, "--resume"], env, out, math.ceil(parts * 0.9))
            time.sleep(args.pause)
            resumed = "to-parquet: --resume after a kill at 90%"
            seconds, done = run([*parquet, "--resume"], env, resumed)
            said = f"all {parts:,}" if kept == parts else f"{kept:,} of {parts:,}"
            assert f"{said} parts came from" in done.stderr, done.stderr
            assert json.loads((out / "_SUCCESS").read_text())["rows"] == rows
            times.setdefault(resumed, []).append(seconds)
            notes["killed"].append(held)
            notes["written"].append(kept)
            notes["killed_after"].append(after)
            time.sleep(args.pause)
            times.setdefault(FLOOR, []).append(run([sys.executable, "-c", IMPORTS], env, FLOOR)[0])
        clear(out)
    total = time.perf_counter() - began
    median = {name: statistics.median(values) for name, values in times.items()}
    t2 = median["T2: --resume, fresh journal"] / median["T2: no journal"] - 1
    cpu = {name: statistics.median(values) for name, values in CPU.items()}
    t2_cpu = cpu["T2: --resume, fresh journal"] / cpu["T2: no journal"] - 1
    whole_run = median["to-parquet: --resume, whole run"]
    resume = median["to-parquet: --resume after a kill at 90%"] / whole_run
    # The least a rerun could take here: the imports, then the parts it must write at the whole
    # run's pace (its CPU seconds but for two processes' imports, the CLI's and the zygote's)
    # spread over the 2 workers, with no journal, no pool, no exit.
    kept = statistics.median(notes["written"])
    share = (parts - kept) / parts
    work = share * (cpu["to-parquet: --resume, whole run"] - 2 * cpu[FLOOR]) / 2
    floor = median[FLOOR] + work
    size = path.stat().st_size
    lines = [
        "# --resume on the CSV jobs: the journal's cost, and resuming a run killed at 90%",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; whole run {total:.0f} s; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after",
        f"- Machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"- Input: `{path}`, {size / 1e9:.2f} GB, {rows:,} rows, {parts} ranges (parts)",
        "- Command: `python benchmarks/bench_resume.py"
        + "".join(
            f" {flag} {value}"
            for flag, value, default in (
                ("--path", args.path, DEFAULT_PATH),
                ("--repeats", args.repeats, 5),
                ("--backend", args.backend, "process"),
                ("--chunk-bytes", args.chunk_bytes, None),
            )
            if value != default
        )
        + "`",
        f"- Method: every run the `batchcore` CLI, cold, in a fresh process (`--backend "
        f"{args.backend} --workers 2`), {args.pause:g} s apart; {args.repeats} repeats, cases "
        "taking turns in each; medians (min-max). CPU s: user + system seconds of the CLI and "
        "every worker it reaped (`getrusage(RUSAGE_CHILDREN)`), which other load on the "
        "machine disturbs less than wall time. Every T2 answer is checked against the first; "
        "every resumed dataset's row count too. The kill: SIGKILL of the CLI and its workers "
        f"once {math.ceil(parts * 0.9)} of the {parts} parts were written (the journal had "
        f"committed {min(notes['killed'])}-{max(notes['killed'])} of them; the resumed run kept "
        f"{min(notes['written'])}-{max(notes['written'])} parts, the journal's and the others "
        "by their footers, and ran the rest; "
        f"the runs had taken {min(notes['killed_after']):.1f}-"
        f"{max(notes['killed_after']):.1f} s).",
        "",
        "| case | wall s (min-max) | x first row of its job | CPU s (CLI and workers) |",
        "|---|---:|---:|---:|",
    ]
    firsts = {
        "T2": median["T2: no journal"],
        "to-parquet": median["to-parquet: no --resume"],
        "floor": median["to-parquet: no --resume"],
    }
    for name, values in times.items():
        first = firsts[name.split(":")[0]]
        lines.append(
            f"| {name} | {median[name]:.2f} ({min(values):.2f}-{max(values):.2f}) | "
            f"{median[name] / first:.2f}x | {cpu[name]:.2f} |"
        )
    lines += [
        "",
        "| target | measured | wanted | verdict |",
        "|---|---:|---:|---|",
        f"| T2: journal overhead (wall) | {t2 * 100:+.1f}% | <= 3% |"
        f" {'pass' if t2 <= 0.03 else 'FAIL'} |",
        f"| T2: journal overhead (CPU seconds) | {t2_cpu * 100:+.1f}% | <= 3% |"
        f" {'pass' if t2_cpu <= 0.03 else 'FAIL'} |",
        f"| to-parquet: resume after a kill at 90%, x a whole --resume run | {resume * 100:.0f}%"
        f" | <= 15% | {'pass' if resume <= 0.15 else 'FAIL'} |",
        "",
        f"The least a rerun could take here: {median[FLOOR]:.2f} s of imports (the floor row) "
        f"+ {work:.2f} s for the {parts - kept:g} of {parts} parts left (their share of the "
        "whole --resume run's CPU seconds, less two processes' imports, over 2 workers) = "
        f"{floor:.2f} s, **{floor / whole_run * 100:.0f}%** of a whole run, with no journal, "
        "pool start, planning or exit.",
    ]
    write_report(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
