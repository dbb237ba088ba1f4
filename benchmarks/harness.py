"""What every benchmark script does the same way, so each script keeps only its workloads.

- the machine and versions: the header every results file opens with;
- the child side of a cold run: peak RSS, CPU of the process tree, pools warmed until every
  worker answered, one JSON report line;
- the parent side: a child process run in its own session with a timeout, the RSS of its whole
  process tree sampled, how busy the rest of the machine was, leftover processes;
- repeats and medians: runs grouped in cells, engines taking turns, ratios;
- options shared by the scripts, and the markdown table and results file writers.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import importlib.metadata
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent  # the repository: data/ has the generators
RESULTS = ROOT / "benchmarks" / "results"
DATA_DIR = Path("/tmp/batchcore-bench")  # generated inputs, kept between runs (they take a while)
MIB = 1 << 20

# --- the machine and versions -------------------------------------------------------------------


def package_versions(names: Iterable[str]) -> list[str]:
    """``"name version"`` per package (``"name (not installed)"`` when it is missing)."""
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return parts


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (ratios depend on it)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def command_line() -> str:
    """How this script was started, from where: the results file's ``Command`` line."""
    return f"cd {os.getcwd()} && {shlex.join([sys.executable, *sys.argv])}"


def compile_bytecode() -> None:
    """Write the package's ``.pyc`` files, as ``pip install`` does for a wheel.

    An editable install under ``PYTHONDONTWRITEBYTECODE=1`` (set on some machines and CI images)
    would otherwise compile every module from source in every cold run: ~0.15 s of each CLI
    start, which its peers, installed with their bytecode, never pay."""
    for package in ("batchcore", "processors"):
        compileall.compile_dir(ROOT / package, quiet=2)


@dataclass
class Session:
    """One benchmark run: when it started and the load before, for the results header."""

    started_at: datetime.datetime
    began: float
    load_before: float

    @classmethod
    def start(cls) -> Session:
        compile_bytecode()
        return cls(datetime.datetime.now().astimezone(), time.perf_counter(), os.getloadavg()[0])

    def header(self, versions: Sequence[str], python_note: str = "") -> list[str]:
        """Date and whole-run time, machine and load, Python and packages, command."""
        elapsed = time.perf_counter() - self.began
        python = f"- Python {platform.python_version()}; packages: {', '.join(versions)}"
        return [
            f"- Date: {self.started_at:%Y-%m-%d %H:%M %Z}; whole run {elapsed:.0f} s",
            f"- Machine: nproc {len(os.sched_getaffinity(0))} ({cpu_model()}), "
            f"{platform.system()} {platform.release()}; load average {self.load_before:.2f} "
            f"before, {os.getloadavg()[0]:.2f} after",
            python + (f"; {python_note}" if python_note else ""),
            f"- Command: `{command_line()}`",
        ]


# --- the child side: measure, warm pools, report -----------------------------------------------


def max_rss_mib() -> float:
    """This process's peak RSS (``ru_maxrss``, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_usage(descendants_only: bool = False) -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults of this process and its live
    descendants so far (faults from ``/proc/PID/stat``: psutil does not report them)."""
    cpu, faults = 0.0, 0
    me = psutil.Process()
    for proc in [*([] if descendants_only else [me]), *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error, OSError, ValueError, IndexError):
            times = proc.cpu_times()
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
            faults += int(stat.rpartition(")")[2].split()[7])  # minflt, the 10th field
            cpu += times.user + times.system
    return cpu, faults


@dataclass
class Measured:
    """What a child measured: the timed work's seconds, start-up (pool start, warm-up), the
    result the parent checks, and notes."""

    seconds: float = math.nan
    startup: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def emit(measured: Measured, **labels: str) -> None:
    """Child side: print ``measured`` as the one JSON line ``run_child`` reads, with this
    process's peak RSS and the CPU of descendants it never reaped (the parent cannot see it)."""
    report = {
        **labels,
        "seconds": measured.seconds,
        "startup": measured.startup,
        "maxrss_mib": max_rss_mib(),
        "unreaped_cpu": round(tree_usage(descendants_only=True)[0], 3),
        "result": measured.result,
        "details": measured.details,
    }
    print(json.dumps(report))


def warm_workers(
    run_batch: Callable[[list[int]], Iterable[int]],
    workers: int,
    per_worker: int = 2,
    max_rounds: int = 50,
) -> int:
    """Run tiny batches of pid-returning items until ``workers`` distinct workers answered
    (each booted and imported what the item imports); returns the rounds it took."""
    seen: set[int] = set()
    for rounds in range(1, max_rounds + 1):
        seen |= set(run_batch(list(range(per_worker * workers))))
        if len(seen) >= workers:
            return rounds
    raise RuntimeError(f"only {len(seen)} of {workers} workers answered after {max_rounds} rounds")


