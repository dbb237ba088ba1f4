"""The zygote: workers after the first start in milliseconds with the heavy libraries imported,
from a single-threaded fork server, and every guarantee of spawned workers still holds."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from faulty import FaultyNode
from test_interrupt import wait_for_items, wait_gone

from batchcore import BatchNode
from batchcore.backends import process as process_backend
from batchcore.backends import zygote
from batchcore.backends.process import THREAD_LIMIT_VARS, ProcessBackend, ProcessPool
from batchcore.backends.zygote import ForkedProcess

HERE = Path(__file__).parent
HEAVY = ("numpy", "pyarrow", "pandas", "PIL.Image")


@pytest.fixture(autouse=True)
def one_thread_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The zygote is used when each worker gets one BLAS thread (the default when the pool has
    a worker per core); fix that here so the tests do not depend on the machine's core count."""
    for name in THREAD_LIMIT_VARS:
        monkeypatch.setenv(name, "1")
    monkeypatch.delenv(process_backend.ZYGOTE_SWITCH, raising=False)


def wait_preloaded(pool: ProcessPool) -> None:
    """Wait until the zygote has imported all it preloads (it starts after the first batch)."""
    assert pool.zygote is not None
    pool.zygote.preload()
    deadline = time.monotonic() + 60
    while not pool.zygote.preloaded and time.monotonic() < deadline:
        pool.zygote.pump(1)
    assert pool.zygote.preloaded


def wait_ready(pool: ProcessPool, worker: Any) -> None:
    deadline = time.monotonic() + 30
    while not worker.ready and time.monotonic() < deadline:
        pool.wait(1)
    assert worker.ready


class Modules(BatchNode):
    """Reports, per item, which of ``HEAVY`` the worker had imported before running it."""

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return list(range(4))

    def exec(self, item: int) -> list[str]:
        return [name for name in HEAVY if name in sys.modules]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["loaded"] = exec_res


def test_workers_after_the_first_are_ready_fast_with_the_libraries_imported() -> None:
    with ProcessBackend(workers=2) as backend:
        backend.start()
        pool: ProcessPool = backend._idle[0]  # type: ignore[assignment]
        for worker in list(pool.workers):
            wait_ready(pool, worker)
        wait_preloaded(pool)
        for old in list(pool.workers):
            pool.stop(old)  # replaced by forks of the fully loaded zygote
        timings = []
        for _ in range(4):
            began = time.monotonic()
            worker = pool.spawn()
            pool.workers.append(worker)
            wait_ready(pool, worker)
            timings.append(time.monotonic() - began)
            assert isinstance(worker.proc, ForkedProcess)
        assert max(timings) < 0.2, timings  # ~15-30 ms measured; the margin is for noisy CI
        shared: dict[str, Any] = {}
        Modules(backend=backend, chunksize=1).run(shared)
        assert shared["loaded"] == [list(HEAVY)] * 4


def test_the_zygote_stays_single_threaded() -> None:
    with ProcessBackend(workers=2) as backend:
        backend.start()
        pool: ProcessPool = backend._idle[0]  # type: ignore[assignment]
        wait_preloaded(pool)
        assert pool.zygote is not None
        FaultyNode(backend=backend).run({"items": list(range(10))})
        assert psutil.Process(pool.zygote.proc.pid).num_threads() == 1
        assert all(isinstance(worker.proc, ForkedProcess) for worker in pool.workers)


def test_a_zygote_with_a_thread_refuses_to_fork_and_workers_are_spawned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(zygote, "PRELOAD", ("batchcore.backends._worker", "starts_a_thread"))
    with caplog.at_level(logging.WARNING, "batchcore"), ProcessBackend(workers=2) as backend:
        shared: dict[str, Any] = {"items": list(range(20))}
        FaultyNode(backend=backend).run(shared)
        assert shared["out"] == [x * 10 for x in range(20)]
        pool: ProcessPool = backend._idle[0]  # type: ignore[assignment]
        assert pool.zygote is None
        assert all(isinstance(worker.proc, subprocess.Popen) for worker in pool.workers)
    assert "refused to fork: the zygote runs 2 threads" in caplog.text


