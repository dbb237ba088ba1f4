"""Backend behaviour: same results as sequential, lazy input, chunking, warm pools, settings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import BACKENDS, backend_params
from faulty import Echo, FaultyNode, Outer, Square, Tracked, WhereAmI
from hypothesis import given
from hypothesis import strategies as st

import batchcore
from batchcore import BatchNode, use_backend
from batchcore.backends import get_backend
from batchcore.nodes import NodeTask
from batchcore.options import resolve_options as resolve_settings


def _head_sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


PICKLABLE = st.lists(
    st.one_of(st.integers(), st.none(), st.text(max_size=5), st.floats(allow_nan=False)),
    max_size=60,
)


@pytest.mark.parametrize("name", backend_params(BACKENDS))
@given(items=PICKLABLE)
def test_any_backend_equals_sequential(name: str, items: list[Any]) -> None:
    expected: dict[str, Any] = {"items": items}
    Echo().run(expected)
    shared: dict[str, Any] = {"items": items}
    Echo(backend=name, workers=2).run(shared)
    assert shared["out"] == expected["out"] == items


@pytest.mark.parametrize("name", backend_params(BACKENDS))
@given(items=st.lists(st.integers(), max_size=300), chunksize=st.none() | st.integers(1, 50))
def test_results_keep_input_order_for_any_chunking(
    name: str, items: list[int], chunksize: int | None
) -> None:
    shared: dict[str, Any] = {"items": iter(items)}
    Square(backend=name, workers=2, chunksize=chunksize).run(shared)
    assert shared["out"] == [x * x for x in items]


def test_prep_may_return_any_iterable(backend: str) -> None:
    for items in (
        [1, 2, 3],
        (1, 2, 3),
        range(1, 4),
        (x for x in [1, 2, 3]),
        {1: "a", 2: "b", 3: "c"},
    ):
        shared: dict[str, Any] = {"items": items}
        Square(backend=backend, workers=2).run(shared)
        assert shared["out"] == [1, 4, 9]


def test_none_from_prep_is_an_empty_batch(backend: str) -> None:
    shared: dict[str, Any] = {"items": None}
    Square(backend=backend, workers=2).run(shared)
    assert shared["out"] == []


class HeadWaitsForMarker(Square):
    """Item 0 blocks until ``marker`` exists (60 s at most): results behind it cannot be
    yielded, so reading runs ahead until the window stops it."""

    def __init__(self, marker: str, **options: Any) -> None:
        super().__init__(**options)
        self.marker = marker

    def exec(self, item: Any) -> Any:
        if item == 0:
            deadline = time.monotonic() + 60
            while not os.path.exists(self.marker) and time.monotonic() < deadline:
                time.sleep(0.01)
        return item * item


def read_ahead_window(name: str, workers: int, chunksize: int) -> int:
    """Items the run loop may hold read and not yet yielded, for fixed-size jobs."""
    from batchcore.backends import ordered

    jobs_per_worker = ordered.WINDOW_JOBS_PER_WORKER
    if name == "dask":
        from batchcore.backends.dask import WINDOW_PER_WORKER

        jobs_per_worker = WINDOW_PER_WORKER
    return min(jobs_per_worker * chunksize, ordered.WINDOW_ITEMS_PER_WORKER) * workers


@pytest.mark.parametrize("chunksize", [100, 1000])  # the window counts jobs, then items
def test_generator_is_consumed_lazily_with_a_bounded_window(
    parallel_backend: str, chunksize: int, tmp_path: Path
) -> None:
    """A slow head item holds every later result back: the generator records how far ahead of
    the consumer each item was pulled, so the bound is checked at every read, and the window is
    reached (the marker that releases the head is written only once reading got that far)."""
    window = read_ahead_window(parallel_backend, 2, chunksize)
    marker = tmp_path / "window-reached"
    received = [0]  # items the consumer has been given so far
    ahead: list[int] = []  # at each read: items read and not yet given to the consumer

    def source() -> Any:
        for i in range(2 * window):
            ahead.append(i + 1 - received[0])
            if ahead[-1] >= window:
                marker.touch()
            yield i

    backend = get_backend(parallel_backend, 2)
    node = HeadWaitsForMarker(str(marker))
    chunks = backend.map(NodeTask(node), source(), chunksize=chunksize)
    try:
        for chunk in chunks:
            assert chunk.start == received[0]
            assert chunk.values == [x * x for x in chunk.items]
            received[0] += len(chunk.items)
    finally:
        chunks.close()  # type: ignore[attr-defined]
    assert received[0] == 2 * window
    assert window <= max(ahead) < window + chunksize, (
        f"read up to {max(ahead)} items ahead of the consumer; the window is {window}"
    )


def test_a_slow_head_item_does_not_idle_the_other_workers(parallel_backend: str) -> None:
    """Results come back in order, but reading runs far enough ahead to keep workers busy."""
    node = FaultyNode(backend=parallel_backend, workers=2)
    node.exec = _head_sleeps  # type: ignore[method-assign]
    node.run({"items": [0.0, 0.0]})  # workers up (a Dask cluster takes a second to start)
    began = time.monotonic()
    node.run({"items": [1.0] + [0.01] * 100})  # ideal: ~1.0 s on 2 workers
    assert time.monotonic() - began < 1.5  # a short window would stall the second worker


def test_close_stops_the_run_early(parallel_backend: str) -> None:
    """Closing the stream after its first chunk cancels the queued jobs: it costs at most the
    jobs already running (or a worker's exit), far less than finishing the batch undisturbed."""
    node = FaultyNode()
    node.set_params({"kind": "raise", "bad": (), "delay": 0.05})
    backend = get_backend(parallel_backend, 2)
    assert len(list(backend.map(NodeTask(node), range(4), chunksize=2))) == 2  # workers up
    # Undisturbed, the batch takes at least this long: 120 items that sleep 0.05 s each, on 2
    # workers (a bound, so it is not run just to be timed).
    undisturbed = 120 * 0.05 / 2
    chunks = backend.map(NodeTask(node), range(120), chunksize=2)
    next(chunks)
    began = time.monotonic()
    chunks.close()  # type: ignore[attr-defined]
    closing = time.monotonic() - began
    # Processes get up to a second to exit after SIGTERM; threads finish their current item.
    assert closing < undisturbed / 2, (
        f"close took {closing:.2f} s; the whole batch takes {undisturbed:.2f} s or more undisturbed"
    )
    shared: dict[str, Any] = {"items": range(10)}
    Square(backend=parallel_backend, workers=2).run(shared)
    assert shared["out"] == [x * x for x in range(10)]


@pytest.mark.crash
def test_a_worker_dying_while_the_pool_closes_neither_hangs_nor_raises() -> None:
    """Fault C2: a worker is SIGKILLed just as the parent closes the pool (CPython's
    ``test_shutdown_deadlock``): close returns quietly, and every worker and the zygote exit."""
    from batchcore.backends.process import ProcessBackend

    backend = ProcessBackend(workers=2)
    shared: dict[str, Any] = {"items": range(10)}
    Square(backend=backend).run(shared)
    (pool,) = backend._idle
    procs = [psutil.Process(w.proc.pid) for w in pool.workers]
    if pool.zygote is not None:
        procs.append(psutil.Process(pool.zygote.proc.pid))
    os.kill(procs[0].pid, signal.SIGKILL)
    began = time.monotonic()
    backend.close()
    assert time.monotonic() - began < 10
    _, alive = psutil.wait_procs(procs, timeout=5)
    assert alive == []


def test_fixed_chunksize_is_respected(parallel_backend: str) -> None:
    backend = get_backend(parallel_backend, 2)
    sizes = [len(c.items) for c in backend.map(NodeTask(Square()), range(95), chunksize=10)]
    assert sizes == [10] * 9 + [5]


class NeverRunBefore(Square):
    """A class no batch has run yet, so no chunk size was learned for it."""


class RunOnThreads(Square):
    """A class the chunk-size test runs twice, with a fresh node each time."""


class RunInProcesses(Square):
    """The same, for the process backend (what a class learned is shared by every backend)."""


def test_adaptive_chunks_grow_for_tiny_items() -> None:
    backend = get_backend("process", 2)
    sizes = [len(c.items) for c in backend.map(NodeTask(NeverRunBefore()), range(50_000))]
    assert sizes[0] == 1
    assert max(sizes) > 1000
    assert sum(sizes) == 50_000


@pytest.mark.parametrize("name", ["thread", "process"])
def test_a_fresh_node_starts_at_the_chunk_size_its_class_learned(name: str) -> None:
    backend = get_backend(name, 2)
    node_class = RunOnThreads if name == "thread" else RunInProcesses
    first = [len(c.items) for c in backend.map(NodeTask(node_class()), range(50_000))]
    fresh = [len(c.items) for c in backend.map(NodeTask(node_class()), range(50_000))]
    assert first[0] == 1
    assert fresh[0] > 100  # not one item a job again: the class's per-item cost is known
    assert sum(fresh) == 50_000
    assert fresh[0] <= 50_000 // (4 * 2)  # still at least four jobs per worker


def test_node_travels_once_per_worker_per_batch(tmp_path: Path) -> None:
    log = tmp_path / "unpickled"
    node = Tracked(str(log), backend="process", workers=2, chunksize=1)
    shared: dict[str, Any] = {"items": list(range(200))}
    node.run(shared)
    assert shared["out"] == [x * x for x in range(200)]
    loads = log.read_text().split()
    assert 1 <= len(loads) <= 2  # once per worker, not once per item or chunk
    node.run(shared)
    assert len(log.read_text().split()) <= 4  # and once more per worker for a new batch


def test_process_pool_is_reused_across_batches_and_nodes() -> None:
    backend = get_backend("process", 2)
    backend.start()  # type: ignore[attr-defined]
    pool_pids = {worker.proc.pid for worker in backend._idle[0].workers}  # type: ignore[attr-defined]
    seen: set[int] = set()
    for node in (WhereAmI(backend="process", workers=2), Square(backend="process", workers=2)):
        shared: dict[str, Any] = {"items": list(range(40))}
        WhereAmI(backend="process", workers=2).run(shared)
        node.run({"items": [1, 2]})
        seen |= {r["pid"] for r in shared["out"]}
    assert seen and seen <= pool_pids  # no new worker was started: the pool stayed warm
    assert os.getpid() not in seen


def test_thread_backend_runs_on_other_threads() -> None:
    shared: dict[str, Any] = {"items": list(range(20))}
    node = WhereAmI(backend="thread", workers=2)
    node.set_params({"delay": 0.01})
    node.run(shared)
    threads = {r["thread"] for r in shared["out"]}
    assert threading.get_ident() not in threads
    assert 1 <= len(threads) <= 2


def test_workers_limit_native_thread_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchcore.backends.base import default_workers
    from batchcore.backends.process import ProcessBackend

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    shared: dict[str, Any] = {"items": [1]}
    with ProcessBackend(workers=default_workers()) as backend:
        WhereAmI(backend=backend).run(shared)
    assert shared["out"][0]["omp"] == "1"  # each worker's share of the CPUs
    assert shared["out"][0]["arrow_threads"] == 1

    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a user's own setting is kept
    with ProcessBackend(workers=2) as backend:
        WhereAmI(backend=backend).run(shared)
    assert shared["out"][0]["omp"] == "3"


def test_nested_parallel_batches_run_sequentially_inside_workers(parallel_backend: str) -> None:
    shared: dict[str, Any] = {}
    Outer(backend=parallel_backend, workers=2).run(shared)
    assert shared["out"] == ["sequential"] * 4


def test_cur_retry_is_per_item_on_every_backend(backend: str) -> None:
    class FailOnce(BatchNode):
        def prep(self, shared: Any) -> Any:
            return list(range(8))

        def exec(self, item: int) -> int:
            if self.cur_retry == 0:
                time.sleep(0.001)
                raise RuntimeError("first attempt fails")
            return self.cur_retry

        def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    shared: dict[str, Any] = {}
    node = FailOnce(max_retries=3, backend=backend, workers=2)
    node.run(shared)
    assert shared["out"] == [1] * 8  # every item failed exactly once, then succeeded
    assert node.batch_stats.retries == 8


def test_retries_wait_and_fallback_on_every_backend(backend: str) -> None:
    class Flaky(BatchNode):
        def prep(self, shared: Any) -> Any:
            return [1, 2, 3]

        def exec(self, item: int) -> int:
            if item == 2:
                raise ValueError("always")
            return item

        def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
            return f"fallback({prep_res}, {exc}, attempt {self.cur_retry})"

        def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    shared: dict[str, Any] = {}
    began = time.monotonic()
    Flaky(max_retries=3, wait=0.05, backend=backend, workers=2).run(shared)
    assert shared["out"] == [1, "fallback(2, always, attempt 2)", 3]
    assert time.monotonic() - began >= 0.1  # two waits between three attempts


def test_stats_describe_the_last_run(backend: str) -> None:
    node = Square(backend=backend, workers=2)
    node.run({"items": range(30)})
    stats = node.batch_stats
    assert (stats.backend, stats.items, stats.failed, stats.retries) == (backend, 30, 0, 0)
    assert stats.workers == (1 if backend == "sequential" else 2)
    assert stats.seconds > 0


def test_stats_are_visible_on_the_original_node_after_a_flow(backend: str) -> None:
    node = Square(backend=backend, workers=2)
    batchcore.Flow(start=node).run({"items": range(5)})
    assert node.batch_stats.items == 5


def test_progress_bar_on_stderr(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    Square(backend=backend, workers=2, progress=True).run({"items": list(range(7))})
    Square(backend=backend, workers=2, progress=True).run({"items": iter(range(3))})
    err = capsys.readouterr()
    assert "7/7" in err.err
    assert "3it" in err.err or "3item" in err.err  # unknown length: a counter, no total
    assert err.out == ""


def test_progress_off_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    Square(backend="process", workers=2).run({"items": list(range(7))})
    assert capsys.readouterr().err == ""


# --- choosing a backend ----------------------------------------------------------------------


class ProcessByClass(Square):
    backend = "process"
    workers = 2


def test_keyword_beats_class_attribute_beats_context() -> None:
    assert resolve_settings(Square()).backend.name == "sequential"
    with use_backend("thread", workers=2):
        assert resolve_settings(Square()).backend.name == "thread"
        assert resolve_settings(ProcessByClass()).backend.name == "process"
        assert resolve_settings(ProcessByClass(backend="sequential")).backend.name == "sequential"
    assert resolve_settings(Square()).backend.name == "sequential"


def test_context_options_fill_unset_fields_and_nest() -> None:
    with use_backend("process", workers=2, chunksize=5, progress=False):
        with use_backend(on_error="collect"):
            resolved = resolve_settings(Square(chunksize=7))
    assert resolved.backend.name == "process" and resolved.backend.workers == 2
    assert resolved.chunksize == 7
    assert resolved.fail_fast is False


def test_context_is_per_asyncio_task() -> None:
    async def name_in(backend: str | None) -> str:
        if backend is None:
            await asyncio.sleep(0.01)
            return resolve_settings(Square()).backend.name
        with use_backend(backend):
            await asyncio.sleep(0.01)
            return resolve_settings(Square()).backend.name

    async def main() -> list[str]:
        return list(await asyncio.gather(name_in("thread"), name_in(None), name_in("process")))

    assert asyncio.run(main()) == ["thread", "sequential", "process"]


def test_shared_backends_are_reused() -> None:
    assert get_backend("process", 2) is get_backend("process", 2)
    assert resolve_settings(Square(backend="process", workers=2)).backend is get_backend(
        "process", 2
    )


def test_a_backend_instance_can_be_passed() -> None:
    from batchcore.backends.thread import ThreadBackend

    with ThreadBackend(workers=3) as backend:
        shared: dict[str, Any] = {"items": range(10)}
        Square(backend=backend).run(shared)
        assert shared["out"] == [x * x for x in range(10)]
        assert resolve_settings(Square(backend=backend)).backend is backend


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"backend": "gpu"}, ValueError, r"unknown backend 'gpu'; valid names are \[.*'process'"),
        ({"backend": 3}, TypeError, "backend must be a name or a Backend"),
        ({"workers": 0}, ValueError, "workers must be >= 1, got 0"),
        ({"workers": 1.5}, TypeError, "workers must be an int"),
        ({"chunksize": -1}, ValueError, "chunksize must be >= 1"),
        ({"timeout": 0}, ValueError, "timeout must be > 0"),
        ({"timeout": "1"}, TypeError, "timeout must be a number"),
        ({"on_error": "ignore"}, ValueError, r"on_error must be one of \['collect', 'raise'\]"),
        ({"progress": "yes"}, TypeError, "progress must be True or False"),
    ],
)
def test_bad_options_are_rejected_with_the_parameter_named(
    options: dict[str, Any], error: type, text: str
) -> None:
    with pytest.raises(error, match=text):
        Square(**options)
    with pytest.raises(error, match=text), use_backend(**options):
        pass