def batchcore_batch(
    worker_pid: Callable[[int], int], backend: str, workers: int
) -> Callable[[list[int]], list[int]]:
    """``run_batch`` for ``warm_workers`` on batchcore's shared pool: a tiny BatchNode whose
    items call ``worker_pid``, one item per chunk (so every worker gets some)."""
    from batchcore import BatchNode

    # Defined here, not at module level, so it is pickled by value and the workers do not
    # import this module (its imports would land in the warm-up's time).
    class WorkerPids(BatchNode):
        def prep(self, shared: dict[str, Any]) -> list[int]:
            return list(shared["items"])

        def exec(self, item: int) -> int:
            return worker_pid(item)

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
            shared["pids"] = exec_res

    def run(items: list[int]) -> list[int]:
        shared: dict[str, Any] = {"items": items}
        WorkerPids(backend=backend, workers=workers, chunksize=1).run(shared)
        return list(shared["pids"])

    return run


def start_batchcore(
    backend: str,
    workers: int,
    worker_pid: Callable[[int], int] | None = None,
    per_worker: int = 2,
) -> int:
    """Start batchcore's shared pool for ``backend``; with ``worker_pid``, warm it until every
    worker answered. Returns the warm-up rounds (0: not warmed)."""
    import batchcore

    batchcore.get_backend(backend, workers=workers).start()  # type: ignore[attr-defined]
    if worker_pid is None:
        return 0
    return warm_workers(batchcore_batch(worker_pid, backend, workers), workers, per_worker)


# --- the parent side: a child process, its RSS, leftovers --------------------------------------


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
    """One measured run (a child's report, or a timing in this process), or why there is none."""

    seconds: float = math.nan
    startup: float = 0.0
    wall: float = math.nan  # the child process from Popen to exit, as the parent saw it
    tree: TreeSample = field(default_factory=TreeSample)
    maxrss_mib: float = math.nan
    result: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    other_cores: float = math.nan  # cores other processes on the machine kept busy meanwhile
    cpu_seconds: float = math.nan  # the child's CPU, with the workers it reaped (user + system)
    report: dict[str, Any] = field(default_factory=dict)  # the child's whole JSON line
    error: str = ""


def is_resource_tracker(proc: psutil.Process) -> bool:
    """Resource trackers (multiprocessing's and loky's, started by joblib) exit with us."""
    with contextlib.suppress(psutil.Error):
        return any("resource_tracker" in part for part in proc.cmdline())
    return False


def leftover_processes(grace: float = 5.0) -> list[psutil.Process]:
    """Our descendants still alive after ``grace`` seconds, resource trackers aside (there
    should be none once every pool is shut down)."""
    alive = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=grace)[1]
    return [proc for proc in alive if not is_resource_tracker(proc)]


def leftover_problems() -> list[str]:
    """``leftover_processes`` as a problem for the results file's list (empty if none)."""
    stray = leftover_processes()
    return [f"processes still running at the end: {stray}"] if stray else []


def kill_leftovers(seen: set[tuple[int, float]], child_pid: int) -> list[str]:
    """Descendants of a finished child still alive after 5 s: killed here, and reported."""
    alive = []
    for pid, created in seen:
        if pid == child_pid:
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created:  # not a new process that reused the pid
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


def cpu_in_use() -> tuple[float, float]:
    """CPU seconds so far: the whole machine's busy time, and this process's plus its reaped
    children's (a finished child's includes the workers it reaped)."""
    machine = psutil.cpu_times()
    busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
    busy += machine.steal  # another VM on our cores: contention too
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, time.process_time() + children.ru_utime + children.ru_stime


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the child and its workers: they share its session