def test_a_worker_crash_leaves_the_zygote_and_the_other_workers_alone() -> None:
    with ProcessBackend(workers=2) as backend:
        node = FaultyNode(backend=backend)
        node.set_params({"kind": "raise", "bad": ()})
        node.run({"items": list(range(10))})
        pool: ProcessPool = backend._idle[0]  # type: ignore[assignment]
        wait_preloaded(pool)  # so the zygote reaps the victim at once
        assert pool.zygote is not None
        zygote_pid = pool.zygote.proc.pid
        victim, survivor = (worker.proc.pid for worker in pool.workers)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        shared: dict[str, Any] = {"items": list(range(40))}
        node.run(shared)
        assert shared["out"] == [x * 10 for x in range(40)]
        with pytest.raises(subprocess.TimeoutExpired):
            pool.zygote.proc.wait(timeout=0.5)  # it reaped the victim and lives on
        assert pool.zygote is not None and pool.zygote.proc.pid == zygote_pid
        pids = {worker.proc.pid for worker in pool.workers}
        assert survivor in pids and victim not in pids
        assert all(isinstance(worker.proc, ForkedProcess) for worker in pool.workers)


class KillsTheZygote(BatchNode):
    """Item 3 kills the zygote (its worker's parent) and then its own worker, once."""

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return list(range(30))

    def exec(self, item: int) -> int:
        marker = Path(self.params["marker"])
        if item == 3 and not marker.exists():
            marker.touch()
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(9)
        return item * 2

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["out"] = exec_res


def test_killing_the_zygote_mid_run_falls_back_to_spawning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "batchcore"), ProcessBackend(workers=2) as backend:
        node = KillsTheZygote(backend=backend, max_retries=2, chunksize=1)
        node.set_params({"marker": str(tmp_path / "killed")})
        shared: dict[str, Any] = {}
        node.run(shared)
        assert shared["out"] == [x * 2 for x in range(30)]
        pool: ProcessPool = backend._idle[0]  # type: ignore[assignment]
        assert pool.zygote is None
        assert any(isinstance(worker.proc, subprocess.Popen) for worker in pool.workers)
    assert "zygote" in caplog.text and "starting workers directly" in caplog.text


KILLED_PARENT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import batchcore
    from faulty import FaultyNode

    backend = batchcore.get_backend("process", 2)
    backend.start()
    pool = backend._idle[0]
    print("pids", pool.zygote.proc.pid, *[w.proc.pid for w in pool.workers], flush=True)
    node = FaultyNode(backend="process", workers=2, chunksize=1)
    node.set_params({{"kind": "raise", "bad": (), "delay": 30, "marker_dir": {marks!r}}})
    print("started", flush=True)
    node.run({{"items": list(range(20))}})
    """
)


@pytest.mark.crash
def test_the_zygote_and_its_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT.format(tests=str(HERE), marks=str(tmp_path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        pids = [int(pid) for pid in proc.stdout.readline().split()[1:]]
        assert len(pids) == 3, proc.stderr.read() if proc.stderr else ""
        assert proc.stdout.readline().startswith("started")
        wait_for_items(tmp_path, 2)  # the workers are inside 30-second items
        proc.kill()
        proc.wait()
        assert wait_gone(pids, 5) == []
    finally:
        proc.kill()
        proc.communicate()


def test_without_the_zygote_workers_are_spawned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(process_backend.ZYGOTE_SWITCH, "0")
    with ProcessBackend(workers=2) as backend:
        shared: dict[str, Any] = {"items": list(range(10))}
        FaultyNode(backend=backend).run(shared)
        pool: ProcessPool = backend._idle[0]  # type: ignore[assignment]
        assert pool.zygote is None
        assert all(isinstance(worker.proc, subprocess.Popen) for worker in pool.workers)


class SeesModule(BatchNode):
    """Whether ``colorsys`` (imported by nothing of batchcore's) is in the worker already."""

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return list(range(4))

    def exec(self, item: int) -> bool:
        import sys

        return "colorsys" in sys.modules

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[bool]) -> None:
        shared["seen"] = exec_res