def test_backend_options_go_to_the_factory_or_are_refused() -> None:
    with pytest.raises(TypeError, match=r"backend 'process' does not take options \['address'\]"):
        with use_backend("process", address="tcp://nowhere:8786"):
            pass
    with pytest.raises(TypeError, match="need a backend name"):
        with use_backend(None, address="tcp://nowhere:8786"):
            pass


def test_bad_class_attribute_is_reported_at_run_time() -> None:
    class Misconfigured(Square):
        backend = "gpu"

    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        Misconfigured().run({"items": [1]})


def test_register_backend_plugs_in_a_new_name() -> None:
    from batchcore.backends import _FACTORIES
    from batchcore.backends.sequential import SequentialBackend

    class Recording(SequentialBackend):
        name = "recording"
        calls = 0

        def map(self, task: Any, items: Any, **options: Any) -> Any:
            Recording.calls += 1
            return super().map(task, items, **options)

    batchcore.register_backend("recording", Recording)
    try:
        shared: dict[str, Any] = {"items": [1, 2]}
        Square(backend="recording").run(shared)
        assert shared["out"] == [1, 4] and Recording.calls == 1
        assert "recording" in batchcore.available_backends()
    finally:
        del _FACTORIES["recording"]


# --- code defined where workers cannot import it -----------------------------------------------

