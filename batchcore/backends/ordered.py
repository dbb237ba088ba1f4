"""The one in-order run loop, shared by the thread, process and Dask backends.

Data flow (one ``map`` call, all in the caller's thread)::

    items (lazy) --islice--> Job(start, items) --Transport.submit--> worker --runs run_chunk-->
         ^  reading stops at the window (jobs, items, bytes)               |
         |  ahead of the oldest unfinished item                            v
    caller <--yield in input order-- reorder buffer <--Done-- Transport.wait() <--Died
                                                                   |
             a culprit the slot names: retried alone, then its fallback; bystanders re-queued
             no culprit known: the job's items run one at a time, alone (quarantine)

A backend differs from another only in its ``Transport``: how a job reaches a worker and how its
``Done`` or ``Died`` event comes back. A worker holds at most ``depth`` jobs: the one it runs and,
for the thread and process transports, the next one when it can wait without blocking a send
(``can_queue``), so it never waits for the parent between jobs. Job sizes adapt to the measured
time per item (about ``target_seconds`` of work per job) unless ``chunksize=`` fixes them.

Every thread or process worker records the item and attempt it is on in a ``Slot``: that is how a
crash or a timeout is charged to the right item while the innocent items of the same job simply
run again. A death no slot explains (a Dask worker, a process dying between items) puts the job's
items in quarantine: new work pauses, the work in flight drains, and each item then runs alone,
so a worker that dies can only have been killed by the one item it ran.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from ..errors import (
    ItemMemoryError,
    ItemTimeoutError,
    SerializationError,
    WorkerCrashedError,
    short_repr,
)
from ..pickling import dumps
from . import shm
from .base import CUR_RETRY, Backend, Chunk, Failure, Task

TARGET_SECONDS = 0.005  # work per job: >> the ~0.1 ms the parent spends per job; short tails
TARGET_BYTES = 8 << 20  # pickled input per job, so big items are not batched into huge messages
MAX_ITEMS = 10_000  # items per job at most: a window of jobs stays a few MiB for small items
# The window: how far reading may run ahead of the oldest unfinished item. It must be long, or a
# slow item at the head idles the other workers (results are yielded in order), and bounded, so
# memory does not grow with the input. Counted in jobs, items and estimated pickled bytes.
WINDOW_JOBS_PER_WORKER = 256
WINDOW_ITEMS_PER_WORKER = 4 * MAX_ITEMS
WINDOW_BYTES = 64 << 20
# After a fail-fast stop, how long items still running on threads may finish (most do, and then
# nothing of the batch runs on after the caller sees the error) before their threads are abandoned.
STOP_GRACE = 1.0


@dataclass(eq=False)
class Job:
    """Items ``start .. start+len(items)-1``; ``first_attempt`` > 0 when retrying a crashed item."""

    start: int
    items: list[Any]
    first_attempt: int = 0
    ready_at: float = 0.0
    alone: bool = False  # a quarantined item: it runs while nothing else does
    payload: Any = None  # the items as the transport sends them (pickled), once encoded
    payload_size: int = 0  # bytes of it for the pipe
    shared_size: int = 0  # bytes of it for shared memory (big buffers: ``shm``)
    cancelled: bool = False  # queued behind a worker's current job when the run stopped


@dataclass(eq=False)
class Done:
    worker: Any
    job: Job
    chunk: Chunk
    result_size: int = 0  # bytes of pickled results (with their shared memory), when pickled


@dataclass(eq=False)
class Died:
    """A worker died, or was stopped, with ``job`` on it (``None`` if idle)."""

    worker: Any
    job: Job | None
    exitcode: int | None
    index: int | None  # the item its slot says it was running; None when unknown
    attempt: int  # the attempt at that item
    timed_out: bool = False  # stopped by the parent for running past ``timeout``
    queued: list[Job] = field(default_factory=list)  # jobs waiting behind it: all innocent
    note: str = ""  # what the transport knows beyond that (Dask's own verdict)
    memory: tuple[int, int] | None = None  # stopped over ``max_memory``: (bytes used, the cap)


@dataclass(eq=False)
class WorkerState:
    """What the loop tracks per worker; transports subclass it. ``slot`` is ``None`` where the
    parent cannot see which item a worker runs (Dask): the transport enforces timeouts there."""

    ident: Any
    slot: Any
    ready: bool = False
    jobs: deque[Job] = field(default_factory=deque)  # jobs sent, oldest (running) first

    def died(self, exitcode: int | None, timed_out: bool = False, note: str = "") -> Died:
        """The event for this worker's death, taking its jobs (and its slot's last word)."""
        jobs = list(self.jobs)
        self.jobs.clear()
        index: int | None = None
        attempt = jobs[0].first_attempt if jobs else 0
        if self.slot is not None and self.slot.index >= 0:
            index, attempt = self.slot.index, self.slot.attempt
        job = jobs[0] if jobs else None
        return Died(self, job, exitcode, index, attempt, timed_out, jobs[1:], note)


class Transport:
    """How jobs reach a backend's workers and how their results come back: the part of a backend
    the loop does not share. ``workers`` are ``WorkerState`` objects."""

    size: int  # workers: sizes jobs and the window
    workers: list[Any]
    closed: bool = False
    depth: int = 2  # jobs a worker may hold: the one it runs and the next
    target_seconds: float = TARGET_SECONDS
    window_jobs_per_worker: int = WINDOW_JOBS_PER_WORKER
    shared_memory: bool = False  # big buffers of items go through ``shm`` (its ``seal`` sends)

    def begin(self, task: Task) -> None:
        """Prepare to run ``task`` (a process pool pickles it here, once per batch)."""

    def encode(self, job: Job) -> None:
        """Pickle the job's items once (a retried job keeps its bytes); ``SerializationError``
        when they cannot be pickled. Threads, which share memory, skip this."""
        if job.payload is None:
            try:
                job.payload = shm.split(job.items) if self.shared_memory else dumps(job.items)
            except Exception as exc:
                raise SerializationError("item", str(exc)) from exc
            job.payload_size = shm.pipe_size(job.payload)
            job.shared_size = shm.shared_size(job.payload)

    def can_queue(self, worker: Any, job: Job) -> bool:
        """Whether ``job`` may wait behind a busy worker's current job without blocking a send."""
        return True

    def submit(self, worker: Any, job: Job, fail_fast: bool, timeout: float | None) -> None:
        raise NotImplementedError(f"{type(self).__name__}.submit")

    def wait(self, timeout: float | None) -> list[Done | Died]:
        """The events that arrive within ``timeout`` seconds (each job's ``Done`` or ``Died``)."""
        raise NotImplementedError(f"{type(self).__name__}.wait")

    def stop(self, worker: Any) -> None:
        """Stop a worker stuck on an item (kill or abandon it) and start a replacement."""
        raise NotImplementedError(f"{type(self).__name__}.stop")

    def end(self, clean: bool) -> None:
        """After a map. When not clean, stop what can be stopped at once: the loop gives what
        still runs ``STOP_GRACE`` seconds, then ``stop``s its workers (threads are abandoned)."""

    def close(self, kill: bool = False) -> None:
        """Release every worker; ``kill`` when nothing may outlive this (Ctrl-C)."""

    def poll_ready(self) -> None:
        """Take in, without waiting, what idle workers have sent since they started (a process
        worker's "ready"), so an idle pool knows when it has booted."""


