"""Where workload D's time goes on the process backend: a per-item trace of the skewed batch.

bench_backends.py reports D as one ratio. This script explains it: every item records when it
started and ended in its worker, so the run splits into item work, idle gaps between items
(the scheduler's cost) and the in-order tail (the last 200 ms item starting late). Run::

    python benchmarks/trace_skewed.py            # writes benchmarks/results/skewed-trace.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backends as bench  # the same items and spin() as workload D

import batchcore

RESULTS = Path(__file__).resolve().parent / "results"


class TracedSpin(bench.ItemsNode):
    """Workload D's node, returning ``(start, end, pid)`` per item (CLOCK_MONOTONIC is shared
    by all processes on Linux, so the workers' times line up with the parent's)."""

    def exec(self, item: tuple[int, int]) -> tuple[float, float, int]:
        began = time.monotonic()
        bench.spin(item)
        return began, time.monotonic(), os.getpid()


def sequential_durations(items: list[tuple[int, int]]) -> list[float]:
    durations = []
    for item in items:
        began = time.monotonic()
        bench.spin(item)
        durations.append(time.monotonic() - began)
    return durations


def traced_run(items: list[tuple[int, int]], workers: int) -> dict[str, Any]:
    shared: dict[str, Any] = {"items": items}
    began = time.monotonic()
    TracedSpin(backend="process", workers=workers).run(shared)
    wall = time.monotonic() - began
    trace: list[tuple[float, float, int]] = shared["results"]
    pids = sorted({pid for _, _, pid in trace})
    gaps = {}
    for pid in pids:
        spans = sorted((start, end) for start, end, p in trace if p == pid)
        gaps[pid] = (spans[0][0] - began) + sum(
            max(0.0, later[0] - earlier[1]) for earlier, later in itertools.pairwise(spans)
        )
    finished = max(end for _, end, _ in trace)
    return {
        "wall": wall,
        "work": sum(end - start for start, end, _ in trace),
        "durations": [end - start for start, end, _ in trace],
        "gaps": sum(gaps.values()),
        "tail": sum(finished - max(end for _, end, p in trace if p == pid) for pid in pids),
        "after_last": wall - (finished - began),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "skewed-trace.md")
    args = parser.parse_args(argv)
    loops, _ = bench.calibrate(bench.FULL["a_ms"])
    items, description = bench.skewed_items(bench.FULL, loops / bench.FULL["a_ms"], args.workers)
    backend = batchcore.get_backend("process", workers=args.workers)
    backend.start()  # type: ignore[attr-defined]
    TracedSpin(backend="process", workers=args.workers).run({"items": items[:16]})  # warm
    rows = []
    try:
        for repeat in range(args.repeats):
            seq = sequential_durations(items)
            run = traced_run(items, args.workers)
            seq_total = sum(seq)
            rows.append(
                {
                    "seq": seq_total,
                    "wall": run["wall"],
                    "speedup": seq_total / run["wall"],
                    "slowdown": run["work"] / seq_total,
                    "gaps": run["gaps"],
                    "tail": run["tail"],
                    "after_last": run["after_last"],
                    "ceiling_seq": bench.in_order_ceiling(seq, args.workers),
                    "best_wall": run["work"]
                    / bench.in_order_ceiling(run["durations"], args.workers),
                }
            )
            print(f"repeat {repeat + 1}: {rows[-1]['speedup']:.2f}x", flush=True)
    finally:
        batchcore.shutdown()

    def med(key: str) -> float:
        return float(statistics.median(row[key] for row in rows))

    lines = [
        "# Workload D traced: where the process backend's time goes",
        "",
        f"- Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
        f"nproc {os.cpu_count()}; workers {args.workers}; repeats {args.repeats} (medians)",
        "- Command: `python benchmarks/trace_skewed.py`",
        f"- Items: {description}",
        "- Each repeat times every item once in this process (sequential), then runs the batch "
        "on the warm process backend with each item recording its start and end in its worker.",
        "",
        "| measure | median |",
        "|---|---:|",
        f"| sequential: sum of item times in the parent | {med('seq'):.3f} s |",
        f"| process backend: wall time of the batch | {med('wall'):.3f} s |",
        f"| speedup (sequential / process wall) | {med('speedup'):.2f}x |",
        f"| the same items' work in the workers, over the sequential time | "
        f"{med('slowdown'):.3f}x |",
        f"| idle gaps in workers between items, all workers (scheduling, pickling, pipes) | "
        f"{med('gaps') * 1000:.1f} ms |",
        f"| workers idle at the end waiting for the last item (in-order tail), all workers | "
        f"{med('tail') * 1000:.1f} ms |",
        f"| from the last item's end to the batch returning (results to `post`) | "
        f"{med('after_last') * 1000:.1f} ms |",
        f"| in-order greedy ceiling, sequential item times | {med('ceiling_seq'):.2f}x |",
        f"| best in-order wall for the workers' own item times | {med('best_wall'):.3f} s |",
        "",
        "Reading it: wall = (work in workers + gaps + tail) / workers (+ the end). The gaps are "
        "what batchcore's scheduler costs; the tail is what any in-order dispatcher pays on this "
        "layout; the slowdown is the machine (two busy vCPUs run the same loop slower than one).",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[8:]))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
