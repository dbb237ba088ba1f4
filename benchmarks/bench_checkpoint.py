"""What ``checkpoint=`` costs: the same batch with no journal, with a fresh journal, and rerun on
a finished journal (everything resumed), in one run, engines taking turns, medians.

Workloads (bench_backends.py's)::

    A  200 CPU-bound items of ~17 ms (a pure-Python loop calibrated at start), process backend
    B  100,000 trivial items (x + 1), process and sequential backends       [us per item]

Pools are started and warmed before timing (as in bench_backends.py: B's per-item cost is a
warm pool's). The targets (issue 13): journaling adds at most 3% on A and at most 2x to B's
per-item cost. Beside the wall time, the parent's CPU time (where the journal's work is done:
keys, lookups, commits; a warm pool's workers are not counted).

    python benchmarks/bench_checkpoint.py                 # 5 repeats: ~1 min on 2 cores
    python benchmarks/bench_checkpoint.py --repeats 1     # smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import calibrate, spin
from harness import write_report

import batchcore
from batchcore import BatchNode

MODES = ("none", "fresh journal", "all resumed")


class Items(BatchNode):
    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["out"] = exec_res


class Spin(Items):
    def exec(self, item: tuple[int, int]) -> int:
        return spin(item)


class AddOne(Items):
    def exec(self, item: int) -> int:
        return item + 1


def timed(
    node_class: type[Items], backend: str, items: list[Any], mode: str, folder: Path
) -> tuple[float, float]:
    """Seconds for one run of the batch, wall and the parent's CPU; ``mode`` says which journal
    it gets."""
    path = folder / f"{node_class.__name__}-{backend}-{len(items)}.sqlite"
    if mode == "fresh journal":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    checkpoint = None if mode == "none" else path
    shared: dict[str, Any] = {"items": items}
    began, cpu = time.perf_counter(), time.process_time()
    node_class(backend=backend, workers=2, checkpoint=checkpoint).run(shared)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    assert len(shared["out"]) == len(items)
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results/checkpoint.md"
    )
    args = parser.parse_args()
    loops, item_ms = calibrate(17.0)
    rows = [
        ("A: 200 x ~17 ms", Spin, "process", [(i, loops) for i in range(200)]),
        ("B: 100,000 trivial", AddOne, "process", list(range(100_000))),
        ("B: 100,000 trivial", AddOne, "sequential", list(range(100_000))),
    ]
    load_before = os.getloadavg()[0]
    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _name, node_class, backend, items in rows:  # warm pools
            timed(node_class, backend, items[:50], "none", Path(folder))
            timed(node_class, backend, items, "fresh journal", Path(folder))
        for _ in range(args.repeats):
            for name, node_class, backend, items in rows:
                for mode in MODES:  # "all resumed" reads the journal "fresh journal" completed
                    measured = timed(node_class, backend, items, mode, Path(folder))
                    times.setdefault((name, backend, mode), []).append(measured)
    batchcore.shutdown()
    lines = [
        "# checkpoint=: what the journal costs",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after",
        f"- Machine: nproc {os.cpu_count()}, Python {platform.python_version()}",
        "- Command: `python benchmarks/bench_checkpoint.py"
        + (f" --repeats {args.repeats}`" if args.repeats != 5 else "`"),
        f"- Method: warm pools (2 workers), {args.repeats} repeats, modes taking turns; medians. "
        f"A's items: {item_ms:.1f} ms each (calibrated). Fresh journal: the journal file deleted "
        "before the run; all resumed: rerun on the journal a fresh run just completed.",
        "",
        "| workload | backend | no journal | fresh journal | overhead | parent CPU: none, fresh "
        "| all resumed | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, _, backend, items in rows:
        walls = [statistics.median(wall for wall, _ in times[(name, backend, m)]) for m in MODES]
        cpus = [statistics.median(cpu for _, cpu in times[(name, backend, m)]) for m in MODES]
        none, fresh, resumed = walls
        if name.startswith("A"):
            cells = [f"{none:.2f} s", f"{fresh:.2f} s", f"{(fresh / none - 1) * 100:+.1f}%"]
            cells += [f"{cpus[0]:.3f} s, {cpus[1]:.3f} s", f"{resumed:.3f} s", "overhead <= 3%"]
        else:
            per = [seconds / len(items) * 1e6 for seconds in walls]
            cpu = [seconds / len(items) * 1e6 for seconds in cpus]
            cells = [f"{per[0]:.2f} us/item", f"{per[1]:.2f} us/item", f"{per[1] / per[0]:.2f}x"]
            cells += [f"{cpu[0]:.2f}, {cpu[1]:.2f} us/item", f"{per[2]:.2f} us/item"]
            cells.append("<= 2x per item")
        lines.append(f"| {name} | {backend} | " + " | ".join(cells) + " |")
    write_report(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