class ChunkSizer:
    """Chooses job sizes: fixed, or grown from 1 toward ``target_seconds`` of measured work."""

    def __init__(
        self,
        fixed: int | None,
        workers: int,
        total: int | None,
        target_seconds: float = TARGET_SECONDS,
    ) -> None:
        self.fixed = fixed
        self.target_seconds = target_seconds
        # With a known length, keep at least 4 jobs per worker so the tail stays balanced; and
        # never more than MAX_ITEMS items per job, which bounds the memory the window holds.
        self.cap = min(MAX_ITEMS, max(1, math.ceil(total / (4 * workers))) if total else MAX_ITEMS)
        self.size = 1
        self.seconds_per_item: float | None = None
        self.bytes_per_item = 0.0  # pickled input, for the read-ahead window's byte budget
        self.message_bytes = 0.0  # the larger of input and result, per item

    def next_size(self) -> int:
        return self.fixed or self.size

    def observe(self, count: int, seconds: float, payload_size: int, result_size: int = 0) -> None:
        """Learn from a finished job: its item count, compute time and pickled sizes."""
        if self.fixed or count <= 0:
            return
        per_item = max(seconds / count, 1e-8)
        if self.seconds_per_item is None:
            self.seconds_per_item = per_item
        else:
            self.seconds_per_item = 0.5 * self.seconds_per_item + 0.5 * per_item
        if payload_size:
            self.bytes_per_item = payload_size / count
        self.message_bytes = max(payload_size, result_size) / count
        self.size = round(max(1, min(self.ideal(), self.size * 8, self.cap)))

    def ideal(self) -> float:
        """Items per job for ``target_seconds`` of work, and at most ``TARGET_BYTES`` a message."""
        assert self.seconds_per_item is not None
        ideal = self.target_seconds / self.seconds_per_item
        if self.message_bytes:
            ideal = min(ideal, TARGET_BYTES / self.message_bytes)
        return ideal

    def recall(self, key: str) -> None:
        """Start from what earlier batches of the same task learned, not from one item a job:
        a fresh node of a known class runs at its warmed per-item cost from its first job."""
        learned = _LEARNED.get(key)
        if self.fixed or learned is None:
            return
        self.seconds_per_item, self.bytes_per_item, self.message_bytes = learned
        self.size = round(max(1, min(self.ideal(), self.cap)))

    def remember(self, key: str) -> None:
        """Keep what this batch learned for the next batch of the same task."""
        if self.fixed or self.seconds_per_item is None:
            return
        _LEARNED[key] = (self.seconds_per_item, self.bytes_per_item, self.message_bytes)
        _LEARNED.move_to_end(key)
        while len(_LEARNED) > LEARNED_TASKS:
            _LEARNED.popitem(last=False)


