"""The Dask backend: the same batches on a Dask cluster (``pip install "batchcore[dask]"``).

Dask's own scheduler and workers do the work; the run loop is the one the other backends share
(``ordered.py``), fed through a ``DaskTransport``::

    OrderedRun --Job--> client.submit(run_remote, task, items) -> Dask worker -> run_chunk
        ^ one task per lane (two lanes per Dask worker)                 |
        +---- Done (results) or Died (Dask gave up: KilledWorker) <- done callback

Where it connects, in order: ``DaskBackend(address=...)``; else the scheduler named by Dask's
own setting (``DASK_SCHEDULER_ADDRESS`` / ``dask.config["scheduler-address"]``); else the client
already active in the caller (``distributed.default_client()``); else a ``LocalCluster`` of
``workers`` worker processes, started on first use, reused by later batches and closed at exit.

The task (the node and its params, or a sub-flow and ``shared``) is pickled once per batch and
sent to every worker once. A worker that dies is Dask's business: its tasks are rescheduled
on the others (``distributed.scheduler.allowed-failures``). When Dask gives up on a task, no slot
says which item killed its workers: the loop's quarantine runs each of its items alone, so only an
item that kills workers while alone fails, as a ``WorkerCrashedError``. A timeout is enforced in
the Dask worker itself (the parent cannot see which item a Dask worker runs); an item whose last
attempt timed out comes back unresolved, and its ``fallback`` runs in the parent, as on the
other backends. A fail-fast stop cancels the run's tasks; one still running after a short grace
is abandoned to its worker thread (Dask cannot interrupt it), and a worker of batchcore's own
``LocalCluster`` holding one is restarted, so the next batch gets all its workers. Items and results
cross by path and value: files must be readable by every worker (a shared filesystem, or the same
path on each machine).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import ItemTimeoutError, short_repr
from ..pickling import loads
from .base import Backend, Chunk, Failure, Slot, Task, mark_worker, run_chunk
from .ordered import Died, Done, Job, OrderedRun, Transport, WorkerState, fallback_chunk, read_slot
from .streams import Output, captured
from .wire import pack, pickle_task, unpack

try:
    import distributed
    from distributed.scheduler import KilledWorker
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'the "dask" backend needs Dask distributed: pip install "batchcore[dask]"'
    ) from exc

log = logging.getLogger("batchcore")

WINDOW_PER_WORKER = 32  # chunks read ahead per worker (in flight or waiting for their turn)
# Tasks submitted and not yet finished, per worker: two keep it busy (the second waits on the
# worker), and chunk sizes learn from the first results instead of a window of one-item tasks.
IN_FLIGHT_PER_WORKER = 2
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


# Items whose last attempt timed out on the worker, as ``(offset, attempt)``: their fallback is
# the parent's to run.
TimedOut = list[tuple[int, int]]


def run_remote(
    key: str,
    blob: bytes,
    items_blob: bytes,
    start: int,
    first_attempt: int,
    fail_fast: bool,
    timeout: float | None,
) -> tuple[int, float, int, bytes, bytes, Output, TimedOut]:
    """On a Dask worker: run one chunk; return ``(retries, elapsed, ran, failures, values,
    output, timed_out)``, ``output`` being what the chunk printed, as ``(stream, whole lines)``."""
    task = _task(key, blob)
    items = loads(items_blob)
    output: Output = []
    timed_out: TimedOut = []
    with mark_worker(), captured(output):
        if timeout is None:
            chunk = run_chunk(task, items, start, first_attempt, Slot(), fail_fast)
        else:
            chunk = _run_with_timeout(
                task, items, start, first_attempt, fail_fast, timeout, output, timed_out
            )
    values_blob, failures_blob = pack(chunk.values, chunk.failures, start)
    ran = len(chunk.values)
    return chunk.retries, chunk.elapsed, ran, failures_blob, values_blob, output, timed_out


def _run_with_timeout(
    task: Task,
    items: list[Any],
    start: int,
    first_attempt: int,
    fail_fast: bool,
    timeout: float,
    output: Output,
    timed_out: TimedOut,
) -> Chunk:
    """Run items one by one on a helper thread, giving up on an attempt after ``timeout``.

    A Dask worker thread cannot be killed: a stuck attempt is abandoned (it finishes in the
    background) and the item is retried; after its last attempt it goes in ``timed_out`` with
    no value, for the parent to call its fallback (which may rescue it: the chunk goes on).
    """
    values: list[Any] = []
    failures: list[tuple[int, Failure]] = []
    retries = 0
    began = time.perf_counter()
    for offset, item in enumerate(items):
        index = start + offset
        first = first_attempt
        while True:
            outcome = _attempt(task, item, index, first, fail_fast, timeout, output)
            if isinstance(outcome, Chunk):
                chunk = outcome
                break
            if outcome + 1 < task.max_retries:  # the attempt that timed out may be retried
                retries += 1
                first = outcome + 1
                continue
            timed_out.append((offset, outcome))
            chunk = Chunk(index, [item], [None])
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

    def start(self, imports: Sequence[str] = (), items: int | None = None) -> None:
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
        owned = self._cluster is not None and client is self._client
        transport = DaskTransport(client, self.worker_count(client), restart_stuck=owned)
        try:
            yield from OrderedRun(transport, task, items, chunksize, timeout, fail_fast)
        finally:
            transport.close()

    def __repr__(self) -> str:
        where = self.address or ("local cluster" if self._cluster else "active client")
        return f"DaskBackend(workers={self.workers}, {where})"


class DaskTransport(Transport):
    """One ``map``'s chunks as Dask tasks. Dask places them on its workers, so the loop sees
    lanes instead: each holds one task in flight, two lanes per Dask worker."""

    depth = 1  # a lane's second task would only wait in Dask's queue: no lane queues
    target_seconds = TARGET_SECONDS
    window_jobs_per_worker = WINDOW_PER_WORKER

    def __init__(self, client: Any, workers: int, restart_stuck: bool = False) -> None:
        self.client = client
        self.restart_stuck = restart_stuck  # on a cluster batchcore started: it may restart
        self.stuck_workers: set[str] = set()  # running tasks of a stopped run
        self.size = workers
        self.workers = [
            WorkerState(ident=None, slot=None, ready=True)
            for _ in range(IN_FLIGHT_PER_WORKER * workers)
        ]
        self.key = f"batchcore-{uuid.uuid4().hex}"
        self.task: Task | None = None
        self.timeout: float | None = None
        self.fail_fast = True
        self.task_bytes = b""
        self.task_future: Any = None
        self.futures: dict[Any, WorkerState] = {}  # tasks in flight, and the lane of each
        self.finished: queue.SimpleQueue[Any] = queue.SimpleQueue()  # fed by done callbacks
        self.workers_before = _worker_addresses(client)

    def begin(self, task: Task) -> None:
        self.task = task
        self.task_bytes = pickle_task(task, NODE_HINT)
        self.task_future = self.scatter_task()

    def scatter_task(self) -> Any:
        """Put the pickled task on every worker: chunks need it wherever they run (one copy only
        would pull every chunk to that worker)."""
        return self.client.scatter(self.task_bytes, broadcast=True, hash=False)

    def submit(self, lane: WorkerState, job: Job, fail_fast: bool, timeout: float | None) -> None:
        self.timeout, self.fail_fast = timeout, fail_fast
        future = self.client.submit(
            run_remote,
            self.key,
            self.task_future,
            job.payload,
            job.start,
            job.first_attempt,
            fail_fast,
            timeout,
            pure=False,
            key=f"{self.key}-{job.start}-{len(job.items)}-{uuid.uuid4().hex[:8]}",
        )
        lane.jobs.append(job)
        self.futures[future] = lane
        future.add_done_callback(self.finished.put)

    def wait(self, timeout: float | None) -> list[Done | Died]:
        finished = []
        try:
            finished.append(self.finished.get(timeout=timeout))
            while True:
                finished.append(self.finished.get_nowait())
        except queue.Empty:
            pass
        events: list[Done | Died] = []
        for future in finished:
            lane = self.futures.pop(future, None)
            if lane is not None:  # else cancelled when the run stopped
                events.append(self.outcome(future, lane))
        return events

    def outcome(self, future: Any, lane: WorkerState) -> Done | Died:
        """The lane's task ended: its results, or the death Dask reports."""
        outcome = None
        if future.status == "finished":
            try:
                outcome = future.result()
            except Exception:  # its worker died between finishing and handing the result over
                outcome = None
        if outcome is not None:
            job = lane.jobs.popleft()
            retries, elapsed, ran, failures_blob, values_blob, output, timed_out = outcome
            chunk = unpack(job.start, job.items, ran, failures_blob, values_blob, retries, elapsed)
            chunk.output = output
            self.fall_back(chunk, timed_out)
            return Done(lane, job, chunk, len(values_blob))
        error = future.exception() if future.status == "error" else None
        if error is not None and not isinstance(error, KilledWorker):
            raise error  # Dask itself failed the task (not an item: those come back as values)
        # The chunk died with workers: Dask gave up on it (KilledWorker), or dropped it because
        # the task's bytes died with every worker holding them.
        if self.task_future.status != "finished":
            self.task_future = self.scatter_task()
        verdict = error or "its task was lost with the workers holding it"
        return lane.died(
            None, note=f"the item killed Dask workers even when it ran alone ({verdict})"
        )

    def fall_back(self, chunk: Chunk, timed_out: TimedOut) -> None:
        """Resolve the items whose last attempt timed out on the worker with the task's
        ``fallback``, here in the parent; a fail-fast chunk then ends at its first failure."""
        if not timed_out:
            return
        assert self.task is not None
        for offset, attempt in timed_out:
            index = chunk.start + offset
            item = chunk.items[offset]
            error = ItemTimeoutError(index, short_repr(item), self.timeout or 0.0, attempt + 1)
            rescued = fallback_chunk(self.task, index, item, error, attempt)
            chunk.values[offset] = rescued.values[0]
            chunk.failures.extend((offset, failure) for _, failure in rescued.failures)
        chunk.failures.sort(key=lambda pair: pair[0])
        if self.fail_fast and chunk.failures:
            first = chunk.failures[0][0]
            del chunk.values[first + 1 :]
            del chunk.failures[1:]

    def end(self, clean: bool) -> None:
        if clean:
            lost = self.workers_before - _worker_addresses(self.client)
            if lost:
                log.warning(
                    "Dask workers %s left during the batch; "
                    "their tasks were rescheduled on the others",
                    sorted(lost),
                )
            return
        # Cancel the tasks not yet running; the loop gives the running ones a grace, then stops
        # their lanes (``stop``).
        running = {key for keys in self.client.processing().values() for key in keys}
        waiting = [future for future in self.futures if future.key not in running]
        self.client.cancel(waiting)
        for future in waiting:
            self.futures.pop(future).jobs.clear()

    def stop(self, lane: WorkerState) -> None:
        """Cancel the lane's task, still running after a fail-fast stop, and note its worker:
        Dask cannot interrupt a running task, so on batchcore's own cluster that worker is
        restarted when the run closes (else the task would hold its thread until it returns)."""
        mine = [future for future, owner in self.futures.items() if owner is lane]
        keys = {future.key for future in mine}
        for worker, processing in self.client.processing().items():
            if keys.intersection(processing):
                self.stuck_workers.add(worker)
        self.client.cancel(mine)
        for future in mine:
            del self.futures[future]
        lane.jobs.clear()

    def close(self, kill: bool = False) -> None:
        self.closed = True
        if self.stuck_workers and self.restart_stuck:
            self.client.restart_workers(sorted(self.stuck_workers), raise_for_error=False)
            self.stuck_workers.clear()
        if self.futures:
            self.client.cancel(list(self.futures))
            for lane in self.futures.values():
                lane.jobs.clear()
            self.futures.clear()
        if self.task_future is not None:
            self.client.cancel([self.task_future])
            self.task_future = None