SCRIPT = textwrap.dedent(
    """
    from batchcore import BatchNode

    class Cube(BatchNode):
        def prep(self, shared):
            return range(10)
        def exec(self, x):
            return helper(x) ** 3
        def post(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    def helper(x):
        return x + 1

    shared = {}
    Cube(backend="process", workers=2).run(shared)
    print(sum(shared["out"]))
    """
)
EXPECTED = str(sum((x + 1) ** 3 for x in range(10)))


def test_node_defined_in_python_c_runs_on_processes() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == EXPECTED


def test_node_defined_in_a_script_without_main_guard(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == EXPECTED  # printed once: workers never re-run the script


def test_node_defined_in_a_test_function_runs_on_processes() -> None:
    offset = 100

    class Local(BatchNode):
        def prep(self, shared: Any) -> Any:
            return [1, 2]

        def exec(self, item: int) -> int:
            return item + offset  # a closure over a local variable

        def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    shared: dict[str, Any] = {}
    Local(backend="process", workers=2).run(shared)
    assert shared["out"] == [101, 102]


def test_a_failed_batch_closes_its_one_shot_input(backend: str) -> None:
    closed = []

    def source() -> Any:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    node = Square(backend=backend, workers=2)
    node.exec = lambda item: 1 / (item - 5)  # type: ignore[method-assign]
    with pytest.raises(ZeroDivisionError):
        node.run({"items": source()})
    assert closed == [True]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("a\nb", "'a\\nb'"),
        ("x" * 200, "'" + "x" * 76 + "..."),
        (list(range(3)), "[0, 1, 2]"),
    ],
)
def test_items_are_described_on_one_short_line(value: Any, text: str) -> None:
    from batchcore.errors import short_repr

    assert short_repr(value) == text


