"""Every failure mode, injected for real, on the backends where it can happen.

One table (``CASES``) feeds the fail-fast and the collect tests: what the item does, which
exception the caller must see, and which words the message must contain.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, backend_params
from faulty import FaultyNode, Finicky

import batchcore
from batchcore import (
    ItemTimeoutError,
    RemoteItemError,
    SerializationError,
    WorkerCrashedError,
)
from batchcore.errors import RemoteTraceback

ITEMS = list(range(8))
BAD = 3
TIMEOUT = 0.5  # seconds per item: what the hang cases wait out (the others take milliseconds)

# kind, backends it applies to, expected exception type, text the message must contain
CASES: list[tuple[str, tuple[str, ...], type[BaseException], str]] = [
    ("raise", ("sequential", "thread", "process", "dask"), ValueError, "bad item 3"),
    ("exit", ("process",), WorkerCrashedError, "exited with code 3"),
    ("sigkill", ("process",), WorkerCrashedError, "SIGKILL"),
    ("segfault", ("process",), WorkerCrashedError, "SIGSEGV"),
    ("hang", ("thread", "process", "dask"), ItemTimeoutError, f"timeout={TIMEOUT}"),
    ("hang_ignoring_sigterm", ("process",), ItemTimeoutError, f"timeout={TIMEOUT}"),
    ("return_lock", ("process", "dask"), SerializationError, "_thread.lock"),
    ("return_generator", ("process",), SerializationError, "generator"),
    ("finicky", ("process", "dask"), RemoteItemError, "Finicky"),
    ("unpicklable_payload", ("process",), RemoteItemError, "carries a lock"),
    ("finicky", ("sequential", "thread"), Finicky, "a/b"),
]
MARKS = {param.values[0]: param.marks for param in backend_params(BACKENDS)}
ROWS = [
    pytest.param(kind, backend, error, text, id=f"{kind}-{backend}", marks=MARKS[backend])
    for kind, backends, error, text in CASES
    for backend in backends
]


def run_faulty(kind: str, backend: str, on_error: str, **params: Any) -> tuple[FaultyNode, dict]:
    node = FaultyNode(backend=backend, workers=2, timeout=TIMEOUT, on_error=on_error)
    node.set_params({"kind": kind, "bad": (BAD,), **params})
    shared: dict[str, Any] = {"items": ITEMS}
    node.run(shared)
    return node, shared


@pytest.mark.crash
@pytest.mark.parametrize(("kind", "backend", "error", "text"), ROWS)
def test_fail_fast_names_the_item(kind: str, backend: str, error: type, text: str) -> None:
    began = time.monotonic()
    with pytest.raises(error, match=text) as caught:
        run_faulty(kind, backend, "raise")
    assert time.monotonic() - began < 10
    notes = getattr(caught.value, "__notes__", [])
    assert any("item 3 (3)" in note for note in notes), notes
    if backend == "process" and error in (ValueError, RemoteItemError, SerializationError):
        # the worker's traceback is chained, as CPython's _RemoteTraceback does
        assert isinstance(caught.value.__cause__, RemoteTraceback)
        assert "Traceback" in str(caught.value.__cause__)
    # the pool heals: the next batch on the same backend succeeds completely
    _, shared = run_faulty(kind, backend, "raise", bad=())
    assert shared["out"] == [x * 10 for x in ITEMS]


@pytest.mark.crash
@pytest.mark.parametrize(("kind", "backend", "error", "text"), ROWS)
def test_collect_keeps_every_other_item(kind: str, backend: str, error: type, text: str) -> None:
    node, shared = run_faulty(kind, backend, "collect")
    assert shared["out"] == [x * 10 for x in ITEMS if x != BAD]
    stats = node.batch_stats
    assert stats.items == len(ITEMS)
    assert stats.failed == 1
    [failure] = stats.failures
    assert failure.index == BAD and failure.item == BAD
    assert isinstance(failure.exception, error)
    assert text in str(failure.exception)
    assert failure.traceback


TRANSIENT = [
    pytest.param("raise", param.values[0], marks=param.marks, id=f"raise-{param.values[0]}")
    for param in backend_params(BACKENDS)
] + [pytest.param("exit", "process", id="exit-process")]


@pytest.mark.crash
@pytest.mark.parametrize(("kind", "backend"), TRANSIENT)
def test_transient_failure_is_retried(kind: str, backend: str, tmp_path: Path) -> None:
    node = FaultyNode(max_retries=2, backend=backend, workers=2)
    node.set_params({"kind": f"{kind}_once", "bad": (BAD,), "marker_dir": str(tmp_path)})
    shared: dict[str, Any] = {"items": ITEMS}
    node.run(shared)
    assert shared["out"] == [x * 10 for x in ITEMS]
    assert len(list(tmp_path.glob(f"attempt-{BAD}-*"))) == 2
    assert node.batch_stats.retries == 1


@pytest.mark.crash
def test_crash_without_retries_left_is_not_retried(tmp_path: Path) -> None:
    node = FaultyNode(max_retries=1, backend="process", workers=2)
    node.set_params({"kind": "exit_once", "bad": (BAD,), "marker_dir": str(tmp_path)})
    with pytest.raises(WorkerCrashedError, match="exited with code 4"):
        node.run({"items": ITEMS})
    assert len(list(tmp_path.glob(f"attempt-{BAD}-*"))) == 1


@pytest.mark.crash
def test_poison_item_is_quarantined_after_max_retries(tmp_path: Path) -> None:
    node = FaultyNode(max_retries=3, wait=0.05, backend="process", workers=2)
    node.set_params({"kind": "exit", "bad": (BAD,), "marker_dir": str(tmp_path)})
    with pytest.raises(WorkerCrashedError, match="gave up after 3 attempts"):
        node.run({"items": ITEMS})
    assert len(list(tmp_path.glob(f"attempt-{BAD}-*"))) == 3


@pytest.mark.crash
def test_crash_falls_back_to_exec_fallback_in_the_parent() -> None:
    class Rescued(FaultyNode):
        def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
            return f"rescued {prep_res}: {type(exc).__name__}"

    node = Rescued(backend="process", workers=2)
    node.set_params({"kind": "exit", "bad": (BAD,)})
    shared: dict[str, Any] = {"items": ITEMS}
    node.run(shared)
    assert shared["out"][BAD] == "rescued 3: WorkerCrashedError"


@pytest.mark.crash
def test_innocent_items_in_flight_are_rerun_not_failed(tmp_path: Path) -> None:
    """A crash mid-chunk loses the results of its innocent neighbours: they must run again."""
    node = FaultyNode(backend="process", workers=2, chunksize=4, on_error="collect")
    node.set_params({"kind": "exit", "bad": (5,), "marker_dir": str(tmp_path)})
    shared: dict[str, Any] = {"items": list(range(12))}
    node.run(shared)
    assert shared["out"] == [x * 10 for x in range(12) if x != 5]
    # item 4 ran in the same chunk before the crash, so it ran twice; 6 and 7 never got lost
    assert len(list(tmp_path.glob("attempt-4-*"))) == 2
    assert len(list(tmp_path.glob("attempt-5-*"))) == 1
    assert [f.index for f in node.batch_stats.failures] == [5]


@pytest.mark.crash
def test_worker_killed_from_outside_between_batches_is_replaced() -> None:
    node = FaultyNode(backend="process", workers=2)
    node.set_params({"kind": "raise", "bad": ()})
    node.run({"items": ITEMS})
    pool = batchcore.get_backend("process", 2)._idle[0]  # type: ignore[attr-defined]
    victim = pool.workers[0].proc.pid
    os.kill(victim, 9)
    shared: dict[str, Any] = {"items": list(range(40))}
    node.run(shared)
    assert shared["out"] == [x * 10 for x in range(40)]
    assert victim not in {w.proc.pid for w in pool.workers}


@pytest.mark.crash
def test_timeout_retries_then_fails(tmp_path: Path) -> None:
    node = FaultyNode(max_retries=2, backend="process", workers=2, timeout=0.5)
    node.set_params({"kind": "hang", "bad": (BAD,), "marker_dir": str(tmp_path)})
    began = time.monotonic()
    with pytest.raises(ItemTimeoutError, match="gave up after 2 attempts"):
        node.run({"items": ITEMS})
    assert time.monotonic() - began < 5
    assert len(list(tmp_path.glob(f"attempt-{BAD}-*"))) == 2


def test_exception_keeps_its_type_for_plain_except(backend: str) -> None:
    try:
        run_faulty("raise", backend, "raise")
    except ValueError as exc:  # PocketFlow code catching the original type still works
        assert str(exc) == "bad item 3"
    else:
        pytest.fail("no error raised")


def test_unpicklable_item_is_named_and_others_run() -> None:
    import threading

    items: list[Any] = [1, 2, threading.Lock(), 4]
    node = FaultyNode(backend="process", workers=2, on_error="collect")
    node.set_params({"kind": "raise", "bad": ()})
    shared: dict[str, Any] = {"items": items}
    node.run(shared)
    assert shared["out"] == [10, 20, 40]
    [failure] = node.batch_stats.failures
    assert failure.index == 2
    assert isinstance(failure.exception, SerializationError)
    assert "item 2" in str(failure.exception) and "lock" in str(failure.exception)

    with pytest.raises(SerializationError, match="item 2"):
        FaultyNode(backend="process", workers=2).run({"items": items})


def test_many_unpicklable_items_then_good_ones() -> None:
    """loky's queue-full deadlock case: 100 bad items among 100 good ones."""
    import threading

    items: list[Any] = [threading.Lock() if i % 2 else i for i in range(200)]
    node = FaultyNode(backend="process", workers=2, on_error="collect")
    node.set_params({"kind": "raise", "bad": ()})
    shared: dict[str, Any] = {"items": items}
    node.run(shared)
    assert shared["out"] == [i * 10 for i in range(0, 200, 2)]
    assert node.batch_stats.failed == 100


