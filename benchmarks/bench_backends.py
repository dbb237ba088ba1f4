"""Compare batchcore's BatchNode backends with the pools a user would otherwise pick, in one run.

Engines: batchcore's ``sequential``, ``thread`` and ``process`` backends; ProcessPoolExecutor with
chunksize 1 and with a tuned chunksize; multiprocessing.Pool ``map`` and ``imap``; joblib (loky).
Workloads (metric in brackets)::

    A  200 CPU-bound items of ~20 ms, a pure-Python loop calibrated at start   [speedup]
    B  100,000 trivial items (x + 1)                                           [us per item]
    C  64 numpy float64 arrays of 8 MiB, each reduced to a checksum            [MiB/s moved]
    D  ~200 items of ~3 ms and five of ~200 ms at spread positions             [speedup]
    E  a 1,000,000-item generator, exec returns None                           [parent RSS growth]

Every pool is started and warmed before timing; engines take turns within each repeat and the
table reports medians. Every engine's results are checked against sequential's. E runs each engine
in a fresh child process (``--one-e ENGINE``) and reads ``ru_maxrss`` there, before and after.

    python benchmarks/bench_backends.py                 # full run: writes results/backends.md
    python benchmarks/bench_backends.py --quick         # smoke test: small sizes, one repeat
    python benchmarks/bench_backends.py --only A,D --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import math
import multiprocessing
import signal
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    MIB,
    Cell,
    Measured,
    Run,
    Session,
    check_counts,
    default_output,
    emit,
    leftover_processes,
    max_rss_mib,
    package_versions,
    parse_list,
    run_child,
    table,
    take_turns,
    write_report,
)

import batchcore
from batchcore import BatchNode

# Sizes: the workloads, and a small version of each for smoke tests (--quick).
FULL = {
    "a_items": 200,
    "a_ms": 20.0,
    "b_items": 100_000,
    "c_arrays": 64,
    "c_mib": 8,
    "d_small": 200,
    "d_small_ms": 3.0,
    "d_big": 5,
    "d_big_ms": 200.0,
    "e_items": 1_000_000,
}
QUICK = {**FULL, "a_items": 16, "b_items": 10_000, "c_arrays": 8, "d_small": 40, "e_items": 100_000}

# Chunk sizes of the "tuned" peers (ProcessPoolExecutor tuned, Pool.imap), chosen per workload by
# hand from /work/shared/anchors.md: a few chunks per worker for uniform CPU items, thousands for
# trivial ones, single items for 8 MiB arrays, pairs for skewed items (short tail).
TUNED = {"A": 4, "B": 2048, "C": 1, "D": 2, "E": 2048}

TARGETS = {
    "A": ">= 1.9x and not slower than joblib",
    "B": "<= 1 us/item",
    "C": ">= 440 MiB/s",
    "D": ">= 1.85x",
    "E": "<= 5 MiB over sequential",
}


# --- work functions: the same module-level functions for every engine -------------------------


def spin(item: tuple[int, int]) -> int:
    """CPU-bound pure Python: ``loops`` steps of an integer hash seeded by the item's index."""
    seed, loops = item
    acc = seed
    for i in range(loops):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


def add_one(x: int) -> int:
    return x + 1


def checksum(array: np.ndarray) -> float:
    """Touch every byte of the array that was moved to the worker; return a small result."""
    return float(array.sum())


def nothing(x: int) -> None:
    return None


# --- batchcore nodes: exec calls the work function above ---------------------------------------


class ItemsNode(BatchNode):
    """Takes ``shared["items"]`` (a list or a generator) and stores the results list."""

    def prep(self, shared: dict[str, Any]) -> Iterable[Any]:
        return shared["items"]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["results"] = exec_res


class SpinNode(ItemsNode):
    def exec(self, item: tuple[int, int]) -> int:
        return spin(item)


class AddOneNode(ItemsNode):
    def exec(self, item: int) -> int:
        return add_one(item)


