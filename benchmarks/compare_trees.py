"""Two source trees of batchcore (before and after a change), measured in one run, taking turns.

Runs each tree's own ``bench_backends.py`` (workloads A-E, batchcore process) and
``bench_csv.py`` (T2, batchcore process and sequential) with that tree first on ``PYTHONPATH``,
alternating the trees every round, and tabulates the medians over rounds::

    git worktree add ../before HEAD~1
    python benchmarks/compare_trees.py --before ../before --after . --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import Session, package_versions, table, take_turns, write_report

HERE = Path(__file__).resolve().parent
WORKLOADS = ["A", "B", "C", "D", "E"]


# Makes ``batchcore.processors`` the tree's own ``processors/`` folder, as an install would (an
# editable install elsewhere would otherwise map it to that other checkout's folder).
SHIM = """import importlib.abc, importlib.util, os, sys
ROOT = os.environ["COMPARE_TREE"]
class _Processors(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "batchcore.processors":
            return None
        folder = os.path.join(ROOT, "processors")
        return importlib.util.spec_from_file_location(
            name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
sys.meta_path.insert(0, _Processors())
"""


def run_tree(tree: Path, script: str, args: list[str], out: Path) -> list[str]:
    """Run ``tree``'s own benchmark ``script`` with that tree's code; its results file's lines."""
    shim = out.parent / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{shim}", COMPARE_TREE=str(tree))
    command = [sys.executable, str(tree / "benchmarks" / script), *args, "--output", str(out)]
    subprocess.run(command, env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return out.read_text().splitlines()


def row(lines: list[str], label: str) -> dict[str, str]:
    """The first markdown table row whose first cell is ``label``, by its table's headings."""
    headings: list[str] = []
    for line in lines:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] == "engine":
            headings = cells
        elif cells and cells[0] == label:
            return dict(zip(headings[1:], cells[1:], strict=True))
    raise ValueError(f"no row {label!r} in the results")


def number(cell: str) -> float:
    """The first number in a cell such as ``2.00x **pass**``, ``0.38 us`` or ``+9.6 MiB (...)``."""
    return float(cell.split()[0].rstrip("x").lstrip("+"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree before")
    parser.add_argument("--after", type=Path, required=True, help="source tree after")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tree (medians)")
    parser.add_argument("--csv-size", default="300MB", help="CSV file for T2")
    parser.add_argument("--quick", action="store_true", help="each script's --quick (smoke)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "compare-trees.md")
    args = parser.parse_args()
    session = Session.start()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    cells: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        for round_ in range(args.rounds):
            for name in take_turns(list(trees), round_):
                tree = trees[name]
                lines = run_tree(
                    tree,
                    "bench_backends.py",
                    ["--engines", "process", *(["--quick"] if args.quick else ["--repeats", "3"])],
                    Path(scratch) / f"{name}-backends.md",
                )
                measured = list(row(lines, "batchcore process").values())
                for workload, cell in zip(WORKLOADS, measured, strict=True):
                    cells.setdefault((name, workload), []).append(number(cell))
                csv_args = ["--tasks", "T2", "--engines", "process,sequential"]
                csv_args += ["--quick"] if args.quick else ["--repeats", "3"]
                csv_args += ["--size", args.csv_size, "--small-size", "0", "--data-dir", str(data)]
                lines = run_tree(tree, "bench_csv.py", csv_args, Path(scratch) / f"{name}-csv.md")
                for engine in ("process (2 workers)", "sequential"):
                    t2 = number(row(lines, f"batchcore {engine}")["T2 s"])
                    cells.setdefault((name, f"T2 {engine}"), []).append(t2)
    columns = [*WORKLOADS, "T2 process (2 workers)", "T2 sequential"]
    rows = []
    for name in trees:
        rows.append([name, *(f"{statistics.median(cells[name, c]):.2f}" for c in columns)])
    ratios = [
        f"{statistics.median(cells['after', c]) / statistics.median(cells['before', c]):.2f}"
        for c in columns
    ]
    rows.append(["after / before", *ratios])
    header = [
        "tree",
        "A speedup",
        "B us/item",
        "C MiB/s",
        "D speedup",
        "E MiB growth",
        "T2 process s",
        "T2 sequential s",
    ]
    text = "\n".join(
        [
            "# Before and after, in one run",
            "",
            *session.header(package_versions(["numpy", "pyarrow"])),
            f"- Trees: before `{trees['before']}`, after `{trees['after']}`; {args.rounds} rounds,"
            " trees taking turns; each cell the median over rounds of each script's own median",
            "",
            *table(header, rows),
            "",
            "A, D: speedup over sequential, C: MiB/s (higher is better); B: us per item,"
            " E: parent RSS growth, T2: seconds (lower is better).",
            "",
        ]
    )
    write_report(args.output, text)


if __name__ == "__main__":
    main()
