"""Module-level nodes and helpers for fault tests: worker processes import them by reference.

Every fault is chosen by ``params`` (``kind``, ``bad``, ``marker_dir``), so one node class covers
the whole table of failure modes.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from batchcore import BatchNode


class Finicky(Exception):
    """Pickles, but cannot be unpickled: its __init__ needs two arguments."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def record_attempt(marker_dir: str | None, item: Any) -> int:
    """Write one file per attempt; return how many attempts this item has had so far."""
    if not marker_dir:
        return 0
    folder = Path(marker_dir)
    n = len(list(folder.glob(f"attempt-{item}-*")))
    (folder / f"attempt-{item}-{n}-{os.getpid()}").touch()
    return n + 1


def fault(kind: str, item: Any, attempt: int) -> Any:
    """Misbehave in the way ``kind`` names; return a value for kinds that return one."""
    if kind == "raise":
        raise ValueError(f"bad item {item}")
    if kind == "exit":
        os._exit(3)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "segfault":
        faulthandler.disable()
        faulthandler._sigsegv()
    if kind == "hang":
        time.sleep(3600)
    if kind == "hang_ignoring_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
    if kind == "return_lock":
        return threading.Lock()
    if kind == "return_generator":
        return (i for i in range(3))
    if kind == "finicky":
        raise Finicky("a", "b")
    if kind == "unpicklable_payload":
        raise ValueError("carries a lock", threading.Lock())
    if kind == "exit_once":
        if attempt == 1:
            os._exit(4)
        return item * 10
    if kind == "raise_once":
        if attempt == 1:
            raise ValueError(f"first attempt of {item} fails")
        return item * 10
    raise AssertionError(f"unknown fault {kind!r}")


class FaultyNode(BatchNode):
    """``exec`` returns ``item * 10`` except for ``params["bad"]`` items, which misbehave."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: Any) -> Any:
        attempt = record_attempt(self.params.get("marker_dir"), item)
        if item in self.params.get("bad", ()):
            return fault(self.params["kind"], item, attempt)
        delay = self.params.get("delay", 0.0)
        if delay:
            time.sleep(delay)
        return item * 10

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> Any:
        shared["out"] = exec_res
        return "done"


class Square(BatchNode):
    """The plainest batch: squares ``shared["items"]`` into ``shared["out"]``."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: Any) -> Any:
        return item * item

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> Any:
        shared["out"] = exec_res


class Echo(BatchNode):
    """Returns each item unchanged (for equivalence properties)."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: Any) -> Any:
        return item

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> Any:
        shared["out"] = exec_res


class WhereAmI(BatchNode):
    """Reports the worker's pid and environment for each item."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: Any) -> Any:
        import pyarrow

        time.sleep(self.params.get("delay", 0.0))
        return {
            "pid": os.getpid(),
            "thread": threading.get_ident(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "arrow_threads": pyarrow.cpu_count(),
        }

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> Any:
        shared["out"] = exec_res


class CountsUnpickling:
    """Appends a line to ``path`` each time it is unpickled (to count how often a node travels)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        with open(self.path, "a") as handle:
            handle.write(f"{os.getpid()}\n")


class Tracked(Square):
    """A ``Square`` carrying a ``CountsUnpickling`` attribute."""

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(**options)
        self.tracker = CountsUnpickling(path)


class Inner(BatchNode):
    """A nested batch: run inside another node's exec, it reports the backend it really used."""

    backend = "process"

    def prep(self, shared: dict[str, Any]) -> Any:
        return range(3)

    def exec(self, item: int) -> int:
        return item

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> Any:
        shared["inner_backend"] = self.batch_stats.backend


class Outer(BatchNode):
    """Each item runs an ``Inner`` batch and returns the backend that batch used."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return range(4)

    def exec(self, item: int) -> str:
        shared: dict[str, Any] = {}
        Inner(workers=2).run(shared)
        return str(shared["inner_backend"])

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> Any:
        shared["out"] = exec_res


class BigCrash(BatchNode):
    """Sums 16 MiB arrays; the array holding 3.0 kills its worker."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, array: Any) -> float:
        if array[0] == 3:
            os._exit(9)
        return float(array.sum())

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> Any:
        shared["out"] = exec_res


class Logs(BatchNode):
    """Logs from ``exec`` through the logger ``params["logger"]`` (workers send records up)."""

    def prep(self, shared: dict[str, Any]) -> list[Any]:
        return list(shared["items"])

    def exec(self, item: Any) -> int:
        import logging

        logger = logging.getLogger(self.params["logger"])
        logger.debug("debug %s", item)
        logger.info("item %s in pid %d", item, os.getpid(), extra={"lock": threading.Lock()})
        if item == 0:
            try:
                raise KeyError("boom")
            except KeyError:
                logger.exception("failed on %s", item)
        if item == 1:  # a thread of the worker logs too
            thread = threading.Thread(target=logger.warning, args=("from a thread",))
            thread.start()
            thread.join()
        return os.getpid()

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["pids"] = exec_res
