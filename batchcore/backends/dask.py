"""The Dask backend: the same batches on a Dask cluster (``pip install "batchcore[dask]"``).

Dask's own scheduler and workers do the work; batchcore only feeds them chunks of items and reads
back ordered results, like the process backend does with its own pool::

    items (lazy) -> chunk -> client.submit(run_remote, task, items) -> Dask worker -> run_chunk
          ^ at most `window` futures in flight              |
    caller <- yield in input order <- reorder buffer <- as_completed

Where it connects, in order: ``DaskBackend(address=...)``; else the scheduler named by Dask's
own setting (``DASK_SCHEDULER_ADDRESS`` / ``dask.config["scheduler-address"]``); else the client
already active in the caller (``distributed.default_client()``); else a ``LocalCluster`` of
``workers`` worker processes, started on first use, reused by later batches and closed at exit.

The task (the node and its params, or a sub-flow and ``shared``) is pickled once per batch and
sent to every worker once. A worker that dies is Dask's business: its tasks are rescheduled
on the others (``distributed.scheduler.allowed-failures``). When Dask gives up on a task, its
items (and the innocents queued on the same worker) become suspects: new work pauses, the work in
flight drains, and each suspect then runs alone, so only an item that kills workers while alone
fails, as a ``WorkerCrashedError``. Items
and results cross by path and value: files must be readable by every worker (a shared
filesystem, or the same path on each machine).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from ..errors import ItemTimeoutError, WorkerCrashedError, short_repr
from ..pickling import dumps, loads
from .base import Backend, Chunk, Failure, Slot, Task, mark_worker, run_chunk
from .streams import Output, captured
from .wire import pack, unpack

try:
    import distributed
    from distributed.scheduler import KilledWorker
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'the "dask" backend needs Dask distributed: pip install "batchcore[dask]"'
    ) from exc

from .ordered import (
    ChunkSizer,
    fallback_chunk,
    known_length,
    pickle_task,
    read_slot,
    unpicklable_item_chunk,
)

log = logging.getLogger("batchcore")

WINDOW_PER_WORKER = 32  # chunks read ahead per worker (in flight or waiting for their turn)
IN_FLIGHT_PER_WORKER = 2  # tasks submitted and not yet finished, per worker
TARGET_SECONDS = 0.1  # work per Dask task: a task costs milliseconds of scheduling, not 0.1 ms
NODE_HINT = "Create such resources inside exec (or prep): Dask workers get a pickled copy."

# What a worker has unpickled, per batch: the task travels once per worker, not per chunk.
_TASKS: dict[str, Task] = {}
_TASKS_LOCK = threading.Lock()


def _task(key: str, blob: bytes) -> Task:
    with _TASKS_LOCK:
        task = _TASKS.get(key)
        if task is None:
            _TASKS.clear()  # one batch at a time per worker is the common case: keep memory flat
            task = _TASKS[key] = loads(blob)
        return task


def run_remote(
    key: str, blob: bytes, items_blob: bytes, start: int, fail_fast: bool, timeout: float | None
) -> tuple[int, float, int, bytes, bytes, Output]:
    """On a Dask worker: run one chunk; return ``(retries, elapsed, ran, failures, values,
    output)``, ``output`` being what the chunk printed, as ``(stream, whole lines)``."""
    task = _task(key, blob)
    items = loads(items_blob)
    output: Output = []
    with mark_worker(), captured(output):
        if timeout is None:
            chunk = run_chunk(task, items, start, 0, Slot(), fail_fast)
        else:
            chunk = _run_with_timeout(task, items, start, fail_fast, timeout, output)
    values_blob, failures_blob = pack(chunk.values, chunk.failures, start)
    return chunk.retries, chunk.elapsed, len(chunk.values), failures_blob, values_blob, output


def _run_with_timeout(
    task: Task,
    items: list[Any],
    start: int,
    fail_fast: bool,
    timeout: float,
    output: Output,
) -> Chunk:
    """Run items one by one on a helper thread, giving up on an attempt after ``timeout``.

    A Dask worker thread cannot be killed: a stuck attempt is abandoned (it finishes in the
    background) and the item is retried or failed with ``ItemTimeoutError``, as on threads.
    """
    values: list[Any] = []
    failures: list[tuple[int, Failure]] = []
    retries = 0
    began = time.perf_counter()
    for offset, item in enumerate(items):
        index = start + offset
        first = 0
        while True:
            outcome = _attempt(task, item, index, first, fail_fast, timeout, output)
            if isinstance(outcome, Chunk):
                chunk = outcome
                break
            if outcome + 1 < task.max_retries:  # the attempt that timed out may be retried
                retries += 1
                first = outcome + 1
                continue
            error = ItemTimeoutError(index, short_repr(item), timeout, outcome + 1)
            chunk = fallback_chunk(task, index, item, error, outcome)
            break
        retries += chunk.retries
        values.append(chunk.values[0] if chunk.values else None)
        failures.extend((offset, failure) for _, failure in chunk.failures)
        if fail_fast and failures:
            break
    return Chunk(start, items, values, failures, retries, time.perf_counter() - began)


def _attempt(
    task: Task,
    item: Any,
    index: int,
    first: int,
    fail_fast: bool,
    timeout: float,
    output: Output,
) -> Chunk | int:
    """Run ``item`` from attempt ``first`` on a helper thread: its chunk, or the attempt that ran
    past ``timeout``."""
    slot = Slot()
    box: list[Chunk] = []

    def run() -> None:
        with mark_worker(), captured(output):
            box.append(run_chunk(task, [item], index, first, slot, fail_fast, True))

    thread = threading.Thread(target=run, daemon=True, name="batchcore-attempt")
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
        snapshot = read_slot(slot)
        if snapshot and time.monotonic_ns() - snapshot[2] > timeout * 1e9:
            return snapshot[1]
    return box[0]


def _worker_addresses(client: Any) -> set[str]:
    return set(client.scheduler_info(n_workers=-1).get("workers", {}))


class DaskBackend(Backend):
    """Runs items on a Dask cluster; see the module docstring for where it connects."""

    name = "dask"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        super().__init__(workers)
        self.address = address
        self._client: Any = None
        self._cluster: Any = None
        self._owns_client = False
        self._lock = threading.Lock()

    # --- connection ---------------------------------------------------------------------------

    def client(self) -> Any:
        """The ``distributed.Client`` batches run on (connecting or starting a cluster once)."""
        with self._lock:
            if self._client is not None and self._client.status not in ("closed", "closing"):
                return self._client
            import dask

            address = self.address or dask.config.get("scheduler-address", None)
            if address:
                self._client = distributed.Client(address, set_as_default=False)
                self._owns_client = True
                return self._client
            try:
                self._client = distributed.default_client()
                self._owns_client = False
                return self._client
            except ValueError:
                pass
            # Dask's statistical profiler samples each worker's stack every 10 ms, which slows
            # pure-Python items by a quarter (measured): batchcore's own cluster runs without it.
            # And batchcore bounds what is in flight itself, so workers may queue a few tasks
            # (no idle round trip to the scheduler between two tasks).
            settings = {
                "distributed.worker.profile.enabled": False,
                "distributed.scheduler.worker-saturation": "inf",
            }
            with dask.config.set(settings):
                self._cluster = distributed.LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                    silence_logs=logging.CRITICAL,  # batchcore reports worker deaths itself
                )
            self._client = distributed.Client(self._cluster, set_as_default=False)
            self._owns_client = True
            return self._client

    def start(self) -> None:
        """Connect (or start the local cluster) now rather than at the first batch."""
        self.client()

    def close(self) -> None:
        with self._lock:
            client, cluster = self._client, self._cluster
            self._client = self._cluster = None
        if client is not None and self._owns_client:
            client.close()
        if cluster is not None:
            cluster.close()

    def worker_count(self, client: Any) -> int:
        return max(1, len(_worker_addresses(client)) or self.workers)

    # --- the seam -----------------------------------------------------------------------------

    def map(
        self,
        task: Task,
        items: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        fail_fast: bool = True,
    ) -> Iterator[Chunk]:
        client = self.client()
        blob = pickle_task(task, NODE_HINT)
        workers = self.worker_count(client)
        run = _DaskRun(
            client, task, blob, chunksize, timeout, fail_fast, workers, known_length(items)
        )
        try:
            yield from run.results(iter(items))
        except (Exception, GeneratorExit):
            run.stopped = True
            raise
        except BaseException:  # Ctrl-C: drop everything at once
            run.cancel()
            raise
        finally:
            if run.stopped:
                # Tasks running on workers cannot be killed: cancel the others and wait for the
                # running ones, so nothing of this batch runs after we return.
                run.drain()
            run.cancel()
            client.cancel([run.blob])

    def __repr__(self) -> str:
        where = self.address or ("local cluster" if self._cluster else "active client")
        return f"DaskBackend(workers={self.workers}, {where})"


class _DaskRun:
    """One ``map`` on Dask: a window of chunk futures, results yielded in input order."""

    def __init__(
        self,
        client: Any,
        task: Task,
        blob_bytes: bytes,
        chunksize: int | None,
        timeout: float | None,
        fail_fast: bool,
        workers: int,
        total: int | None,
    ) -> None:
        self.client = client
        self.task = task
        self.key = f"batchcore-{uuid.uuid4().hex}"
        self.blob_bytes = blob_bytes
        self.blob = self.scatter_task()
        self.timeout = timeout
        self.fail_fast = fail_fast
        self.sizer = ChunkSizer(chunksize, workers, total, TARGET_SECONDS)
        self.window = WINDOW_PER_WORKER * workers  # read ahead of the oldest unfinished chunk
        # Two tasks per worker keep it busy (the second waits on the worker), and chunk sizes
        # learn from the first results instead of a window full of one-item tasks.
        self.in_flight = IN_FLIGHT_PER_WORKER * workers
        self.pending: dict[Any, tuple[int, list[Any]]] = {}
        # Our client is not the process's default one, so hand its event loop over explicitly.
        self.completed = distributed.as_completed(loop=client.loop)
        self.done: dict[int, Chunk] = {}
        self.requeue: list[tuple[int, list[Any]]] = []
        self.next_index = 0
        self.next_start = 0
        self.outstanding = 0
        self.exhausted = False
        self.stop_at: float = math.inf
        self.strikes: dict[int, int] = {}  # times a suspect running alone died with a worker
        self.stopped = False  # ended before its items did (a failure, or the caller stopped)
        self.suspects: list[tuple[int, list[Any]]] = []  # items that were on a dying worker
        self.probe: Any = None  # the suspect running alone, if any

    def scatter_task(self) -> Any:
        """Put the pickled task on every worker: chunks need it wherever they run (one copy only
        would pull every chunk to that worker)."""
        return self.client.scatter(self.blob_bytes, broadcast=True, hash=False)

    def results(self, source: Iterator[Any]) -> Iterator[Chunk]:
        workers_before = _worker_addresses(self.client)
        while True:
            while self.next_start in self.done:
                chunk = self.done.pop(self.next_start)
                self.outstanding -= 1
                self.next_start = chunk.start + len(chunk.items)
                yield chunk
                if self.fail_fast and chunk.failures:
                    self.stopped = True
                    return
            if self.exhausted and self.outstanding == 0:
                break
            self.feed(source)
            if not self.pending:
                continue
            future = next(self.completed)
            self.collect(future)
            if future is self.probe:
                self.probe = None
        lost = workers_before - _worker_addresses(self.client)
        if lost:
            log.warning(
                "Dask workers %s left during the batch; their tasks were rescheduled on the others",
                sorted(lost),
            )

    def feed(self, source: Iterator[Any]) -> None:
        if self.suspects:
            # Quarantine: once the work in flight has drained, each suspect runs alone, so a
            # worker that dies can only have been killed by the item it was running.
            if not self.pending:
                start, items = self.suspects.pop(0)
                self.submit(start, items)
                self.probe = next(reversed(self.pending), None)
            return
        while self.requeue and len(self.pending) < self.in_flight:
            start, items = self.requeue.pop(0)
            self.submit(start, items)
        while self.outstanding < self.window and len(self.pending) < self.in_flight:
            if self.exhausted or self.next_index >= self.stop_at:
                return
            size = self.sizer.next_size()
            items = list(islice(source, size))
            if len(items) < size:
                self.exhausted = True
            if not items:
                return
            start = self.next_index
            self.next_index += len(items)
            self.outstanding += 1
            self.submit(start, items)

    def submit(self, start: int, items: list[Any]) -> None:
        try:
            blob = dumps(items)
        except Exception:
            self.split_unpicklable(start, items)
            return
        future = self.client.submit(
            run_remote,
            self.key,
            self.blob,
            blob,
            start,
            self.fail_fast,
            self.timeout,
            pure=False,
            key=f"{self.key}-{start}-{len(items)}-{uuid.uuid4().hex[:8]}",
        )
        self.pending[future] = (start, items)
        self.completed.add(future)

    def split_unpicklable(self, start: int, items: list[Any]) -> None:
        """Fail the items that cannot be pickled; send the others as single items."""
        self.outstanding += len(items) - 1
        for offset, item in enumerate(items):
            index = start + offset
            try:
                dumps(item)
            except Exception as exc:
                self.settle(unpicklable_item_chunk(index, item, exc, "a Dask worker"))
            else:
                self.requeue.append((index, [item]))

    def collect(self, future: Any) -> None:
        start, items = self.pending.pop(future)
        if future.status == "finished":
            try:
                outcome = future.result()
            except Exception:  # its worker died between finishing and handing the result over
                outcome = None
        else:
            outcome = None
        if outcome is not None:
            retries, elapsed, ran, failures_blob, values_blob, output = outcome
            chunk = unpack(start, items, ran, failures_blob, values_blob, retries, elapsed)
            chunk.output = output
            self.sizer.observe(len(chunk.values), chunk.elapsed, len(values_blob))
            self.settle(chunk)
            return
        error = future.exception() if future.status == "error" else None
        if error is not None and not isinstance(error, KilledWorker):
            raise error  # Dask itself failed the task (not an item: those come back as values)
        # The chunk died with workers: Dask gave up on it (KilledWorker), or dropped it because
        # the task's bytes died with every worker holding them.
        if self.blob.status != "finished":
            self.blob = self.scatter_task()
        if future is not self.probe:  # any of its items, or one queued near it, may be guilty
            self.outstanding += len(items) - 1
            self.suspects.extend((start + i, [item]) for i, item in enumerate(items))
            return
        strikes = self.strikes.get(start, 0) + 1
        self.strikes[start] = strikes
        if error is None and strikes < 2:
            self.suspects.insert(0, (start, items))  # lost once while alone: once more
            return
        attempts = (error.args[2] + 1) if error is not None and len(error.args) > 2 else strikes
        crashed = WorkerCrashedError(start, short_repr(items[0]), None, None, attempts)
        crashed.add_note(f"the item kept killing Dask workers even when it ran alone ({error})")
        last = max(self.task.max_retries - 1, 0)
        self.settle(fallback_chunk(self.task, start, items[0], crashed, last, attempts=attempts))

    def settle(self, chunk: Chunk) -> None:
        if self.fail_fast and chunk.failures:
            self.stop_at = min(self.stop_at, chunk.start + chunk.failures[0][0])
        self.done[chunk.start] = chunk

    def drain(self) -> None:
        """Cancel the chunks not yet running; wait for the running ones to finish."""
        running = {key for keys in self.client.processing().values() for key in keys}
        waiting = [future for future in self.pending if future.key not in running]
        self.client.cancel(waiting)
        for future in self.pending:
            if future.key in running:
                try:
                    future.result()
                except Exception:
                    pass
        self.pending.clear()

    def cancel(self) -> None:
        if self.pending:
            self.client.cancel(list(self.pending))
            self.pending.clear()
