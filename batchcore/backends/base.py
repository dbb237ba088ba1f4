"""The contract every backend keeps: what it runs (a ``Task`` over items) and what it yields
(``Chunk`` objects, a failed item as a ``Failure``), and ``Backend`` itself.

Every backend, in-process or remote, runs items through ``run_chunk``, which calls the task's
per-item step (for a node, PocketFlow's ``Node._exec`` retry loop) and captures failures the same
way everywhere. The retry counter lives in a ``ContextVar`` (exposed as ``Node.cur_retry``), so
concurrent items never share it. Inside a worker, every batch runs sequentially (``in_worker``), so
nested parallel nodes never oversubscribe the machine.
"""

from __future__ import annotations

import atexit
import os
import time
import traceback
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import check_positive_int

__all__ = [
    "CUR_RETRY",
    "ITEM_STATE",
    "WORKER_ENV",
    "Backend",
    "Chunk",
    "Failure",
    "ItemState",
    "Slot",
    "Task",
    "default_workers",
    "in_worker",
    "mark_worker",
    "run_chunk",
]

# The attempt number (0-based) of the item running in this thread or asyncio task.
CUR_RETRY: ContextVar[int] = ContextVar("batchcore_cur_retry", default=0)


class Task:
    """One unit of work per item: ``call`` runs it (retries included), ``fallback`` rescues it.

    ``max_retries`` and ``wait`` apply when a worker dies or times out on an item: the parent
    retries it on a fresh worker, then calls ``fallback``. ``node`` is the node whose own
    ``Node._exec`` retry loop reports its attempts to the worker's slot (``None`` for other tasks).
    """

    label: str = "task"
    node: Any = None

    @property
    def max_retries(self) -> int:
        return 1

    @property
    def wait(self) -> float:
        return 0.0

    def call(self, item: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.call")

    def fallback(self, item: Any, exc: Exception) -> Any:
        raise exc


class Slot:
    """Where a worker records the item and attempt it is running (read for timeouts and crashes)."""

    __slots__ = ("attempt", "index", "started")

    def __init__(self) -> None:
        self.index = -1
        self.attempt = 0
        self.started = 0


class ItemState:
    """What ``run_chunk`` tells the task's ``Node._exec`` about the item it is running."""

    __slots__ = ("first_attempt", "node", "slot", "track_time")

    def __init__(self, node: Any, slot: Any, track_time: bool, first_attempt: int) -> None:
        self.node = node
        self.slot = slot
        self.track_time = track_time
        self.first_attempt = first_attempt

    def record(self, attempt: int) -> None:
        """Note in the slot that ``attempt`` starts now (a watcher charges a crash to it)."""
        if self.track_time:
            self.slot.started = 0  # first, so a reader never pairs a new attempt with an old time
            self.slot.attempt = attempt
            self.slot.started = time.monotonic_ns()
        else:
            self.slot.attempt = attempt


# Set by run_chunk for the duration of a chunk; read by Node._exec when the node is the task's.
ITEM_STATE: ContextVar[ItemState | None] = ContextVar("batchcore_item_state", default=None)


@dataclass(slots=True)
class Failure:
    """An item that failed after its retries: the exception, its traceback text, where it ran."""

    exception: BaseException
    traceback: str
    attempts: int
    remote: bool = False

    @classmethod
    def capture(cls, exc: BaseException, attempts: int) -> Failure:
        text = "".join(traceback.format_exception(exc))
        return cls(exc, text, attempts)


@dataclass(slots=True)
class Chunk:
    """Consecutive items ``start, start+1, ...`` and what running them gave, in input order.

    ``values[i]`` is the result of ``items[i]`` (``None`` where ``failures`` lists offset ``i``).
    ``values`` is shorter than ``items`` when a fail-fast run stopped at a failure. ``output``
    is what the items printed in a worker, ``(stream, whole lines)``, for the caller to write
    when the chunk's turn comes (so a parallel run prints in input order, as a sequential one).
    """

    start: int
    items: list[Any]
    values: list[Any]
    failures: list[tuple[int, Failure]] = field(default_factory=list)
    retries: int = 0
    elapsed: float = 0.0
    output: list[tuple[str, str]] = field(default_factory=list)  # streams.Output


def run_chunk(
    task: Task,
    items: list[Any],
    start: int,
    first_attempt: int = 0,
    slot: Any = None,
    fail_fast: bool = True,
    track_time: bool = False,
) -> Chunk:
    """Run ``task`` over ``items`` in order, capturing each item's failure instead of raising it.

    The item index, attempt and start time go to ``slot`` (the node's retry loop updates the
    attempt), so a watcher can tell which item a dead or stuck worker was on.
    """
    if slot is None:
        slot = Slot()
    values: list[Any] = []
    failures: list[tuple[int, Failure]] = []
    retries = 0
    call = task.call
    token = ITEM_STATE.set(ItemState(task.node, slot, track_time, first_attempt))
    began = time.perf_counter()
    try:
        for offset, item in enumerate(items):
            if track_time:
                slot.started = 0  # first, so a reader never pairs a new index with an old time
            slot.index = start + offset
            slot.attempt = first_attempt
            if track_time:
                slot.started = time.monotonic_ns()
            try:
                value = call(item)
            except Exception as exc:
                attempts = slot.attempt - first_attempt + 1
                failures.append((offset, Failure.capture(exc, attempts)))
                retries += attempts - 1
                values.append(None)
                if fail_fast:
                    break
                continue
            retries += slot.attempt - first_attempt
            values.append(value)
    finally:
        ITEM_STATE.reset(token)
    slot.started = 0
    return Chunk(start, items, values, failures, retries, time.perf_counter() - began)


# --- where batches run ------------------------------------------------------------------------

_IN_WORKER: ContextVar[bool] = ContextVar("batchcore_in_worker", default=False)
WORKER_ENV = "BATCHCORE_WORKER"


def in_worker() -> bool:
    """True inside a backend worker (thread or process), where batches run sequentially."""
    return _IN_WORKER.get() or os.environ.get(WORKER_ENV) == "1"


@contextmanager
def mark_worker() -> Iterator[None]:
    """Mark the code in the block as running in a worker (a thread, or a Dask task)."""
    token = _IN_WORKER.set(True)
    try:
        yield
    finally:
        _IN_WORKER.reset(token)


def default_workers() -> int:
    """The CPUs this process may use (affinity-aware on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


# --- the backend --------------------------------------------------------------------------------

# Every backend not yet garbage-collected, closed at exit so no worker outlives the program.
_LIVE: weakref.WeakSet[Backend] = weakref.WeakSet()


class Backend:
    """Runs ``task`` over ``items`` and yields ``Chunk`` objects covering every item, in order.

    Contract for implementations:
    - consume ``items`` lazily, keeping a bounded number of chunks in flight;
    - yield chunks in input order, each item exactly once (a failed item is a ``Failure``);
    - with ``fail_fast``, stop starting new items after the first failure;
    - when the generator is closed early, cancel or stop the work still in flight;
    - ``close()`` releases every worker; a backend is also a context manager.
    """

    name: ClassVar[str] = ""
    parallel: ClassVar[bool] = True  # False only for sequential: BatchFlow then shares `shared`
    caps_memory: ClassVar[bool] = False  # True: ``map`` takes ``max_memory=`` bytes per worker

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None:
            check_positive_int("workers", workers)
        self.workers = workers or default_workers()
        _LIVE.add(self)
        # Moved to the end of the exit handlers on every new backend, so it runs before those of
        # libraries imported earlier (Dask closes its own clusters at exit, after ours close).
        atexit.unregister(_close_live_backends)
        atexit.register(_close_live_backends)

    def map(
        self,
        task: Task,
        items: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        fail_fast: bool = True,
    ) -> Iterator[Chunk]:
        raise NotImplementedError(f"{type(self).__name__}.map")

    def start(self, imports: Sequence[str] = (), items: int | None = None) -> None:
        """Start the workers now instead of at the first batch, without waiting for them.

        ``imports``: modules the coming batch will import in every worker (a hint: a process
        pool that starts now has them imported before its workers fork). ``items``: how many
        items it has, when known: no more workers than that are started."""

    def is_warm(self) -> bool:
        """True when a batch would start at once, its workers already booted."""
        return False

    def close(self) -> None:
        """Release workers; the backend starts new ones if it is used again."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"


def _close_live_backends() -> None:
    for backend in list(_LIVE):
        backend.close()