# Linux carries a parent's peak RSS into a forked child's ru_maxrss, even across exec: a child
# started from a large parent would report the parent's peak as its own. ``launcher=True`` starts
# the child from this small process instead, whose own peak is far below the child's baseline.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def run_child(
    command: list[str],
    *,
    timeout: float,
    extra_env: Mapping[str, str] | None = None,
    interval: float | None = 0.01,
    launcher: bool = False,
) -> Run:
    """Run ``command`` cold in its own session and read its ``emit`` report: wall time, the RSS
    of its process tree every ``interval`` s (None: not sampled), how busy the rest of the
    machine was. A timeout or Ctrl-C kills the child's whole process group."""
    if launcher:
        command = [sys.executable, "-c", LAUNCHER, *command]
    run = Run()
    busy, mine = cpu_in_use()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(extra_env or {})},
        start_new_session=True,  # so a timeout can kill the child's workers with it
    )
    sampler = TreeSampler(child.pid, interval) if interval else None
    try:
        with sampler or contextlib.nullcontext():
            try:
                out, err = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(child.pid)
                out, err = child.communicate()
                run.error = f"timed out after {timeout:g} s"
    except BaseException:  # Ctrl-C: the child's session does not get it from the terminal
        _kill_group(child.pid)
        child.wait()
        if sampler is not None:
            kill_leftovers(sampler.sample.processes, child.pid)
        raise
    run.wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.cpu_seconds = after.ru_utime + after.ru_stime - reaped.ru_utime - reaped.ru_stime
    if sampler is not None:
        run.tree = sampler.sample
        stray = kill_leftovers(run.tree.processes, child.pid)
        if stray:
            run.error = (run.error + "; " if run.error else "") + f"left behind: {', '.join(stray)}"
    if child.returncode != 0 and not run.error:
        run.error = f"child exited {child.returncode}: {(err.strip() or out.strip())[-800:]}"
    report: dict[str, Any] = {}
    if not run.error:
        try:
            report = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            run.error = f"no JSON report: {(err.strip() or out.strip())[-800:]}"
        else:
            run.report = report
            run.seconds = report.get("seconds", math.nan)
            run.startup = report.get("startup", 0.0)
            run.maxrss_mib = report.get("maxrss_mib", math.nan)
            run.result = report.get("result", {})
            run.details = report.get("details", {})
    busy_after, mine_after = cpu_in_use()
    # The machine is shared: what others kept busy meanwhile skews ratios, so it is reported.
    other = (busy_after - busy) - (mine_after - mine) - report.get("unreaped_cpu", 0.0)
    run.other_cores = max(0.0, other / run.wall) if run.wall > 0 else math.nan
    return run


# --- repeats and medians ------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    """The median, or NaN when there is nothing (a cell whose every run failed)."""
    found = list(values)
    return statistics.median(found) if found else math.nan


@dataclass
class Cell:
    """One engine on one workload: its runs over the repeats, or why it was skipped."""

    runs: list[Run] = field(default_factory=list)
    skip: str = ""

    @property
    def ok(self) -> list[Run]:
        return [run for run in self.runs if not run.error]

    @property
    def error(self) -> str:
        return next((run.error for run in self.runs if run.error), "")

    def median(self, name: str = "seconds") -> float:
        """Median of one ``Run`` field over the successful runs."""
        return median(getattr(run, name) for run in self.ok)

    def median_detail(self, name: str) -> float:
        """Median of one ``details`` entry over the successful runs that report it."""
        return median(run.details[name] for run in self.ok if name in run.details)

    def peak(self) -> float:
        return median(run.tree.peak_mib for run in self.ok)

    def peak_anon(self) -> float:
        return median(run.tree.peak_anon_mib for run in self.ok)

    def spread(self, digits: int = 2) -> str:
        """``median (min-max)`` of the seconds (just the median for a single run)."""
        seconds = [run.seconds for run in self.ok]
        text = fmt(median(seconds), digits)
        if len(seconds) > 1:
            text += f" ({min(seconds):.{digits}f}-{max(seconds):.{digits}f})"
        return text


def take_turns(engines: Sequence[T], repeat: int) -> list[T]:
    """``engines`` rotated by ``repeat``, so slow drift in machine load hits them all alike."""
    turn = repeat % max(len(engines), 1)
    return [*engines[turn:], *engines[:turn]]


