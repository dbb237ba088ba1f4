"""Big payloads (numpy arrays, Arrow tables) as items and results: equal on every backend, through
shared memory on the process backend (``backends/shm.py``), and no file left behind when a
worker dies, is killed or is stopped while one is in flight."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pytest

from batchcore import BatchNode, SerializationError, WorkerCrashedError
from batchcore.backends import shm
from batchcore.backends.ordered import Job, Transport
from batchcore.pickling import dumps

MIB = 1 << 20


def big_items() -> list[Any]:
    """Items above the threshold in every shape pickle 5 hands out of band, and a few it cannot."""
    base = np.arange(3 * MIB // 8, dtype=np.float64)
    readonly = np.arange(2 * MIB // 4, dtype=np.int32)
    readonly.flags.writeable = False
    return [
        base,
        np.asfortranarray(base.reshape(384, 1024)),  # contiguous, Fortran order
        base.reshape(384, 1024)[:, ::2],  # not contiguous: in band, as before
        readonly,
        {"a": base + 1, "b": [base[:10], "text"]},  # nested, and a small array beside it
        pa.table({"x": np.arange(MIB // 4, dtype=np.int64), "y": np.ones(MIB // 4)}),
        pa.array(np.arange(MIB // 2, dtype=np.float64)),
        np.arange(MIB // 16, dtype=np.float64),  # 512 KiB: below the threshold
    ]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (pa.Table, pa.Array)):
        return type(a) is type(b) and a.equals(b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def shm_files() -> set[str]:
    return {name for name in os.listdir(shm.SHARED_DIR) if name.startswith(shm.PREFIX)}


def live_workers_free_file(name: str) -> bool:
    """A file a live worker's messages freed, kept for the next message until the pool closes."""
    worker = int(name.split("-")[2])
    return (
        "-free" in name
        and psutil.pid_exists(worker)
        and psutil.Process(worker).status() != "zombie"
    )


@pytest.fixture
def no_new_files() -> Any:
    """Fail a test that leaves a shared-memory file of this process (or its workers) behind."""
    before = shm_files()
    yield
    mine = f"{shm.PREFIX}{os.getpid()}-"
    left = {
        name
        for name in shm_files() - before
        if name.startswith(mine) and not live_workers_free_file(name)
    }
    assert not left, f"shared-memory files left behind: {sorted(left)}"


SLOW = 0.3


