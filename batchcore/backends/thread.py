"""The thread backend: items run on daemon threads of this process, sharing the node object.

Useful when ``exec`` waits on I/O or calls code that releases the GIL (Pillow, numpy, pyarrow).
Nothing is pickled. A thread cannot be killed: an item past its ``timeout``, or still running
when a fail-fast batch stops, has its thread abandoned (the item finishes in the background, its
result and output are dropped, the thread runs no further item) while a fresh thread takes its
place. The cost: an item that never returns keeps its thread (a daemon) until the program exits.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from itertools import count
from typing import Any

from .base import Chunk, Slot, Task, mark_worker, run_chunk
from .ordered import STOP_GRACE, Died, Done, Job, PooledBackend, Transport, WorkerState
from .streams import Output, captured, write_out

_names = count(1)


class ThreadWorker(WorkerState):
    """One daemon thread taking jobs from its own inbox."""

    def __init__(self, events: queue.SimpleQueue[Done | Died]) -> None:
        super().__init__(ident=f"batchcore-thread-{next(_names)}", slot=Slot(), ready=True)
        self.abandoned = False
        self.inbox: queue.SimpleQueue[tuple[Job, Task, bool, bool] | None] = queue.SimpleQueue()
        self.events = events
        self.thread = threading.Thread(target=self.loop, name=self.ident, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        with mark_worker():
            while True:
                message = self.inbox.get()
                if message is None or self.abandoned:
                    return
                job, task, fail_fast, track_time = message
                if job.cancelled:
                    self.events.put(Done(self, job, Chunk(job.start, job.items, [])))
                    continue
                output: Output = []
                try:
                    with captured(output):  # whole lines, printed in order with the results
                        chunk = run_chunk(
                            Abandonable(task, self),
                            job.items,
                            job.start,
                            job.first_attempt,
                            self.slot,
                            fail_fast,
                            track_time,
                        )
                except BaseException:  # SystemExit or the like inside exec: this thread is done
                    for stream, text in output:  # what the job printed before it ended
                        write_out(stream, text)
                    self.events.put(Died(self, job, None, self.slot.index, self.slot.attempt))
                    return
                chunk.output = output
                self.events.put(Done(self, job, chunk))

    def abandon(self) -> None:
        """Let the thread go: it exits after its current item, and its events are ignored."""
        self.abandoned = True
        self.inbox.put(None)


class Abandoned(Exception):
    """Raised instead of running an item on a thread the run loop has abandoned."""


class Abandonable(Task):
    """``task`` as a worker thread runs it: once the thread is abandoned, the rest of its job is
    skipped, so a batch that stopped runs nothing new (only the item already under way)."""

    def __init__(self, task: Task, worker: ThreadWorker) -> None:
        self.task = task
        self.worker = worker
        self.label = task.label
        self.node = task.node

    def call(self, item: Any) -> Any:
        if self.worker.abandoned:
            raise Abandoned(f"{self.worker.ident} was abandoned; its remaining items do not run")
        return self.task.call(item)


class ThreadPool(Transport):
    """``size`` thread workers and one queue of events back to the run loop."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.events: queue.SimpleQueue[Done | Died] = queue.SimpleQueue()
        self.workers: list[ThreadWorker] = [ThreadWorker(self.events) for _ in range(size)]
        self.task: Task | None = None

    def begin(self, task: Task) -> None:
        self.task = task

    def encode(self, job: Job) -> None:
        """Nothing to do: threads take the items themselves."""

    def submit(
        self, worker: ThreadWorker, job: Job, fail_fast: bool, timeout: float | None
    ) -> None:
        assert self.task is not None
        worker.jobs.append(job)
        worker.inbox.put((job, self.task, fail_fast, timeout is not None))

    def wait(self, timeout: float | None) -> list[Done | Died]:
        events: list[Done | Died] = []
        try:
            events.append(self.events.get(timeout=timeout))
            while True:
                events.append(self.events.get_nowait())
        except queue.Empty:
            pass
        live: list[Done | Died] = []
        for event in events:
            worker = event.worker
            if worker.abandoned:
                continue
            if isinstance(event, Died):
                live.append(worker.died(None))  # its slot still names the item it died on
                self.replace(worker)
            else:
                worker.jobs.popleft()
                live.append(event)
        return live

    def replace(self, worker: ThreadWorker) -> None:
        worker.abandon()
        self.workers[self.workers.index(worker)] = ThreadWorker(self.events)

    def stop(self, worker: ThreadWorker) -> None:
        self.replace(worker)

    def close(self, kill: bool = False) -> None:
        """Let every thread go. ``kill`` (Ctrl-C, SIGTERM): the items under way get up to
        ``STOP_GRACE`` seconds to finish, so their own cleanup (a temporary file removed) runs
        before the program exits and takes daemon threads down wherever they are."""
        self.closed = True
        for worker in self.workers:
            worker.abandon()
        if kill:
            deadline = time.monotonic() + STOP_GRACE
            for worker in self.workers:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
        self.workers = []


class ThreadBackend(PooledBackend):
    """Runs items on ``workers`` threads; the pool is kept between batches."""

    name = "thread"

    def make_pool(self, imports: Sequence[str] = (), size: int | None = None) -> ThreadPool:
        return ThreadPool(self.workers if size is None else size)
