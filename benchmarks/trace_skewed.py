"""Where workload D's time goes on the process backend: a per-item trace of the skewed batch.

bench_backends.py reports D as one ratio. This script explains it: every item records when it
started and ended in its worker, so the run splits into item work, idle gaps between items
(the scheduler's cost) and the in-order tail (the last 200 ms item starting late); joblib runs
the same traced items alongside, as the reference. Run::

    python benchmarks/trace_skewed.py            # writes benchmarks/results/skewed-trace.md
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backends as bench  # the same items and spin() as workload D
from harness import RESULTS, Session, package_versions, start_batchcore, table, write_report

import batchcore


def traced_spin(item: tuple[int, int]) -> tuple[float, float, int]:
    """``spin`` returning ``(start, end, pid)`` (CLOCK_MONOTONIC is shared by all processes on
    Linux, so the workers' times line up with the parent's)."""
    began = time.monotonic()
    bench.spin(item)
    return began, time.monotonic(), os.getpid()


class TracedSpin(bench.ItemsNode):
    """Workload D's node, tracing each item."""

    def exec(self, item: tuple[int, int]) -> tuple[float, float, int]:
        return traced_spin(item)


def sequential_durations(items: list[tuple[int, int]]) -> list[float]:
    durations = []
    for item in items:
        began = time.monotonic()
        bench.spin(item)
        durations.append(time.monotonic() - began)
    return durations


def analyse(
    trace: list[tuple[float, float, int]], began: float, wall: float, seq: list[float], workers: int
) -> dict[str, float]:
    """Split one traced run into work, idle gaps and the tail, against the sequential times."""
    pids = sorted({pid for _, _, pid in trace})
    gaps = 0.0
    for pid in pids:
        spans = sorted((start, end) for start, end, p in trace if p == pid)
        gaps += (spans[0][0] - began) + sum(
            max(0.0, later[0] - earlier[1]) for earlier, later in itertools.pairwise(spans)
        )
    finished = max(end for _, end, _ in trace)
    work = sum(end - start for start, end, _ in trace)
    durations = [end - start for start, end, _ in trace]
    return {
        "seq": sum(seq),
        "wall": wall,
        "speedup": sum(seq) / wall,
        "slowdown": work / sum(seq),
        "gaps": gaps,
        "tail": sum(finished - max(end for _, end, p in trace if p == pid) for pid in pids),
        "after_last": wall - (finished - began),
        "ceiling_seq": bench.in_order_ceiling(seq, workers),
        "best_wall": work / bench.in_order_ceiling(durations, workers),
    }


def run_batchcore(items: list[tuple[int, int]], workers: int) -> tuple[Any, float, float]:
    shared: dict[str, Any] = {"items": items}
    began = time.monotonic()
    TracedSpin(backend="process", workers=workers).run(shared)
    return shared["results"], began, time.monotonic() - began


def run_joblib(parallel: Any, items: list[tuple[int, int]]) -> tuple[Any, float, float]:
    from joblib import delayed

    began = time.monotonic()
    trace = parallel(delayed(traced_spin)(item) for item in items)
    return trace, began, time.monotonic() - began


ROWS = [
    ("seq", "sequential: sum of item times in the parent", "{:.3f} s"),
    ("wall", "wall time of the batch", "{:.3f} s"),
    ("speedup", "speedup (sequential / wall)", "{:.2f}x"),
    ("slowdown", "the same items' work in the workers, over the sequential time", "{:.3f}x"),
    ("gaps", "idle gaps in workers before and between items, all workers", "{:.1f} ms"),
    ("tail", "workers idle at the end waiting for the last item (in-order tail)", "{:.1f} ms"),
    ("after_last", "from the last item's end to the batch returning", "{:.1f} ms"),
    ("ceiling_seq", "in-order greedy ceiling, sequential item times", "{:.2f}x"),
    ("best_wall", "best in-order wall for the workers' own item times", "{:.3f} s"),
]
MS = {"gaps", "tail", "after_last"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "skewed-trace.md")
    args = parser.parse_args(argv)
    session = Session.start()
    loops, _ = bench.calibrate(bench.FULL["a_ms"])
    items, description = bench.skewed_items(bench.FULL, loops / bench.FULL["a_ms"], args.workers)
    try:
        from joblib import Parallel

        parallel: Any = Parallel(n_jobs=args.workers)
        run_joblib(parallel, items[:16])  # warm
    except ImportError:
        parallel = None
    start_batchcore("process", args.workers)
    TracedSpin(backend="process", workers=args.workers).run({"items": items[:16]})  # warm
    engines = ["batchcore process"] + (["joblib (loky)"] if parallel is not None else [])
    rows: dict[str, list[dict[str, float]]] = {engine: [] for engine in engines}
    try:
        for repeat in range(args.repeats):
            seq = sequential_durations(items)
            rows["batchcore process"].append(
                analyse(*run_batchcore(items, args.workers), seq, args.workers)
            )
            if parallel is not None:
                rows["joblib (loky)"].append(
                    analyse(*run_joblib(parallel, items), seq, args.workers)
                )
            done = ", ".join(f"{e} {rows[e][-1]['speedup']:.2f}x" for e in engines)
            print(f"repeat {repeat + 1}: {done}", flush=True)
    finally:
        batchcore.shutdown()

    def med(engine: str, key: str) -> float:
        value = float(statistics.median(row[key] for row in rows[engine]))
        return value * 1000 if key in MS else value

    lines = [
        "# Workload D traced: where the process backend's time goes",
        "",
        *session.header(package_versions(["batchcore", "joblib"])),
        f"- Workers: {args.workers}; repeats: {args.repeats} (medians)",
        f"- Items: {description}",
        "- Each repeat times every item once in this process (sequential), then runs the batch "
        "on the warm process backend, then on a warm joblib `Parallel` (default batching), "
        "with each item recording its start and end in its worker.",
        "",
        *table(
            ["measure", *engines],
            [[text, *(form.format(med(e, key)) for e in engines)] for key, text, form in ROWS],
        ),
        "",
        "Reading it: wall = (work in workers + gaps + tail) / workers (+ the end). The gaps are "
        "what the scheduler costs; the tail is what any in-order dispatcher pays on this "
        "layout; the slowdown is the machine (two busy vCPUs run the same loop slower than one).",
    ]
    write_report(args.output, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