def median_time(run: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Call ``run`` ``repeats`` times in this process; the median seconds and the last result."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def startup_note(startup: float, unit: str = " s") -> str:
    """`` (start-up 0.12 s)`` when the run had a start-up worth showing, else ``""``."""
    return f" (start-up {startup:.2f}{unit})" if startup >= 0.005 else ""


def progress(tag: str, run: Run, *notes: str) -> None:
    """Print one run as it ends: its seconds and start-up, peak tree RSS and ``notes``, or its
    error."""
    if run.error:
        print(f"  {tag}: ERROR {run.error}", flush=True)
        return
    parts = [f"{run.seconds:.2f} s{startup_note(run.startup)}", *notes]
    print(f"  {tag}: {', '.join(parts)}, peak tree RSS {run.tree.peak_mib:.0f} MiB", flush=True)


def speedup(baseline: Cell | None, engine: Cell | None) -> float:
    """``baseline``'s median seconds over ``engine``'s (NaN if either has no successful run)."""
    if baseline is None or engine is None or not baseline.ok or not engine.ok:
        return math.nan
    return baseline.median() / engine.median()


# --- options shared by the scripts --------------------------------------------------------------


def add_child_options(
    parser: argparse.ArgumentParser, *, pause: float, interval: float, env_example: str
) -> None:
    """The options of a script that runs each measurement in a child process: ``--pause``,
    ``--env KEY=VALUE`` (repeatable), ``--interval`` and ``--timeout``."""
    parser.add_argument(
        "--pause", type=float, default=None, help=f"seconds before each run ({pause:g})"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"set in every child's environment, e.g. {env_example}",
    )
    parser.add_argument("--interval", type=float, default=interval, help="RSS sampling period, s")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")


def parse_env(items: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env must look like KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def parse_list(
    parser: argparse.ArgumentParser,
    option: str,
    text: str,
    valid: Iterable[str],
    upper: bool = False,
) -> list[str]:
    """A comma-separated choice such as ``--engines a,b``, checked against ``valid`` and
    returned in ``valid``'s order (so tables keep one column order)."""
    valid = list(valid)
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    chosen = [part.upper() for part in chosen] if upper else chosen
    bad = sorted(set(chosen) - set(valid))
    if bad or not chosen:
        parser.error(f"{option}: unknown {bad}; valid ones are {sorted(valid)}")
    return [key for key in valid if key in chosen]


def check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--repeats`` and ``--workers`` >= 1; ``--pause`` >= 0 and ``--interval`` > 0 if any."""
    if args.repeats < 1 or args.workers < 1:
        parser.error("--repeats and --workers must be >= 1")
    if getattr(args, "pause", 0) < 0 or getattr(args, "interval", 1) <= 0:
        parser.error("--pause must be >= 0 and --interval > 0")


def default_output(stem: str, quick: bool, env: Mapping[str, str], partial: bool = False) -> Path:
    """``results/STEM[-quick][-KEY-VALUE...][-partial].md``: a run with other settings never
    overwrites the full results."""
    name = f"{stem}-quick" if quick else stem
    for key, value in sorted(env.items()):
        name += "-" + re.sub(r"[^A-Za-z0-9.]+", "-", f"{key}-{value}").lower()
    return RESULTS / f"{name}{'-partial' if partial else ''}.md"


# --- reporting ----------------------------------------------------------------------------------


def fmt(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, ``-`` for NaN (nothing measured)."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def times(value: float, missing: str = "-") -> str:
    """A ratio as ``1.23x``, ``missing`` for NaN."""
    return missing if math.isnan(value) else f"{value:.2f}x"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A markdown table as lines; ``align`` has an ``l`` or ``r`` per column (default: the first
    column left, numbers right)."""
    align = align or "l" + "r" * (len(header) - 1)
    assert len(align) == len(header), (align, header)
    rule = "".join("---|" if a == "l" else "---:|" for a in align)
    lines = ["| " + " | ".join(header) + " |", "|" + rule]
    for row in rows:
        assert len(row) == len(header), (row, header)
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return lines


def env_line(env: Mapping[str, str]) -> str:
    """The children's extra environment: ``"`KEY=VALUE`, ..."`` or ``"none"``."""
    return ", ".join(f"`{k}={v}`" for k, v in env.items()) if env else "none"


def sampler_line(cells: Iterable[Cell], interval: float, parent_cpu: float) -> str:
    """What the RSS sampler cost: its CPU over the children's wall time, and the parent's CPU."""
    runs = [run for cell in cells for run in cell.runs]
    sampler_cpu = sum(run.tree.cpu_seconds for run in runs)
    child_wall = sum(run.wall for run in runs if run.wall > 0)
    return (
        f"- RSS sampler: every {interval * 1000:.0f} ms (descendants rediscovered every 5th "
        f"sample); it used {sampler_cpu:.1f} s CPU over {child_wall:.0f} s of child runs "
        f"({100 * sampler_cpu / max(child_wall, 1e-9):.1f}% of a core); parent CPU "
        f"{parent_cpu:.1f} s"
    )


def bar_chart(
    path: Path,
    panels: Mapping[str, Mapping[str, float]],
    xlabel: str,
    marks: Mapping[str, float] | None = None,
) -> str:
    """Horizontal bars, one panel per table (``{panel title: {bar label: value}}``), saved as a
    PNG beside the results file; ``marks`` draws a dashed line per panel (e.g. a target).
    Returns a line for the results file (why there is no chart, if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "- Chart: not drawn (matplotlib is not installed)"
    shown = {title: bars for title, bars in panels.items() if bars}
    if not shown:
        return "- Chart: nothing to draw"
    height = 1.2 + 0.35 * max(len(bars) for bars in shown.values())
    figure, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), height), squeeze=False)
    for ax, (title, bars) in zip(axes[0], shown.items(), strict=True):
        names = list(bars)
        values = [0.0 if math.isnan(v) else v for v in bars.values()]
        ax.barh(names, values, color="tab:blue")
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
        if marks and title in marks:
            ax.axvline(marks[title], linestyle="--", color="gray")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.invert_yaxis()
        ax.margins(x=0.15)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"- Chart: [{path.name}]({path.name})"


def write_report(path: Path, text: str) -> None:
    """Write the results file (making its folder) and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print()
    print(text)
    print(f"written to {path}")