class ChecksumNode(ItemsNode):
    def exec(self, item: np.ndarray) -> float:
        return checksum(item)


class NothingNode(ItemsNode):
    def exec(self, item: int) -> None:
        return nothing(item)


# --- workloads ---------------------------------------------------------------------------------


@dataclass
class Workload:
    key: str
    title: str  # column header
    fn: Callable[[Any], Any]
    node: type[ItemsNode]
    make_items: Callable[[], Iterable[Any]]  # fresh items per run (a generator for C and E)
    warmup_items: Callable[[], list[Any]]
    count: int
    description: str
    nbytes: int = 0  # C: bytes moved per run


def time_spin(loops: int) -> float:
    began = time.perf_counter()
    spin((0, loops))
    return time.perf_counter() - began


def calibrate(target_ms: float) -> tuple[int, float]:
    """Loops of ``spin`` that take ``target_ms`` here; returns ``(loops, measured_ms)``."""
    loops = 10_000
    while time_spin(loops) < 0.005:
        loops *= 2
    for _ in range(2):  # measure, rescale, measure again
        seconds = statistics.median(time_spin(loops) for _ in range(5))
        loops = max(1, round(loops * target_ms / 1000 / seconds))
    measured = statistics.median(time_spin(loops) for _ in range(5))
    return loops, measured * 1000


def arrays(count: int, mib: int) -> Iterator[np.ndarray]:
    """Arrays made one at a time, so only those in flight are in memory; sums are exact."""
    length = mib * MIB // 8
    for i in range(count):
        array = np.arange(length, dtype=np.float64)
        array += i
        yield array


def in_order_ceiling(durations: list[float], workers: int) -> float:
    """Best speedup any in-order dispatcher can reach: greedy list scheduling, one item at a
    time, zero overhead (each item goes to the worker that frees up first)."""
    free = [0.0] * workers
    for duration in durations:
        free[free.index(min(free))] += duration
    return sum(durations) / max(free)


