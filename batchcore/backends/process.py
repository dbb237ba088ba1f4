"""The process backend: a pool of worker interpreters for CPU-bound items.

Why not ``ProcessPoolExecutor``, loky or pebble? They either fail every in-flight item when one
worker dies (and stay broken), cannot kill one hung item, leave workers behind on Ctrl-C or when
the parent is killed, or consume input eagerly (see ``research/reliability.md``). The part they
would save us, starting processes and moving bytes, is small; the rest is ``ordered.py``.

Workers are fresh interpreters started with ``subprocess`` (never ``fork``, so a parent that
already runs threads, as pyarrow and pandas do, cannot deadlock them), connected by two pipes and
a small shared-memory slot. They do not re-import the user's ``__main__``: code defined there is
sent by value with cloudpickle, so scripts, ``python -c`` and notebooks all work without an
``if __name__ == "__main__"`` guard. BLAS, OpenMP and Arrow thread pools in workers are limited to
their share of the CPUs.

Workers after the first start in milliseconds: each pool has a zygote (``zygote.py``), itself a
fresh interpreter started with ``subprocess``, that imports numpy, pyarrow, pandas and Pillow once
and forks workers from a single-threaded state. The parent never forks. Without a zygote (not
Linux, more than one BLAS thread per worker, ``BATCHCORE_ZYGOTE=0``, or after it refused a fork
or died) workers are spawned directly as above.

Under ``max_memory=`` the parent reads each worker's resident memory (RSS, ``/proc/PID/statm``)
every ``MEMORY_POLL`` seconds while a batch runs. A worker over the cap is killed and replaced,
and the item its slot names fails with ``ItemMemoryError`` (retried like a crash), the way a
timeout stops a worker. Why not ``RLIMIT_AS`` in the worker: it caps address space, not memory.
Measured on Linux, a worker that imported numpy, pyarrow and pandas and read a 13 MB CSV with
pyarrow holds 160 MiB resident but 1.5 GiB of address space (glibc arenas, jemalloc and thread
stacks reserve it; more with more threads), so any useful limit would be mostly slack, and
pyarrow fails a read, not an item, when a reservation is refused. cgroups v2 would count memory
exactly, but need root or a delegated subtree, which a library cannot assume.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from ..errors import (
    SerializationError,
    WorkerStartupError,
    check_positive_int,
    describe_exit,
    format_bytes,
)
from .base import WORKER_ENV, Chunk, Failure, Slot, Task, default_workers
from .ordered import (
    Died,
    Done,
    Job,
    OrderedRun,
    PooledBackend,
    Transport,
    WorkerState,
    known_length,
)
from .shm import PARENT_ENV, message_size, seal, sweep
from .streams import Output, write_out
from .wire import SLOT_SIZE, SlotStruct, forward_record, log_levels, pickle_task, unpack
from .zygote import ForkedProcess, Zygote, ZygoteGone, available

log = logging.getLogger("batchcore")
ZYGOTE_SWITCH = "BATCHCORE_ZYGOTE"  # "0": always spawn workers directly

THREAD_LIMIT_VARS = (
    "OMP_NUM_THREADS",  # also read by pyarrow's CPU pool
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
# Workers are born with SIGINT blocked (see spawn) and ignore it before unblocking it: a Ctrl-C
# at the terminal reaches the whole process group, and a worker still importing would print
# a KeyboardInterrupt traceback of its own.
BOOT = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "from batchcore.backends._worker import main; main()"
)
PIPE_BYTES = 1 << 20  # bigger pipes move large items with fewer context switches
DEFAULT_PIPE_BYTES = 1 << 16
TERMINATE_GRACE = 1.0  # seconds a worker gets to exit after SIGTERM before SIGKILL
# Seconds between two reads of the workers' RSS under ``max_memory``. A worker can outgrow its cap
# by what it allocates in one interval: at the 1-3 GB/s at which a process can fault in fresh
# pages (1.25 GB/s measured here, under load), 50 ms is 60-150 MB. A read costs ~2 us a worker.
MEMORY_POLL = 0.05
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
WORKERS_PER_CPU = 4  # more worker processes than this per CPU is warned about (a likely typo)
NODE_HINT = (
    "Create such resources inside exec (or prep), or use backend='thread', which does not pickle."
)


Process = subprocess.Popen[bytes] | ForkedProcess


class ProcessWorker(WorkerState):
    """A worker process as the parent sees it: its pipes, its slot, the batch it has loaded."""

    def __init__(
        self,
        proc: Process,
        inbox: Connection,
        outbox: Connection,
        memory: mmap.mmap,
        pipe_capacity: int,
    ) -> None:
        super().__init__(ident=None, slot=SlotStruct.from_buffer(memory))
        self.proc = proc
        self.inbox = inbox
        self.outbox = outbox
        self.memory = memory
        self.batch = 0
        self.pipe_capacity = pipe_capacity  # of the task pipe: what can_queue may send at once
        self.output: Output = []  # lines printed by the job it runs, so far
        self.statm: int | None = None  # its /proc/PID/statm, open: read for max_memory

    @property
    def ident(self) -> int | None:
        """The pid; a forked worker's is known once the zygote has reported the fork."""
        return self.proc.pid

    @ident.setter
    def ident(self, value: object) -> None:
        pass  # WorkerState's __init__ sets it: the pid is the proc's

    def release(self) -> None:
        """Close our ends of the pipes and the slot (keeping the slot's last values readable)."""
        final = Slot()
        final.index, final.attempt, final.started = self.slot.index, self.slot.attempt, 0
        self.slot = final
        self.memory.close()
        self.inbox.close()
        self.outbox.close()
        if self.statm is not None:
            os.close(self.statm)
            self.statm = None

    def resident(self) -> int | None:
        """Bytes of RAM this worker holds (its RSS, as ``ps`` shows it); ``None`` when unknown.

        The statm file stays open: it keeps naming this process, never one that reuses its pid.
        """
        if self.statm is None:
            pid = self.proc.resolve(0) if isinstance(self.proc, ForkedProcess) else self.proc.pid
            if pid is None:
                return None
            try:
                self.statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # gone already
                return None
        try:
            fields = os.pread(self.statm, 256, 0).split()
        except OSError:  # gone: its pipe's hang-up reports it
            return None
        return int(fields[1]) * PAGE_SIZE if len(fields) > 1 else None