def test_unpicklable_node_is_named_before_any_work() -> None:
    import threading

    node = FaultyNode(backend="process", workers=2)
    node.connection = threading.Lock()  # type: ignore[attr-defined]
    with pytest.raises(SerializationError, match=r"FaultyNode\.connection.*lock") as caught:
        node.run({"items": ITEMS})
    assert caught.value.what == "node"


def test_fail_fast_raises_the_first_failing_item_in_input_order() -> None:
    node = FaultyNode(backend="process", workers=2, chunksize=1)
    node.set_params({"kind": "raise", "bad": (2, 6)})
    with pytest.raises(ValueError, match="bad item 2"):
        node.run({"items": ITEMS})


def test_error_in_prep_generator_propagates(backend: str) -> None:
    def items() -> Any:
        yield 1
        yield 2
        raise KeyError("source broke")

    node = FaultyNode(backend=backend, workers=2)
    node.set_params({"kind": "raise", "bad": ()})
    with pytest.raises(KeyError, match="source broke"):
        node.run({"items": items()})


@pytest.mark.crash
def test_failure_cancels_queued_work_quickly() -> None:
    """joblib's abort test: the first item fails while 100 slow items wait behind it."""
    node = FaultyNode(backend="process", workers=2, chunksize=1)
    node.set_params({"kind": "raise", "bad": (0,), "delay": 10})
    began = time.monotonic()
    with pytest.raises(ValueError, match="bad item 0"):
        node.run({"items": list(range(100))})
    assert time.monotonic() - began < 5  # in-flight slow items were stopped, queued ones dropped