def skewed_items(
    sizes: dict[str, Any], loops_per_ms: float, workers: int = 2
) -> tuple[list[tuple[int, int]], str]:
    small, big = sizes["d_small"], sizes["d_big"]
    total = small + big
    big_at = {(2 * k + 1) * total // (2 * big) for k in range(big)}
    items = []
    small_ms = []
    all_ms = []
    for index in range(total):
        if index in big_at:
            ms = sizes["d_big_ms"]
        else:
            ms = sizes["d_small_ms"] * (2 / 3 + (2 / 3) * ((index * 37) % 101) / 100)
            small_ms.append(ms)
        all_ms.append(ms)
        items.append((index, max(1, round(ms * loops_per_ms))))
    text = (
        f"{small} items of {min(small_ms):.1f}-{max(small_ms):.1f} ms "
        f"(median {statistics.median(small_ms):.1f} ms) and {big} of {sizes['d_big_ms']:.0f} ms "
        f"at positions {sorted(big_at)}; the best any in-order dispatcher can do on "
        f"{workers} workers (zero overhead, one item at a time) is "
        f"{in_order_ceiling(all_ms, workers):.2f}x"
    )
    return items, text


def make_workloads(
    sizes: dict[str, Any], keys: list[str], loops: int, workers: int = 2
) -> list[Workload]:
    workloads = []
    loops_per_ms = loops / sizes["a_ms"]
    if "A" in keys:
        n = sizes["a_items"]
        a_items = [(i, loops) for i in range(n)]
        workloads.append(
            Workload(
                "A",
                f"A: {n} x ~{sizes['a_ms']:.0f} ms CPU, speedup",
                spin,
                SpinNode,
                lambda: a_items,
                lambda: [(i, loops // 20) for i in range(8)],
                n,
                f"{n} items, each `spin` of {loops:,} loops (~{sizes['a_ms']:.0f} ms)",
            )
        )
    if "B" in keys:
        n = sizes["b_items"]
        b_items = list(range(n))
        workloads.append(
            Workload(
                "B",
                f"B: {n:,} x `x + 1`, us/item",
                add_one,
                AddOneNode,
                lambda: b_items,
                lambda: list(range(4096)),
                n,
                f"{n:,} ints, `x + 1`",
            )
        )
    if "C" in keys:
        n, mib = sizes["c_arrays"], sizes["c_mib"]
        workloads.append(
            Workload(
                "C",
                f"C: {n} x {mib} MiB arrays, MiB/s moved",
                checksum,
                ChecksumNode,
                lambda: arrays(n, mib),
                lambda: list(arrays(4, mib)),
                n,
                f"a generator of {n} float64 arrays of {mib} MiB (made lazily, one per item); "
                "exec returns `float(array.sum())`",
                nbytes=n * mib * MIB,
            )
        )
    if "D" in keys:
        d_items, text = skewed_items(sizes, loops_per_ms, workers)
        workloads.append(
            Workload(
                "D",
                f"D: {len(d_items)} skewed items, speedup",
                spin,
                SpinNode,
                lambda: d_items,
                lambda: [(i, 100) for i in range(8)],
                len(d_items),
                text,
            )
        )
    if "E" in keys:
        workloads.append(e_workload(sizes["e_items"]))
    return workloads


def e_workload(n: int) -> Workload:
    return Workload(
        "E",
        f"E: {n:,}-item generator, parent RSS growth",
        nothing,
        NothingNode,
        lambda: (i for i in range(n)),
        lambda: list(range(64)),
        n,
        f"a generator of {n:,} ints; exec returns None; every engine's results are collected "
        f"into a list, as BatchNode's post receives them ({n * 8 / MIB:.1f} MiB of pointers)",
    )


# --- engines -----------------------------------------------------------------------------------


class Skip(Exception):
    """This engine cannot run this workload sensibly; the message says why (the cell is "-")."""


class Peers:
    """The peers' pools, created once, warmed, and shared by the engines that use them."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._pool: Any = None
        self.joblib_started = False

    def executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers)
            list(self._executor.map(add_one, range(4 * self.workers)))  # starts every worker
        return self._executor

    def pool(self) -> Any:
        if self._pool is None:
            self._pool = multiprocessing.Pool(self.workers)
            self._pool.map(add_one, range(4 * self.workers))
        return self._pool

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        if self.joblib_started:
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)
            self.joblib_started = False


class Engine:
    key = ""
    label = ""

    def __init__(self, workers: int, peers: Peers) -> None:
        self.workers = workers
        self.peers = peers

    def how(self, w: Workload) -> str:
        """How this engine is fed ``w``; raises ``Skip`` if it cannot run ``w`` sensibly."""
        raise NotImplementedError

    def start(self) -> None:
        """Start this engine's workers (before any timing)."""

    def run(self, w: Workload, items: Iterable[Any]) -> list[Any]:
        raise NotImplementedError


class Batchcore(Engine):
    def __init__(self, workers: int, peers: Peers, backend: str) -> None:
        super().__init__(workers, peers)
        self.backend = backend
        self.key = backend
        self.label = f"batchcore {backend}"

    def how(self, w: Workload) -> str:
        if self.backend == "sequential":
            return "a BatchNode subclass with `backend='sequential'`, items as given"
        return (
            f"a BatchNode subclass with `backend={self.backend!r}, workers={self.workers}`, "
            "default (adaptive) chunksize, items as given"
        )

    def start(self) -> None:
        if self.backend != "sequential":
            backend = batchcore.get_backend(self.backend, workers=self.workers)
            start = getattr(backend, "start", None)  # the process backend pre-spawns its workers
            if start is not None:
                start()
            self.run(e_workload(16), list(range(16)))  # a tiny batch: workers are up and ready

    def run(self, w: Workload, items: Iterable[Any]) -> list[Any]:
        workers = None if self.backend == "sequential" else self.workers
        node = w.node(backend=self.backend, workers=workers)
        shared: dict[str, Any] = {"items": items}
        node.run(shared)
        return shared["results"]


class PPE(Engine):
    def __init__(self, workers: int, peers: Peers, tuned: bool) -> None:
        super().__init__(workers, peers)
        self.tuned = tuned
        self.key = "ppe-tuned" if tuned else "ppe"
        self.label = f"ProcessPoolExecutor ({'tuned chunksize' if tuned else 'chunksize 1'})"

    def chunksize(self, w: Workload) -> int:
        return TUNED[w.key] if self.tuned else 1

    def how(self, w: Workload) -> str:
        if w.key == "C":
            if self.tuned:
                raise Skip("the tuned chunksize for 8 MiB arrays is 1: see chunksize 1")
            return (
                f"`submit` with at most {2 * self.workers} futures in flight "
                "(`map` would take the whole generator: every array in the parent at once)"
            )
        if w.key == "E" and not self.tuned:
            raise Skip("a future per item at ~180 us each: minutes, not a sensible use")
        if w.key == "E":
            return f"`map(chunksize={self.chunksize(w)})` (it submits the whole generator)"
        return f"`map(chunksize={self.chunksize(w)})`"

    def start(self) -> None:
        self.peers.executor()

    def run(self, w: Workload, items: Iterable[Any]) -> list[Any]:
        executor = self.peers.executor()
        if w.key == "C":
            return bounded_submit(executor, w.fn, items, 2 * self.workers)
        return list(executor.map(w.fn, items, chunksize=self.chunksize(w)))


def bounded_submit(
    executor: ProcessPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], window: int
) -> list[Any]:
    """``executor.map`` in order, but reading ``items`` only as results come back."""
    pending: deque[Future[Any]] = deque()
    results = []
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            results.append(pending.popleft().result())
    while pending:
        results.append(pending.popleft().result())
    return results


class MPPool(Engine):
    def __init__(self, workers: int, peers: Peers, method: str) -> None:
        super().__init__(workers, peers)
        self.method = method
        self.key = f"pool-{method}"
        self.label = f"multiprocessing.Pool.{method}"

    def how(self, w: Workload) -> str:
        if self.method == "map":
            if w.key == "C":
                raise Skip("`map` lists the whole generator: every array in the parent at once")
            note = " (it lists the whole generator first)" if w.key == "E" else ""
            return f"`map`, default chunksize (items / (4 x workers)){note}"
        return f"`imap(chunksize={TUNED[w.key]})`"

    def start(self) -> None:
        self.peers.pool()

    def run(self, w: Workload, items: Iterable[Any]) -> list[Any]:
        pool = self.peers.pool()
        if self.method == "map":
            return pool.map(w.fn, items)
        return list(pool.imap(w.fn, items, chunksize=TUNED[w.key]))


class Joblib(Engine):
    key = "joblib"
    label = "joblib (loky)"

    def how(self, w: Workload) -> str:
        text = "`Parallel(n_jobs=workers)` defaults (batch_size='auto', pre_dispatch='2*n_jobs')"
        if w.key == "C":
            text += "; arrays > 1 MB are memory-mapped by joblib's default `max_nbytes`"
        if w.key == "E":
            text += ", `return_as='generator'`"
        return text

    def start(self) -> None:
        self.run(e_workload(16), list(range(16)))

    def run(self, w: Workload, items: Iterable[Any]) -> list[Any]:
        from joblib import Parallel, delayed

        self.peers.joblib_started = True
        call = delayed(w.fn)
        mode = "generator" if w.key == "E" else "list"
        return list(Parallel(n_jobs=self.workers, return_as=mode)(call(x) for x in items))


ENGINE_KEYS = ["sequential", "thread", "process", "ppe", "ppe-tuned", "pool-map", "pool-imap"]
ENGINE_KEYS.append("joblib")


def make_engine(key: str, workers: int, peers: Peers) -> Engine:
    if key in ("sequential", "thread", "process"):
        return Batchcore(workers, peers, key)
    if key in ("ppe", "ppe-tuned"):
        return PPE(workers, peers, tuned=key == "ppe-tuned")
    if key in ("pool-map", "pool-imap"):
        return MPPool(workers, peers, key.removeprefix("pool-"))
    if key == "joblib":
        return Joblib(workers, peers)
    raise ValueError(f"unknown engine {key!r}; valid engines are {sorted(ENGINE_KEYS)}")


# --- running -----------------------------------------------------------------------------------


class RunTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the main thread after ``seconds``, dumping every thread's stack first."""

    def expire(signum: int, frame: Any) -> None:
        faulthandler.dump_traceback(all_threads=True)
        raise RunTimeout(f"no result after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(engine: Engine, w: Workload, results: Any, expected: list[Any]) -> None:
    if not isinstance(results, list) or results != expected:
        got = results[:3] if isinstance(results, list) else results
        length = len(results) if isinstance(results, list) else "?"
        raise AssertionError(
            f"{engine.label} on {w.key}: results differ from sequential's "
            f"(got {length} results starting {got!r}, expected {len(expected)} "
            f"starting {expected[:3]!r})"
        )


def plan_row(engines: list[Engine], w: Workload) -> tuple[dict[str, Cell], list[Engine]]:
    """A cell per engine, and the engines that can run ``w`` (the others' cells say why not)."""
    row: dict[str, Cell] = {}
    active = []
    for engine in engines:
        row[engine.key] = Cell()
        try:
            engine.how(w)
        except Skip as skip:
            row[engine.key].skip = str(skip)
            continue
        active.append(engine)
    return row, active


def run_timed(
    engines: list[Engine], workloads: list[Workload], repeats: int, timeout: float
) -> dict[str, dict[str, Cell]]:
    """Time every engine on every (in-process) workload; engines take turns within a repeat."""
    cells: dict[str, dict[str, Cell]] = {}
    for w in workloads:
        row, active = plan_row(engines, w)
        cells[w.key] = row
        print(f"{w.key}: warming up {len(active)} engines", flush=True)
        warm = w.warmup_items()
        warm_expected = [w.fn(x) for x in warm]
        for engine in list(active):
            try:
                with time_limit(timeout):
                    check(engine, w, engine.run(w, list(warm)), warm_expected)
            except Exception as exc:
                row[engine.key].runs.append(Run(error=f"{type(exc).__name__}: {exc}"))
                active.remove(engine)
                print(f"  {engine.label}: ERROR {row[engine.key].error}", flush=True)
        expected: list[Any] | None = None
        for repeat in range(repeats):
            for engine in take_turns(active, repeat):  # sequential runs first in repeat 0
                cell = row[engine.key]
                if cell.error:
                    continue
                items = w.make_items()
                gc.collect()
                try:
                    with time_limit(timeout):
                        began = time.perf_counter()
                        results = engine.run(w, items)
                        seconds = time.perf_counter() - began
                    if engine.key == "sequential" and expected is None:
                        expected = results
                    assert expected is not None, "sequential must run first"
                    check(engine, w, results, expected)
                except Exception as exc:
                    cell.runs.append(Run(error=f"{type(exc).__name__}: {exc}"))
                    print(f"  {engine.label}: ERROR {cell.error}", flush=True)
                    continue
                finally:
                    results = None
                    items = None
                cell.runs.append(Run(seconds=seconds))
                print(f"  {w.key} repeat {repeat + 1}: {engine.label} {seconds:.3f} s", flush=True)
    return cells


def run_e(
    engine_keys: list[str], workers: int, n: int, repeats: int, timeout: float, peers: Peers
) -> dict[str, Cell]:
    """Each engine in a fresh child process per repeat, which reports its own RSS growth."""
    engines = [make_engine(key, workers, peers) for key in engine_keys]
    row, runnable = plan_row(engines, e_workload(n))
    active = [engine.key for engine in runnable]
    for repeat in range(repeats):
        for key in take_turns(active, repeat):
            cell = row[key]
            if cell.error:
                continue
            command = [sys.executable, __file__, "--one-e", key]
            command += ["--workers", str(workers), "--e-items", str(n)]
            # The launcher: Linux would carry this (by then large) process's peak RSS into the
            # child's ru_maxrss, which is what E reads.
            run = run_child(command, timeout=timeout, interval=None, launcher=True)
            cell.runs.append(run)
            if run.error:
                print(f"  E {key}: ERROR {run.error}", flush=True)
                continue
            print(
                f"  E repeat {repeat + 1}: {key} +{run.details['growth_mib']:.1f} MiB "
                f"(baseline {run.details['baseline_mib']:.1f} MiB; VmHWM "
                f"+{run.details['hwm_growth_mib']:.1f} MiB), {run.seconds:.2f} s",
                flush=True,
            )
    return row


def hwm_mib() -> float:
    """The peak RSS of this process's memory map (VmHWM): a cross-check of ``ru_maxrss``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_e(key: str, workers: int, n: int) -> int:
    """Child side of E: warm the engine, read the peak RSS, run the generator, read it again."""
    peers = Peers(workers)
    engine = make_engine(key, workers, peers)
    w = e_workload(n)
    try:
        engine.start()
        engine.run(w, (i for i in range(256)))
        gc.collect()
        baseline, hwm_before = max_rss_mib(), hwm_mib()
        began = time.perf_counter()
        results = engine.run(w, w.make_items())
        seconds = time.perf_counter() - began
        peak, hwm_after = max_rss_mib(), hwm_mib()
        if len(results) != n or any(value is not None for value in results):
            raise AssertionError(f"{engine.label} on E: results differ from sequential's")
        del results
    finally:
        peers.close()
        batchcore.shutdown()
    details = {"baseline_mib": baseline, "peak_mib": peak, "growth_mib": peak - baseline}
    details["hwm_growth_mib"] = hwm_after - hwm_before
    emit(Measured(seconds=seconds, details=details), engine=key)
    return 0


# --- reporting ---------------------------------------------------------------------------------


def metric(w_key: str, key: str, cell: Cell, seq: Cell, w: Workload) -> str:
    """The headline number of one cell (without pass/fail)."""
    if w_key == "E":
        growth = cell.median_detail("growth_mib")
        base = seq.median_detail("growth_mib")
        if cell is seq or math.isnan(base):
            return f"+{growth:.1f} MiB"
        return f"+{growth:.1f} MiB ({growth - base:+.1f} over seq)"
    seconds = cell.median()
    if w_key == "B":
        return f"{seconds / w.count * 1e6:.2f} us"
    if w_key == "C":
        rate = f"{w.nbytes / MIB / seconds:.0f} MiB/s"
        return f"({rate} in-process)" if key in ("sequential", "thread") else rate
    return f"{seq.median() / seconds:.2f}x"


def verdict(w_key: str, cells: dict[str, Cell], w: Workload) -> bool | None:
    """Whether batchcore's process backend meets the issue's target on this workload."""
    cell, seq = cells.get("process"), cells.get("sequential")
    if cell is None or seq is None or not cell.ok or not seq.ok:
        return None
    if w_key == "A":
        joblib = cells.get("joblib")
        beats_joblib = joblib is None or not joblib.ok or cell.median() <= joblib.median()
        return seq.median() / cell.median() >= 1.9 and beats_joblib
    if w_key == "B":
        return cell.median() / w.count * 1e6 <= 1.0
    if w_key == "C":
        return w.nbytes / MIB / cell.median() >= 440
    if w_key == "D":
        return seq.median() / cell.median() >= 1.85
    if w_key == "E":
        return cell.median_detail("growth_mib") - seq.median_detail("growth_mib") <= 5.0
    return None


def display(
    w: Workload, key: str, cells: dict[str, Cell]
) -> tuple[str, str]:  # (headline cell, raw seconds cell)
    cell, seq = cells[key], cells["sequential"]
    if cell.error:
        return "ERROR", "ERROR"
    if cell.skip:
        return "-", "-"
    if not cell.ok:
        return "?", "?"
    if not seq.ok:
        return "(no sequential baseline)", f"{cell.median():.3f}"
    text = metric(w.key, key, cell, seq, w)
    if key == "process":
        ok = verdict(w.key, cells, w)
        if ok is not None:
            text += " **pass**" if ok else " **FAIL**"
    return text, cell.spread(digits=3)


def versions() -> list[str]:
    parts = package_versions(["batchcore", "numpy", "joblib", "cloudpickle", "psutil"])
    try:
        from joblib.externals import loky

        parts.append(f"loky {loky.__version__} (joblib's vendored copy)")
    except ImportError:
        pass
    return parts


def report(
    args: argparse.Namespace,
    engines: list[Engine],
    workloads: list[Workload],
    cells: dict[str, dict[str, Cell]],
    header: list[str],
) -> str:
    lines = ["# Backends: batchcore's BatchNode backends and their peers", ""]
    lines += header
    lines += ["", "## Results", ""]
    if args.quick:
        lines += [
            "Smoke test (`--quick`): reduced sizes and one repeat; pass/fail is indicative only.",
            "",
        ]
    shown = {e.key: [display(w, e.key, cells[w.key]) for w in workloads] for e in engines}
    rows = [[e.label, *(s[0] for s in shown[e.key])] for e in engines]
    rows.append(["target (batchcore process)", *(TARGETS[w.key] for w in workloads)])
    lines += table(["engine", *(w.title for w in workloads)], rows)
    raw = table(
        ["engine", *(f"{w.key} s" for w in workloads)],
        [[e.label, *(s[1] for s in shown[e.key])] for e in engines],
    )
    lines += [
        "",
        "A and D: median sequential seconds / median engine seconds (2.00x is the ceiling on 2 "
        "cores). B: median seconds / items. C: bytes moved / median seconds (sequential and "
        "thread move nothing: theirs is the in-process rate of making and summing the arrays). "
        "E: median growth of the child's peak RSS (`ru_maxrss`) over its reading after the warm "
        "pool started, and that growth minus sequential's (the backend's own overhead); each "
        "child is started by a small launcher process, because Linux carries a parent's peak "
        "RSS into a forked child's `ru_maxrss`. "
        "`-`: the engine cannot run the workload sensibly (see below).",
        "",
        "## Workloads",
        "",
    ]
    lines += [f"- {w.key}: {w.description}" for w in workloads]
    lines += ["", "## How each engine is fed", ""]
    for engine in engines:
        keys_by_how: dict[str, list[str]] = {}
        for w in workloads:
            try:
                how = engine.how(w)
            except Skip as skip:
                how = f"- ({skip})"
            keys_by_how.setdefault(how, []).append(w.key)
        parts = [f"{', '.join(keys)}: {how}" for how, keys in keys_by_how.items()]
        lines.append(f"- {engine.label}: " + "; ".join(parts))
    lines += [
        "",
        "## Median seconds per run (min-max over repeats)",
        "",
        "E is timed inside its child process, after the warm-up.",
        "",
    ]
    lines += raw
    errors = [
        f"- {w.key} {engine.label}: {cells[w.key][engine.key].error}"
        for w in workloads
        for engine in engines
        if cells[w.key][engine.key].error
    ]
    if errors:
        lines += ["", "## Errors", "", *errors]
    return "\n".join(lines) + "\n"


def plot(path: Path, engines: list[Engine], workloads: list[Workload], cells: Any) -> bool:
    """A bar chart of speedups (A, D) if matplotlib is already installed; False if it is not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [w for w in workloads if w.key in ("A", "D")]
    if not shown:
        return False
    figure, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4), squeeze=False)
    for ax, w in zip(axes[0], shown, strict=True):
        row = cells[w.key]
        names, values = [], []
        for engine in engines:
            cell = row[engine.key]
            if cell.ok and row["sequential"].ok:
                names.append(engine.label)
                values.append(row["sequential"].median() / cell.median())
        ax.barh(names, values)
        ax.axvline(2.0, linestyle="--", color="gray")
        ax.set_title(w.title)
        ax.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per engine (median)")
    parser.add_argument("--workers", type=int, default=2, help="workers per pool")
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 repeat (smoke)")
    parser.add_argument("--only", default="A,B,C,D,E", help="workloads to run, e.g. A,B")
    parser.add_argument(
        "--engines",
        default=",".join(ENGINE_KEYS),
        help="engines to run (sequential always runs: it is the baseline)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (hang guard)")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--one-e", metavar="ENGINE", help=argparse.SUPPRESS)
    parser.add_argument("--e-items", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_counts(parser, args)
    args.only = parse_list(parser, "--only", args.only, "ABCDE", upper=True)
    engines = parse_list(parser, "--engines", args.engines, ENGINE_KEYS)
    args.engines = [key for key in ENGINE_KEYS if key == "sequential" or key in engines]
    if args.quick:
        args.repeats = 1
    if args.timeout is None:
        args.timeout = 60.0 if args.quick else 600.0
    args.output = args.output or default_output("backends", args.quick, {})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one_e:
        return one_e(args.one_e, args.workers, args.e_items or FULL["e_items"])
    sizes = QUICK if args.quick else FULL
    session = Session.start()
    loops, loop_ms = (0, 0.0)
    if "A" in args.only or "D" in args.only:
        loops, loop_ms = calibrate(sizes["a_ms"])
        print(f"calibration: spin({loops:,} loops) = {loop_ms:.1f} ms here", flush=True)
    workloads = make_workloads(sizes, args.only, loops, args.workers)
    peers = Peers(args.workers)
    engines = [make_engine(key, args.workers, peers) for key in args.engines]
    cells: dict[str, dict[str, Cell]] = {}
    try:
        in_process = [w for w in workloads if w.key != "E"]
        if in_process:
            # Peers first, so the fork-based pools fork before batchcore starts its threads.
            for engine in sorted(engines, key=lambda e: isinstance(e, Batchcore)):
                print(f"starting {engine.label}", flush=True)
                engine.start()
            cells = run_timed(engines, in_process, args.repeats, args.timeout)
    finally:
        peers.close()
        batchcore.shutdown()
    if "E" in args.only:
        print("E: one fresh child process per engine and repeat", flush=True)
        cells["E"] = run_e(
            args.engines, args.workers, sizes["e_items"], args.repeats, args.timeout, peers
        )
    leftovers = leftover_processes()

    start_method = multiprocessing.get_start_method()
    header = session.header(
        versions(), f"multiprocessing start method `{start_method}` (ProcessPoolExecutor, Pool)"
    )
    header += [
        f"- Repeats: {args.repeats} (medians; engines take turns within each repeat); "
        f"workers: {args.workers}; pools started and warmed before timing; every engine's "
        "results checked against sequential's",
    ]
    if loops:
        header.append(
            f"- Calibration: `spin` of {loops:,} loops took {loop_ms:.1f} ms "
            "(median of 5) in the parent"
        )
    header.append(
        "- Targets (batchcore process): " + "; ".join(f"{k} {v}" for k, v in TARGETS.items())
    )
    text = report(args, engines, workloads, cells, header)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    png = args.output.with_suffix(".png")
    try:
        if plot(png, engines, workloads, cells):
            text += f"\n![speedups]({png.name})\n"
    except Exception as exc:  # a chart must never cost the numbers
        print(f"plot failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    write_report(args.output, text)
    if leftovers:
        print(f"WARNING: child processes still running: {leftovers}", file=sys.stderr)
    failed = any(cell.error for row in cells.values() for cell in row.values())
    return 1 if failed or leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