def worker_env(workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env[WORKER_ENV] = "1"
    env[PARENT_ENV] = str(os.getpid())  # for the names of big-payload files (``shm``)
    threads = str(max(1, default_workers() // workers))
    for name in THREAD_LIMIT_VARS:
        env.setdefault(name, threads)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = package_root + (os.pathsep + existing if existing else "")
    return env


def _enlarge_pipe(fd: int) -> int:
    """Grow a pipe's buffer (Linux); return its capacity in bytes."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    getpipe = getattr(fcntl, "F_GETPIPE_SZ", None)
    if setpipe is None or getpipe is None:  # pragma: no cover - not Linux
        return DEFAULT_PIPE_BYTES
    try:
        fcntl.fcntl(fd, setpipe, PIPE_BYTES)
    except OSError:  # capped by /proc/sys/fs/pipe-max-size: the default still works
        pass
    return int(fcntl.fcntl(fd, getpipe))


def _slot_fd() -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("batchcore-slot")
    else:  # pragma: no cover - macOS
        with tempfile.TemporaryFile() as handle:
            fd = os.dup(handle.fileno())
    os.ftruncate(fd, SLOT_SIZE)
    return fd


def use_zygote(env: dict[str, str]) -> bool:
    """Fork workers from a zygote unless it could not stay single-threaded (BLAS pools of more
    than one thread start at import) or the platform or the user rules it out."""
    return (
        available()
        and env.get(ZYGOTE_SWITCH, "1") != "0"
        and all(env.get(name) == "1" for name in THREAD_LIMIT_VARS)
    )


def _stop_processes(procs: list[Process], grace: float) -> None:
    """Wait up to ``grace`` seconds for ``procs`` to exit, then SIGKILL and reap the rest."""
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for proc in procs:
        if proc.pid is not None:  # None: a fork the zygote never reported, so no payloads
            sweep(proc.pid)  # the big payloads the dead ones never read (``shm``)


class ProcessPool(Transport):
    """``size`` worker processes; dead ones are replaced at once, so the pool heals itself."""

    shared_memory = True  # big buffers of items and results travel through ``shm``

    def __init__(self, size: int, imports: Sequence[str] = (), share: int | None = None) -> None:
        """``share``: the worker count the CPUs are shared out by (thread limits, ``worker_env``):
        the batch's ``workers``, when it starts fewer (fewer items than workers)."""
        self.size = size
        self.env = worker_env(share or size)
        self.batch = 0
        self.task_blob = b""
        self.task_label = ""
        self.log_levels: dict[str, int] = {}
        self.startup_failures = 0
        self.closed = False
        self.max_memory: int | None = None  # bytes per worker, for the map that leases the pool
        self.memory_checked = 0.0  # when the workers' memory was last read (monotonic)
        self.workers: list[ProcessWorker] = []
        self.zygote = Zygote(self.env, BOOT, imports) if use_zygote(self.env) else None
        for _ in range(size):
            self.workers.append(self.spawn())

    def fits(self, workers: int) -> bool:
        """Whether a batch that asks for ``workers`` would give each worker this pool's thread
        limits (``worker_env``): only then can this pool serve it."""
        return all(worker_env(workers)[name] == self.env[name] for name in THREAD_LIMIT_VARS)

    def resize(self, size: int) -> None:
        """Grow an idle pool to ``size`` workers (the zygote forks them in milliseconds) or
        shrink it, stopping the workers beyond ``size`` as ``close`` does (an idle one reads the
        end of its task pipe and exits). A batch then never has more workers than it asked for,
        and one warm pool serves every worker count of a program (``ProcessBackend``)."""
        check_positive_int("size", size)
        extra, self.workers = self.workers[size:], self.workers[:size]
        self.size = size
        while len(self.workers) < size:
            self.workers.append(self.spawn())
        self._stop_all(extra)

    def spawn(self) -> ProcessWorker:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        slot_fd = _slot_fd()
        capacity = _enlarge_pipe(task_w)
        _enlarge_pipe(result_w)
        try:
            memory = mmap.mmap(slot_fd, SLOT_SIZE)
            proc = self.start_process((task_r, result_w, slot_fd))
        finally:
            for fd in (task_r, result_w, slot_fd):
                os.close(fd)
        worker = ProcessWorker(
            proc,
            Connection(task_w, readable=False),
            Connection(result_r, writable=False),
            memory,
            capacity,
        )
        try:
            worker.inbox.send_bytes(pickle.dumps({"sys_path": list(sys.path)}))
        except OSError:
            pass  # it died at once: wait() sees the hang-up and reports it
        return worker

    def start_process(self, fds: tuple[int, int, int]) -> Process:
        """A worker process that owns ``fds``: forked by the zygote, else spawned directly."""
        if self.zygote is not None:
            try:
                return self.zygote.fork(fds)
            except ZygoteGone:
                self.drop_zygote()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return subprocess.Popen(
                [sys.executable, "-c", BOOT, *(str(fd) for fd in fds)],
                pass_fds=fds,
                env=self.env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def drop_zygote(self) -> None:
        """Say why the zygote is no longer used and end it; workers are spawned directly now."""
        zygote, self.zygote = self.zygote, None
        if zygote is None:
            return
        if not self.closed:
            log.warning(
                "batchcore: the process pool's zygote (pid %s) is not usable: %s; starting "
                "workers directly from now on (slower to start)",
                zygote.proc.pid,
                zygote.why,
            )
        zygote.close()

    # --- the Transport interface ------------------------------------------------------------

    def begin(self, task: Task) -> None:
        self.task_blob = pickle_task(task, NODE_HINT)
        self.task_label = task.label
        self.log_levels = log_levels()  # sent with the task: workers log as the parent does now
        self.batch += 1

    def can_queue(self, worker: ProcessWorker, job: Job) -> bool:
        # The worker read its current job whole before running it, so its pipe is empty: a
        # message that fits the buffer is written at once, never waiting on the busy worker.
        return job.payload_size + 1024 <= worker.pipe_capacity

    def submit(
        self, worker: ProcessWorker, job: Job, fail_fast: bool, timeout: float | None
    ) -> None:
        has_task = worker.batch != self.batch
        header = (
            has_task,
            job.start,
            job.first_attempt,
            fail_fast,
            timeout is not None,  # whether the worker's slot records when each attempt starts
            self.log_levels if has_task else None,
        )
        worker.jobs.append(job)
        worker.batch = self.batch
        try:
            worker.inbox.send_bytes(pickle.dumps(header))
            if has_task:
                worker.inbox.send_bytes(self.task_blob)
            worker.inbox.send_bytes(seal(job.payload, worker.ident))
        except OSError:
            pass  # the worker died: its hang-up arrives through wait() and re-queues the job

    def wait(self, timeout: float | None) -> list[Done | Died]:
        if self.max_memory is not None and any(worker.jobs for worker in self.workers):
            due = max(0.0, self.memory_checked + MEMORY_POLL - time.monotonic())
            timeout = due if timeout is None else min(timeout, due)
        by_conn = {worker.outbox: worker for worker in self.workers}
        events: list[Done | Died] = []
        finished: list[ProcessWorker] = []
        for conn in wait(list(by_conn), timeout):
            worker = by_conn[conn]  # type: ignore[index]
            event: Done | Died | None
            try:
                event = self.receive(worker)
            except (EOFError, OSError):
                event = self.on_exit(worker)
            if event is not None:
                events.append(event)
            if isinstance(event, Done):
                finished.append(worker)
        if self.max_memory is not None:
            events.extend(self.check_memory(self.max_memory, finished))
        return events

    def check_memory(self, limit: int, finished: list[ProcessWorker]) -> list[Died]:
        """Stop the workers holding more than ``limit`` bytes; the events for what they had.

        A worker that just finished a job and holds too much (what its items kept) is replaced
        before it can charge that to an item of its next job: that job runs again elsewhere. Every
        ``MEMORY_POLL`` seconds, a busy worker over the cap fails the item its slot names.
        """
        events: list[Died] = []
        for worker in finished:
            used = worker.resident() if worker in self.workers else None
            if used is not None and used > limit:
                log.info(
                    "batchcore: worker pid %s holds %s after its job, over max_memory=%s: "
                    "replacing it",
                    worker.ident,
                    format_bytes(used),
                    format_bytes(limit),
                )
                queued = list(worker.jobs)  # its next job, if it started, is not to blame
                worker.jobs.clear()
                worker.output = []  # printed by that job, which prints again where it reruns
                self.stop(worker)
                events.append(Died(worker, None, None, None, 0, queued=queued))
        if time.monotonic() < self.memory_checked + MEMORY_POLL:
            return events
        self.memory_checked = time.monotonic()
        for worker in [worker for worker in self.workers if worker.jobs]:
            job = worker.jobs[0]
            if not job.start <= worker.slot.index < job.start + len(job.items):
                continue  # not started yet
            used = worker.resident()
            if used is None or used <= limit:
                continue
            worker.proc.kill()
            event = self.on_exit(worker)  # reaps it, starts its replacement, keeps its output
            event.memory = (used, limit)
            events.append(event)
        return events

    def receive(self, worker: ProcessWorker) -> Done | None:
        message = pickle.loads(worker.outbox.recv_bytes())
        kind = message[0]
        if kind == "out":
            if worker.jobs:
                worker.output.append((message[1], message[2]))  # they go out with the job's chunk
            else:
                write_out(message[1], message[2])  # a thread of an idle worker: nothing to wait for
            return None
        if kind == "log":
            forward_record(message[1])
            return None
        if kind == "ready":
            worker.ready = True
            self.startup_failures = 0
            return None
        if kind == "startup_error":
            raise WorkerStartupError(f"worker pid {worker.ident} failed to start:\n{message[1]}")
        job = worker.jobs.popleft()
        if kind == "setup_error":
            raise SerializationError(
                "node",
                f"{self.task_label.split('.')[0]} could not be loaded in worker pid {worker.ident} "
                f"(is its module importable there?):\n{message[1]}",
            )
        if kind == "items_error":
            error = SerializationError(
                "item",
                f"items {job.start}..{job.start + len(job.items) - 1} could not be "
                f"unpickled in worker pid {worker.ident}:\n{message[1]}",
            )
            failures = [
                (i, Failure(error, message[1], 1, remote=True)) for i in range(len(job.items))
            ]
            chunk = Chunk(job.start, job.items, [None] * len(job.items), failures)
            result_size = 0
        else:
            _, retries, elapsed, ran = message
            failures_blob = worker.outbox.recv_bytes()
            values_blob = worker.outbox.recv_bytes()
            chunk = unpack(job.start, job.items, ran, failures_blob, values_blob, retries, elapsed)
            result_size = message_size(values_blob)
        chunk.output, worker.output = worker.output, []
        return Done(worker, job, chunk, result_size)

    def on_exit(self, worker: ProcessWorker) -> Died:
        """The worker's pipe hung up: reap it, replace it, report the job it had."""
        try:
            exitcode = worker.proc.wait(timeout=TERMINATE_GRACE)
        except subprocess.TimeoutExpired:  # it closed its pipe yet lives on: not usable
            worker.proc.kill()
            exitcode = worker.proc.wait()
        forked = isinstance(worker.proc, ForkedProcess)
        if forked and self.zygote is not None and not self.zygote.alive:
            self.drop_zygote()
        for stream, text in worker.output:  # what the job printed before it died
            write_out(stream, text)
        worker.output = []
        self.retire(worker)
        if not worker.ready and not (forked and worker.proc.pid is None):  # never forked
            self.startup_failures += 1
            if self.startup_failures >= 3:
                raise WorkerStartupError(
                    f"worker processes keep exiting before they are ready (pid {worker.ident} "
                    f"{describe_exit(exitcode)}); see their output above"
                )
        return worker.died(exitcode)  # its slot, kept on release, names the item it ran

    def retire(self, worker: ProcessWorker) -> None:
        """Drop a worker that is gone or being stopped, and start its replacement."""
        worker.release()
        if worker.ident is not None:  # reaped, unless stopping: ``_stop_processes`` sweeps again
            sweep(worker.ident)
        self.workers.remove(worker)
        if not self.closed:
            self.workers.append(self.spawn())

    def stop(self, worker: ProcessWorker) -> None:
        worker.proc.kill()
        worker.proc.wait()
        self.retire(worker)

    def end(self, clean: bool) -> None:
        if self.zygote is not None:
            self.zygote.preload()
        if clean:
            return
        busy = [worker for worker in self.workers if worker.jobs]
        for worker in busy:
            worker.proc.send_signal(signal.SIGTERM)
            self.retire(worker)
        _stop_processes([worker.proc for worker in busy], TERMINATE_GRACE / 2)

    def close(self, kill: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        workers, self.workers = self.workers, []
        self._stop_all(workers, kill)
        if self.zygote is not None:  # last: it reports how the workers above exited
            self.zygote.close()

    def _stop_all(self, workers: list[ProcessWorker], kill: bool = False) -> None:
        """Stop ``workers``: an idle one reads the end of its task pipe and exits, after what it
        still sends is delivered; a busy one (or all, with ``kill``) gets SIGTERM."""
        for worker in workers:
            if kill or worker.jobs:
                worker.proc.send_signal(signal.SIGTERM)
            worker.inbox.close()
        deadline = time.monotonic() + TERMINATE_GRACE
        for worker in workers:
            if not (kill or worker.jobs):
                self.drain(worker, deadline)
            if not worker.ready:
                worker.proc.kill()  # still booting: it has nothing to say and nothing to finish
            worker.release()
        _stop_processes([worker.proc for worker in workers], TERMINATE_GRACE)

    def poll_ready(self) -> None:
        for worker in self.workers:
            try:
                while not worker.ready and worker.outbox.poll(0):
                    self.receive(worker)  # idle: only "ready", printed lines and log records come
            except (EOFError, OSError):
                pass  # it died while booting: the next batch's wait() sees the hang-up

    def drain(self, worker: ProcessWorker, deadline: float) -> None:
        """Deliver what an idle worker still sends (lines printed, log records) until it exits."""
        try:
            # Not ready yet: take only what has arrived (a "ready" makes it worth waiting for).
            while worker.outbox.poll(max(0.0, deadline - time.monotonic()) if worker.ready else 0):
                self.receive(worker)  # idle: only "ready", printed lines and log records come
        except (EOFError, OSError, ValueError, WorkerStartupError):
            pass  # the worker is gone (or our stream is): nothing more to deliver


# The idle process pool of the whole program, and its lock, shared by every ``ProcessBackend``.
_PROGRAM_IDLE: list[Transport] = []
_PROGRAM_LOCK = threading.Lock()


class ProcessBackend(PooledBackend):
    """Runs items in ``workers`` processes; the pool stays warm between batches and nodes.

    With ``program_pool=True`` (the backends ``get_backend`` makes, so every ``backend="process"``
    by name) all such backends share one warm pool, resized to each batch's ``workers`` when it is
    leased (``ProcessPool.resize``): nodes asking for 2, 3, then 4 workers leave one pool (and its
    zygote) alive, never one per worker count, and a batch never runs more workers than it asked
    for. A pool whose per-worker thread limits would change (fewer workers than CPUs give each
    worker more BLAS threads) is replaced instead. A ``ProcessBackend(...)`` built by hand keeps a
    pool of its own, closed with it. A second batch running at the same time, from another
    thread, gets a pool of its own, closed after it.
    """

    name = "process"
    caps_memory = os.path.exists("/proc/self/statm")  # Linux: where a worker's RSS can be read

    def __init__(self, workers: int | None = None, *, program_pool: bool = False) -> None:
        super().__init__(workers)
        cpus = default_workers()
        if self.workers > WORKERS_PER_CPU * cpus:
            log.warning(
                "batchcore: workers=%d is far above the %d CPU%s this process may use: CPU-bound "
                "items gain nothing past one process per CPU, and each worker costs a start and "
                "its own memory (a batch starts no more workers than it has items)",
                self.workers,
                cpus,
                "" if cpus == 1 else "s",
            )
        if program_pool:
            self._idle = _PROGRAM_IDLE
            self._lock = _PROGRAM_LOCK

    def make_pool(self, imports: Sequence[str] = (), size: int | None = None) -> ProcessPool:
        return ProcessPool(self.workers if size is None else size, imports, self.workers)

    def fit(self, pool: Transport, size: int, imports: Sequence[str]) -> Transport:
        """The idle pool as it is when it has between ``size`` (what the batch needs) and
        ``workers`` (what it asked for) workers; else grown to ``size`` or shrunk to
        ``workers``. Replaced when its workers' thread limits are not this backend's."""
        assert isinstance(pool, ProcessPool)
        if not pool.fits(self.workers):
            pool.close()
            return self.make_pool(imports, size)
        if not size <= pool.size <= self.workers:
            pool.resize(size if pool.size < size else self.workers)
        return pool

    def map(
        self,
        task: Task,
        items: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        fail_fast: bool = True,
        max_memory: int | None = None,
    ) -> Iterator[Chunk]:
        """``PooledBackend.map``; a worker holding more than ``max_memory`` bytes is stopped."""
        pool = self._lease(size=self.pool_size(known_length(items)))
        assert isinstance(pool, ProcessPool)
        pool.max_memory = max_memory
        try:
            yield from OrderedRun(pool, task, items, chunksize, timeout, fail_fast)
        finally:
            pool.max_memory = None
            self._give_back(pool)