def test_frames_are_described_by_shape() -> None:
    import numpy as np
    import pandas as pd

    from batchcore.errors import short_repr

    assert short_repr(pd.DataFrame({"a": range(4)})) == "<DataFrame shape=(4, 1)>"
    assert short_repr(np.zeros((2, 3))) == "<ndarray shape=(2, 3)>"


POOL_SCRIPT = textwrap.dedent(
    """
    import json, os, time
    import psutil
    from batchcore import BatchNode
    from batchcore.backends.base import default_workers

    class Pid(BatchNode):
        def prep(self, shared):
            return range(40)

        def exec(self, item):
            time.sleep(0.005)
            return os.getpid()

        def post(self, shared, prep_res, exec_res):
            shared["pids"] = set(exec_res)

    report = []
    for workers in (2, 3, 2, None, None, 2, 4, None):
        shared = {}
        Pid(backend="process", workers=workers, chunksize=1).run(shared)
        asked = workers or default_workers()
        alive = len(psutil.Process().children(recursive=True))
        report.append([asked, len(shared["pids"]), alive])
    print(json.dumps(report))
    """
)


def test_one_warm_process_pool_per_program_resized_to_each_batch() -> None:
    """Issue 15.2: nodes asking 2, 3, 2, default, default, 2, 4, default workers share one pool,
    resized for each batch: never more busy workers than asked, never a second pool."""
    result = subprocess.run(
        [sys.executable, "-c", POOL_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for asked, busy, alive in json.loads(result.stdout):
        assert busy <= asked
        assert alive <= asked + 1  # the pool's workers and its zygote, nothing left over


@pytest.mark.parametrize("name", ["thread", "process"])
def test_a_batch_starts_no_more_workers_than_items(name: str) -> None:
    """Issue 15.3: workers=16 for 3 items starts 3 workers, not 16 (each one costs a start)."""
    from batchcore.backends.process import ProcessBackend
    from batchcore.backends.thread import ThreadBackend

    backend = (ProcessBackend if name == "process" else ThreadBackend)(workers=16)
    with backend:
        shared: dict[str, Any] = {"items": [1, 2, 3]}
        Square(backend=backend).run(shared)
        assert shared["out"] == [1, 4, 9]
        (pool,) = backend._idle  # type: ignore[attr-defined]
        assert len(pool.workers) <= 3


def test_workers_far_above_the_cpus_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 15.3: ``workers=1000`` on a few CPUs is almost always a mistake: say so, once."""
    from batchcore.backends.base import default_workers
    from batchcore.backends.process import ProcessBackend

    with caplog.at_level("WARNING", logger="batchcore"):
        ProcessBackend(workers=default_workers()).close()
        assert "far above" not in caplog.text
        ProcessBackend(workers=100 * default_workers()).close()
    assert f"workers={100 * default_workers()} is far above" in caplog.text