@pytest.mark.crash
def test_workers_that_cannot_start_raise_instead_of_respawning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchcore import WorkerStartupError
    from batchcore.backends import process as process_backend

    monkeypatch.setattr(process_backend, "BOOT", "import sys; sys.exit(5)")
    began = time.monotonic()
    with (
        process_backend.ProcessBackend(workers=2) as backend,
        pytest.raises(
            WorkerStartupError, match=r"exiting before they are ready.*exited with code 5"
        ),
    ):
        FaultyNode(backend=backend).run({"items": ITEMS})
    assert time.monotonic() - began < 10


@pytest.mark.crash
def test_crash_while_big_payloads_are_in_flight() -> None:
    """CPython's test_crash_big_data: a worker dies while pipe-sized payloads move."""
    import numpy as np
    from faulty import BigCrash

    node = BigCrash(backend="process", workers=2, on_error="collect", chunksize=1)
    shared: dict[str, Any] = {"items": [np.full(2**21, i, dtype=np.float64) for i in range(8)]}
    node.run(shared)
    assert shared["out"] == [float(i) * 2**21 for i in range(8) if i != 3]
    assert [f.index for f in node.batch_stats.failures] == [3]


def test_fifty_runs_leak_no_processes_threads_or_fds() -> None:
    import threading

    import psutil

    node = FaultyNode(backend="process", workers=2)
    node.set_params({"kind": "raise", "bad": ()})
    node.run({"items": ITEMS})
    me = psutil.Process()
    before = (len(me.children()), threading.active_count(), me.num_fds())
    for _ in range(50):
        node.run({"items": list(range(20))})
    assert (len(me.children()), threading.active_count(), me.num_fds()) == before