# What batches learned about each task (seconds and bytes per item), by task label; bounded.
_LEARNED: OrderedDict[str, tuple[float, float, float]] = OrderedDict()
LEARNED_TASKS = 256


def known_length(items: Iterable[Any]) -> int | None:
    """The number of items when ``items`` has a length, so jobs can be sized to it."""
    return (operator.length_hint(items, 0) if hasattr(items, "__len__") else 0) or None


def unpicklable_item_chunk(index: int, item: Any, exc: BaseException) -> Chunk:
    """The failed one-item chunk for an item that cannot be pickled to send it to a worker."""
    error = SerializationError(
        "item",
        f"item {index} ({type(item).__module__}.{type(item).__qualname__}, "
        f"{short_repr(item, 60)}) cannot be pickled to send it to a worker: "
        f"{type(exc).__name__}: {exc}",
    )
    error.__cause__ = exc
    return Chunk(index, [item], [None], [(0, Failure.capture(error, 1))])


def fallback_chunk(
    task: Task, index: int, item: Any, error: Exception, attempt: int, retries: int = 0
) -> Chunk:
    """The last ``attempt`` at ``item`` crashed or timed out: ``task.fallback`` decides, here in
    the caller (on every backend, Dask included)."""
    token = CUR_RETRY.set(attempt)
    try:
        value = task.fallback(item, error)
    except Exception as exc:
        return Chunk(index, [item], [None], [(0, Failure.capture(exc, attempt + 1))], retries)
    finally:
        CUR_RETRY.reset(token)
    return Chunk(index, [item], [value], [], retries)


def read_slot(slot: Any) -> tuple[int, int, int] | None:
    """A consistent ``(index, attempt, started_ns)`` from a slot another thread may be writing."""
    started = slot.started
    index = slot.index
    attempt = slot.attempt
    if started == 0 or started != slot.started:
        return None
    return index, attempt, started


