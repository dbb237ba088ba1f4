"""Which of batchcore's modules one run passes through, in order: a measure of indirection.

Profiles every Python call in this process (the parent's side of the run: with
``--backend process`` a worker's own path is ``_worker -> base.run_chunk -> nodes``) and prints
the sequence of batchcore modules entered, consecutive repeats merged, with the number of
transitions and of distinct modules. Run it from a checkout's root (any version of it)::

    python benchmarks/trace_modules.py node --backend process   # MyNode(backend=, workers=).run()
    python benchmarks/trace_modules.py csv                      # batchcore csv stats ... --json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any


def visits(run: Callable[[], object]) -> list[str]:
    """The batchcore modules whose code ``run`` calls, in call order, consecutive repeats merged."""
    path: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith(("batchcore", "processors")) and (not path or path[-1] != module):
            path.append(module)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return path


def node_run(backend: str) -> object:
    from batchcore import BatchNode

    class Square(BatchNode):
        def prep(self, shared: dict[str, Any]) -> list[int]:
            return [1, 2, 3]

        def exec(self, item: int) -> int:
            return item * item

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
            shared["out"] = exec_res

    return Square(backend=backend, workers=2).run({})


def csv_run(backend: str) -> object:
    if Path("processors/cli.py").exists():  # a checkout from before batchcore.processors
        from processors.cli import main  # type: ignore[import-not-found]
    else:
        from batchcore.processors.cli import main
    argv = ["csv", "stats", "data/sales.csv", "--sum", "amount", "--group-by", "region"]
    argv += ["--backend", backend, "--json"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["node", "csv"])
    parser.add_argument("--backend", default="sequential")
    args = parser.parse_args()
    job = node_run if args.what == "node" else csv_run

    def run() -> object:
        return job(args.backend)

    run()  # once to import everything and warm the pool: that is not the path measured
    path = visits(run)
    print(" -> ".join(path))
    print(f"{len(path) - 1} transitions, {len(set(path))} modules")
    import batchcore

    batchcore.shutdown()


if __name__ == "__main__":
    main()