class Echo(BatchNode):
    """Returns each item with a big array derived from it: results as big as the items."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: Any) -> Any:
        kind = self.params.get("kind")
        if kind == "pid":
            return os.getpid()
        if kind == "writable":
            item += 1  # items may be changed in place, as unpickled copies always could
            return item
        if kind == "lock" and isinstance(item, np.ndarray) and item[0] == 3:
            return (item, threading.Lock())
        if kind == "exit" and isinstance(item, np.ndarray) and item[0] == 3:
            os._exit(3)
        if kind == "sigkill" and isinstance(item, np.ndarray) and item[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "sealed_then_killed" and isinstance(item, np.ndarray) and item[0] == 3:
            # the state of a worker killed between writing a result's file and sending it
            shm.seal(shm.split([item]))
            os.kill(os.getpid(), signal.SIGKILL)
        # SLOW seconds: far longer than a big job takes to send, so the stop finds workers busy
        if kind == "slow":
            time.sleep(SLOW)
        if kind == "raise" and isinstance(item, np.ndarray):
            if item[0] == 1:
                raise ValueError("bad item 1")
            time.sleep(SLOW)  # when 1 fails, both workers are busy and have their next job queued
        return [item, item * 2 if isinstance(item, np.ndarray) else item]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["out"] = exec_res


def run(
    backend: str, items: list[Any], kind: str = "", on_error: str = "raise", **options: Any
) -> tuple[Echo, dict[str, Any]]:
    node = Echo(backend=backend, workers=2, on_error=on_error, **options)
    node.set_params({"kind": kind})
    shared: dict[str, Any] = {"items": items}
    node.run(shared)
    return node, shared


def numbered(count: int, mib: int = 2) -> list[np.ndarray]:
    """Arrays whose first value is their index (how ``Echo`` finds its bad item)."""
    return [np.full(mib * MIB // 8, i, dtype=np.float64) for i in range(count)]


def test_big_items_and_results_round_trip_equal(backend: str, no_new_files: None) -> None:
    items = big_items()
    _, shared = run(backend, items)
    expected = [[x, x * 2 if isinstance(x, np.ndarray) else x] for x in items]
    assert same(shared["out"], expected)
    readonly = shared["out"][3][0]
    assert not readonly.flags.writeable  # as plain pickling keeps it
    assert shared["out"][0][1].flags.writeable  # results may be changed in place


def test_items_arrive_writable(backend: str) -> None:
    items = numbered(3)
    _, shared = run(backend, [x.copy() for x in items], kind="writable")
    assert same(shared["out"], [x + 1 for x in items])


def test_process_sends_big_buffers_through_shared_files(no_new_files: None) -> None:
    """Each worker's file, once read, waits for its next message: one per direction here."""
    run("process", numbered(6), chunksize=1)
    files = shm_files()
    _, shared = run("process", list(range(8)), kind="pid", chunksize=1)
    for pid in set(shared["out"]):
        pair = f"{shm.PREFIX}{os.getpid()}-{pid}-"
        assert {f"{pair}freei0", f"{pair}freer0"} <= files  # items, results
    _, shared = run("process", [np.zeros(MIB // 16)] * 4, chunksize=1)  # small: no file
    assert shm_files() == files


def test_small_payloads_are_the_plain_pickle_they_were() -> None:
    for obj in [list(range(100)), {"a": "b"}, np.arange(1000), [np.zeros(MIB // 8 - 1)]]:
        assert shm.split(obj) == dumps(obj)
        assert shm.seal(shm.split(obj)) == dumps(obj)
        assert shm.message_size(dumps(obj)) == len(dumps(obj))
    assert pickle.loads(shm.seal(shm.split([1, 2]))) == [1, 2]


def test_a_sealed_message_is_small_counts_its_buffers_and_unlinks_on_load(
    no_new_files: None,
) -> None:
    array = np.arange(8 * MIB // 8, dtype=np.float64)
    payload = shm.split([array, "x"])
    assert isinstance(payload, shm.Payload) and payload.nbytes == 8 * MIB
    message = shm.seal(payload, worker=os.getpid())
    assert len(message) < 1000
    assert shm.message_size(message) >= 8 * MIB  # the window and job sizes count these bytes
    assert len(shm_files()) >= 1
    loaded = shm.loads(message)
    assert same(loaded, [array, "x"])
    shm.sweep(os.getpid())  # the file kept for this "worker"'s next message: here, none comes


def test_the_window_counts_shared_bytes() -> None:
    """A job's shared-memory bytes are counted with its pipe bytes (``ChunkSizer`` and the
    window read ahead by them), while only the pipe bytes decide whether it may queue."""
    transport = Transport()
    transport.shared_memory = True
    job = Job(0, [np.zeros(4 * MIB // 8)])
    transport.encode(job)
    assert job.shared_size == 4 * MIB and job.payload_size < 1000


def test_unpicklable_result_fails_only_its_item(no_new_files: None) -> None:
    items = numbered(6)
    node, shared = run("process", items, kind="lock", on_error="collect")
    assert same(shared["out"], [[x, x * 2] for x in items if x[0] != 3])
    [failure] = node.batch_stats.failures
    assert failure.index == 3
    assert isinstance(failure.exception, SerializationError)
    assert "_thread.lock" in str(failure.exception)


@pytest.mark.crash
@pytest.mark.parametrize("kind", ["exit", "sigkill", "sealed_then_killed"])
def test_a_killed_worker_leaves_no_shared_memory_file(kind: str, no_new_files: None) -> None:
    """The worker dies holding big items (its next job waits unread in a file) or with a result
    written and not sent: the parent sweeps what was named for it."""
    items = numbered(8)
    node, shared = run("process", items, kind=kind, on_error="collect", chunksize=1)
    assert same(shared["out"], [[x, x * 2] for x in items if x[0] != 3])
    [failure] = node.batch_stats.failures
    assert failure.index == 3 and isinstance(failure.exception, WorkerCrashedError)


@pytest.mark.crash
def test_stopping_early_leaves_no_shared_memory_file(no_new_files: None) -> None:
    """Fail-fast stops busy workers with big jobs queued behind their current one."""
    with pytest.raises(ValueError, match="bad item 1"):
        run("process", numbered(8), kind="raise", chunksize=1)


def interrupted(items: list[Any], after: int) -> Any:
    """``items``, then a Ctrl-C in the parent (it arrives while reading the next item)."""
    yield from items[:after]
    raise KeyboardInterrupt


@pytest.mark.crash
def test_ctrl_c_leaves_no_shared_memory_file(no_new_files: None) -> None:
    """Ctrl-C closes the pool at once: busy workers are stopped with big jobs queued unread."""
    with pytest.raises(KeyboardInterrupt):
        run("process", interrupted(numbered(8), 6), kind="slow", chunksize=1)  # type: ignore[arg-type]


def test_sweep_stale_removes_files_of_dead_parents() -> None:
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    path = os.path.join(shm.SHARED_DIR, f"{shm.PREFIX}{dead}-1-test")
    mine = os.path.join(shm.SHARED_DIR, f"{shm.PREFIX}{os.getpid()}-1-test")
    for name in (path, mine):
        with open(name, "wb"):
            pass
    try:
        shm.sweep_stale()
        assert not os.path.exists(path)
        assert os.path.exists(mine)  # a live parent's
    finally:
        for name in (path, mine):
            if os.path.exists(name):
                os.unlink(name)