def test_start_imports_what_the_batch_will_need_before_the_workers_fork() -> None:
    """``start(imports)``: a new pool's workers have the modules before their first item (the
    CSV node passes the store's client, s3fs, for URLs); without it they do not."""
    for imports, expected in (((), False), (("colorsys",), True)):
        with ProcessBackend(workers=2) as backend:
            backend.start(imports)
            pool: ProcessPool = backend._idle[0]  # type: ignore[assignment]
            assert pool.zygote is not None
            shared: dict[str, Any] = {}
            SeesModule(backend=backend, chunksize=1).run(shared)
            assert shared["seen"] == [expected] * 4


class GcState(BatchNode):
    """In the worker: how many objects the garbage collector leaves alone (the permanent
    generation), and, at the worker's exit, how many it would still walk (to ``path``)."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = path

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return [0, 1]

    def exec(self, item: int) -> tuple[int, int]:
        import atexit
        import gc

        path = self.path / f"{os.getpid()}.txt"
        if not path.exists():
            path.write_text("")

            def at_exit() -> None:  # after the pool closed the pipe, before the last collection
                path.write_text(f"{len(gc.get_objects())} {gc.get_freeze_count()}")

            atexit.register(at_exit)
        return gc.get_freeze_count(), len(gc.get_objects())

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["gc"] = exec_res


def test_forked_workers_never_walk_the_zygotes_objects(tmp_path: Path) -> None:
    """The zygote freezes its objects before each fork: a worker's collections skip them, so
    they do not copy the heap pages the worker shares with the zygote."""
    with ProcessBackend(workers=2) as backend:
        shared: dict[str, Any] = {}
        GcState(tmp_path, backend=backend, chunksize=1).run(shared)
        pool: ProcessPool = backend._idle[0]  # type: ignore[assignment]
        assert all(isinstance(worker.proc, ForkedProcess) for worker in pool.workers)
    for frozen, walked in shared["gc"]:  # walked: what the test module imports in the worker
        assert frozen > 10_000, (frozen, walked)  # numpy and pyarrow: tens of thousands


@pytest.mark.parametrize("zygote_on", ["1", "0"])
def test_a_worker_exits_without_walking_every_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zygote_on: str
) -> None:
    """When the pool closes, a worker (forked or spawned) freezes its objects before the
    interpreter's exit, whose last collection would walk them all (and copy every page a forked
    worker shares with its zygote) while the parent waits."""
    monkeypatch.setenv(process_backend.ZYGOTE_SWITCH, zygote_on)
    with ProcessBackend(workers=2) as backend:
        GcState(tmp_path, backend=backend, chunksize=1).run({})
    said = [path.read_text().split() for path in tmp_path.glob("*.txt")]
    assert said and all(said)
    for walked, frozen in ((int(a), int(b)) for a, b in said):
        assert walked < 2_000 and frozen > 10_000, (walked, frozen)


def test_a_library_asked_for_is_imported_before_the_first_fork_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool's ``imports`` come before the cut (imported before the first fork), even one the
    zygote would otherwise import only after the first batch (Pillow), and none twice."""
    monkeypatch.setenv(zygote.PRELOAD_ENV, "numpy,pyarrow,,pandas,PIL.Image")
    assert zygote._preload_list(["PIL.Image", "pyarrow", "my.job"]) == (
        "numpy",
        "pyarrow",
        "PIL.Image",
        "my.job",
        "",
        "pandas",
    )
    assert zygote._preload_list() == ("numpy", "pyarrow", "", "pandas", "PIL.Image")