class OrderedRun:
    """One ``map``: iterating it runs ``task`` over ``items`` on ``transport`` and yields chunks
    in input order (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        task: Task,
        items: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        fail_fast: bool,
    ) -> None:
        workers = transport.size
        self.transport = transport
        self.task = task
        self.timeout = timeout
        self.fail_fast = fail_fast
        self.source = iter(items)
        self.sizer = ChunkSizer(chunksize, workers, known_length(items), transport.target_seconds)
        self.sizer.recall(task.label)
        self.exhausted = False
        self.next_index = 0  # index of the next item to read from the source
        self.retry: list[Job] = []  # jobs to run before new ones: crashed items, bystanders
        self.suspects: deque[Job] = deque()  # quarantined items, each to run alone
        self.done: dict[int, Chunk] = {}  # the reorder buffer: finished chunks by start
        self.next_start = 0  # start of the next chunk to yield
        self.outstanding = 0  # pieces created and not yet yielded
        self.outstanding_items = 0  # items read from the source and not yet yielded
        self.window_jobs = transport.window_jobs_per_worker * workers
        self.window_items = WINDOW_ITEMS_PER_WORKER * workers
        self.window_bytes = max(WINDOW_BYTES, 4 * workers * TARGET_BYTES)
        self.stop_at = math.inf  # fail-fast: index of the first known failure

    def __iter__(self) -> Iterator[Chunk]:
        self.transport.begin(self.task)
        try:
            while True:
                while self.next_start in self.done:
                    chunk = self.done.pop(self.next_start)
                    self.outstanding -= 1
                    self.outstanding_items -= len(chunk.items)
                    self.next_start = chunk.start + len(chunk.items)
                    yield chunk
                    if self.fail_fast and chunk.failures:
                        self.stop_early()
                        return
                if self.exhausted and self.outstanding == 0:
                    self.transport.end(clean=True)
                    self.sizer.remember(self.task.label)
                    return
                self.dispatch()
                if self.exhausted and self.outstanding == 0:
                    continue  # the source just ran dry with nothing in flight: finish now
                for event in self.transport.wait(self.wait_time()):
                    if isinstance(event, Done):
                        self.on_done(event)
                    else:
                        self.on_died(event)
                self.check_timeouts()
        except (Exception, GeneratorExit):
            self.stop_early()
            raise
        except BaseException:  # Ctrl-C, SystemExit: no worker may outlive this
            self.transport.close(kill=True)
            raise

    def busy_workers(self) -> list[Any]:
        return [worker for worker in self.transport.workers if worker.jobs]

    def stop_early(self) -> None:
        """The run ends before its items do: stop what is still running for it, promptly.

        Queued jobs are cancelled and the transport stops what it can at once (processes are
        killed, Dask futures cancelled). Threads cannot be killed: their running items get
        ``STOP_GRACE`` seconds to finish, then each such thread is abandoned (its result is
        dropped, it runs no further item) and replaced, so a hung item never blocks the caller.
        """
        for worker in self.busy_workers():
            for job in list(worker.jobs)[1:]:
                job.cancelled = True
        self.transport.end(clean=False)
        deadline = time.monotonic() + STOP_GRACE
        while self.busy_workers() and time.monotonic() < deadline:
            self.transport.wait(0.05)
            self.check_timeouts()
        for worker in self.busy_workers():
            worker.jobs.clear()
            self.transport.stop(worker)

    def wait_time(self) -> float | None:
        deadlines: list[float] = []
        now = time.monotonic()
        if self.retry or self.suspects:
            deadlines.append(min(job.ready_at for job in (*self.retry, *self.suspects)) - now)
        if self.timeout is not None and self.busy_workers():
            deadlines.append(min(self.timeout / 4, 0.1))
        if not deadlines:
            return 1.0
        return max(0.0, min(deadlines))

    # --- feeding workers --------------------------------------------------------------------

    def dispatch(self) -> None:
        """Give idle workers a job, then queue one more behind each busy worker where it fits."""
        if self.suspects:
            self.dispatch_suspect()
            return
        for queued in range(self.transport.depth):
            for worker in self.transport.workers:
                if not worker.ready or len(worker.jobs) != queued:
                    continue
                job = self.next_job()
                if job is None:
                    return
                if queued and not self.transport.can_queue(worker, job):
                    self.retry.append(job)  # too big to wait in the pipe: it goes out later
                    continue
                self.submit(worker, job)

    def dispatch_suspect(self) -> None:
        """Quarantine: once the work in flight has drained, run the next suspect alone."""
        if self.busy_workers() or self.suspects[0].ready_at > time.monotonic():
            return
        idle = [worker for worker in self.transport.workers if worker.ready]
        if idle:
            job = self.suspects.popleft()
            self.transport.encode(job)  # it was part of a job that encoded: so does it alone
            self.submit(idle[0], job)

    def submit(self, worker: Any, job: Job) -> None:
        if worker.slot is not None and not worker.jobs:
            # Clear the slot: until the worker starts this job, it must not look like the
            # previous job's last item (a stale index and start time read as a timeout).
            worker.slot.started = 0
            worker.slot.index = -1
        self.transport.submit(worker, job, self.fail_fast, self.timeout)

    def next_job(self) -> Job | None:
        """The next job to send, encoded: a retry that is due, else new items if the window
        allows. Items that cannot be encoded are failed on the way."""
        while True:
            job = self.due_retry() or self.read_job()
            if job is None:
                return None
            try:
                self.transport.encode(job)
            except SerializationError:
                self.split_unpicklable(job)
                continue
            return job

    def due_retry(self) -> Job | None:
        now = time.monotonic()
        ready = [job for job in self.retry if job.ready_at <= now]
        if not ready:
            return None
        job = min(ready, key=lambda j: j.start)
        self.retry.remove(job)
        return job

    def read_job(self) -> Job | None:
        if self.exhausted or self.next_index >= self.stop_at or self.window_full():
            return None
        size = self.sizer.next_size()
        items = list(islice(self.source, size))
        if len(items) < size:
            self.exhausted = True
        if not items:
            return None
        job = Job(self.next_index, items)
        self.next_index += len(items)
        self.outstanding += 1
        self.outstanding_items += len(items)
        return job

    def window_full(self) -> bool:
        return (
            self.outstanding >= self.window_jobs
            or self.outstanding_items >= self.window_items
            or self.outstanding_items * self.sizer.bytes_per_item >= self.window_bytes
        )

    def split_unpicklable(self, job: Job) -> None:
        """Fail the items that cannot be pickled; re-queue the others as smaller jobs."""
        pieces: list[Job | Chunk] = []
        run: list[Any] = []
        run_start = job.start
        for offset, item in enumerate(job.items):
            index = job.start + offset
            try:
                self.transport.encode(Job(index, [item]))
            except SerializationError as exc:
                if run:
                    pieces.append(Job(run_start, run, job.first_attempt))
                    run = []
                pieces.append(unpicklable_item_chunk(index, item, exc.__cause__ or exc))
                run_start = index + 1
            else:
                run.append(item)
        if run:
            pieces.append(Job(run_start, run, job.first_attempt))
        self.add_pieces(pieces)

    def add_pieces(self, pieces: list[Job | Chunk]) -> None:
        """Replace one outstanding piece by ``pieces`` (jobs to run, chunks already settled)."""
        self.outstanding += len(pieces) - 1
        for piece in pieces:
            if isinstance(piece, Job):
                if piece.start > self.stop_at:
                    self.outstanding -= 1  # after a fail-fast failure: cancelled, never run
                    self.outstanding_items -= len(piece.items)
                elif piece.alone:
                    self.suspects.append(piece)
                else:
                    self.retry.append(piece)
            else:
                self.settle(piece)

    def settle(self, chunk: Chunk) -> None:
        if self.fail_fast and chunk.failures:
            self.stop_at = min(self.stop_at, chunk.start + chunk.failures[0][0])
        self.done[chunk.start] = chunk

    # --- events -----------------------------------------------------------------------------

    def on_done(self, event: Done) -> None:
        chunk = event.chunk
        chunk.retries += event.job.first_attempt * len(event.job.items)  # spent on crashes
        job = event.job
        self.sizer.observe(
            len(chunk.values), chunk.elapsed, job.payload_size + job.shared_size, event.result_size
        )
        self.settle(chunk)

    def on_died(self, event: Died) -> None:
        self.retry.extend(event.queued)  # never started: they simply go out again
        job = event.job
        if job is None:
            return
        index, attempt = event.index, event.attempt
        if index is None or not job.start <= index < job.start + len(job.items):
            if not job.alone:
                # Nobody to blame (a Dask worker, or a process dying between items): each item
                # runs again alone, so the next death names its culprit.
                self.add_pieces(
                    [
                        Job(job.start + offset, [item], job.first_attempt, alone=True)
                        for offset, item in enumerate(job.items)
                    ]
                )
                return
            index, attempt = job.start, job.first_attempt  # it ran alone: its item is to blame
        offset = index - job.start
        culprit = job.items[offset]
        pieces: list[Job | Chunk] = []
        if offset:
            pieces.append(Job(job.start, job.items[:offset], job.first_attempt))
        if attempt + 1 < self.task.max_retries:
            ready_at = time.monotonic() + self.task.wait
            pieces.append(Job(index, [culprit], attempt + 1, ready_at, alone=job.alone))
        else:
            error: Exception
            if event.timed_out:
                error = ItemTimeoutError(
                    index, short_repr(culprit), self.timeout or 0.0, attempt + 1
                )
            elif event.memory is not None:
                used, limit = event.memory
                error = ItemMemoryError(
                    index, short_repr(culprit), limit, used, event.worker.ident, attempt + 1
                )
            else:
                error = WorkerCrashedError(
                    index, short_repr(culprit), event.worker.ident, event.exitcode, attempt + 1
                )
            if event.note:
                error.add_note(event.note)
            pieces.append(
                fallback_chunk(self.task, index, culprit, error, attempt, retries=attempt)
            )
        if offset + 1 < len(job.items):
            pieces.append(Job(index + 1, job.items[offset + 1 :], job.first_attempt))
        self.add_pieces(pieces)

    def check_timeouts(self) -> None:
        if self.timeout is None:
            return
        limit = int(self.timeout * 1e9)
        now = time.monotonic_ns()
        for worker in self.busy_workers():
            snapshot = None if worker.slot is None else read_slot(worker.slot)
            if snapshot is None:
                continue
            index, attempt, started = snapshot
            job = worker.jobs[0]
            if now - started > limit and job.start <= index < job.start + len(job.items):
                event = worker.died(None, timed_out=True)
                event.index, event.attempt = index, attempt  # the stuck attempt, not a later one
                self.transport.stop(worker)
                self.on_died(event)


class PooledBackend(Backend):
    """A backend that keeps its transport (a pool of workers) warm between batches.

    Subclasses say how to build their pool. A second ``map`` running at the same time (from
    another thread) gets a pool of its own, closed when that map is done.
    """

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(workers)
        self._idle: list[Transport] = []
        self._lock = threading.Lock()

    def make_pool(self, imports: Sequence[str] = (), size: int | None = None) -> Transport:
        """A new pool of ``size`` workers (``self.workers`` when ``None``)."""
        raise NotImplementedError(f"{type(self).__name__}.make_pool")

    def pool_size(self, count: int | None) -> int:
        """Workers a batch of ``count`` items needs (``None``: unknown): ``workers``, but never
        more than there are items, since a worker that gets no item only costs its start."""
        return self.workers if count is None else max(1, min(self.workers, count))

    def fit(self, pool: Transport, size: int, imports: Sequence[str]) -> Transport:
        """An idle ``pool`` made ready for a batch that needs ``size`` workers: as it is here
        (idle extra threads cost nothing); the process backend resizes it."""
        return pool

    def map(
        self,
        task: Task,
        items: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        fail_fast: bool = True,
    ) -> Iterator[Chunk]:
        pool = self._lease(size=self.pool_size(known_length(items)))
        try:
            yield from OrderedRun(pool, task, items, chunksize, timeout, fail_fast)
        finally:
            self._give_back(pool)

    def start(self, imports: Sequence[str] = (), items: int | None = None) -> None:
        """Start the workers now instead of at the first batch; returns without waiting for them
        to boot, so the caller can do other work meanwhile. A new pool has ``imports`` imported
        in its workers as they boot; a running pool is only fitted to the batch (``fit``).
        ``items``: the coming batch's item count, when known (no more workers than items)."""
        self._give_back(self._lease(imports, self.pool_size(items)))

    def is_warm(self) -> bool:
        """True when an idle pool's workers have all booted: a batch would start at once."""
        with self._lock:
            for pool in self._idle:
                pool.poll_ready()
            return any(pool.workers and all(w.ready for w in pool.workers) for pool in self._idle)

    def _lease(self, imports: Sequence[str] = (), size: int | None = None) -> Transport:
        """The idle pool, fitted to ``size`` workers (``self.workers`` when ``None``), or a new
        pool of that size when none is idle (another batch runs at the same time)."""
        size = self.workers if size is None else size
        with self._lock:
            pool = self._idle.pop() if self._idle else None
        if pool is not None:
            return self.fit(pool, size, imports)
        return self.make_pool(imports, size)

    def _give_back(self, pool: Transport) -> None:
        with self._lock:
            if not pool.closed and not self._idle:
                self._idle.append(pool)
                return
        pool.close()

    def close(self) -> None:
        with self._lock:
            pools = list(self._idle)
            self._idle.clear()  # in place: it may be shared (``ProcessBackend``'s program pool)
        for pool in pools:
            pool.close()
