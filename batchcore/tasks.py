"""What a backend runs: a task applied to items, with PocketFlow's per-item retry policy.

Every backend, in-process or remote, runs items through ``run_chunk``, which calls the node's
own per-item step (PocketFlow's ``Node._exec`` retry loop) and captures failures the same way
everywhere. The retry counter lives in a ``ContextVar`` (exposed as ``Node.cur_retry``), so
concurrent items never share it.
"""

from __future__ import annotations

import time
import traceback
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CUR_RETRY", "ITEM_STATE", "Chunk", "Failure", "NodeTask", "Slot", "Task", "run_chunk"]

# The attempt number (0-based) of the item running in this thread or asyncio task.
CUR_RETRY: ContextVar[int] = ContextVar("batchcore_cur_retry", default=0)


class Task:
    """One unit of work per item: ``call`` runs it (retries included), ``fallback`` rescues it.

    ``max_retries`` and ``wait`` apply when a worker dies or times out on an item: the parent
    retries it on a fresh worker, then calls ``fallback``. ``owner`` is the node whose own
    ``Node._exec`` retry loop reports its attempts to the worker's slot.
    """

    label: str = "task"
    owner: Any = None

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


class NodeTask(Task):
    """A BatchNode's per-item step: ``super(BatchNode, node)._exec(item)``, as in PocketFlow, so
    mixins that wrap ``_exec`` per item keep working; that is ``Node._exec``'s retry loop."""

    def __init__(self, node: Any) -> None:
        from .nodes import BatchNode

        self.node = node
        self.owner = node
        self.label = f"{type(node).__name__}.exec"
        self.call = super(BatchNode, node)._exec  # type: ignore[method-assign,misc]

    @property
    def max_retries(self) -> int:
        return int(self.node.max_retries)

    @property
    def wait(self) -> float:
        return float(self.node.wait)

    def fallback(self, item: Any, exc: Exception) -> Any:
        return self.node.exec_fallback(item, exc)

    def __getstate__(self) -> dict[str, Any]:
        # Ship the node without its successors (workers run one node, not the rest of the graph)
        # and without a Backend object given as ``backend=`` (workers never use it).
        clone = self.node.__class__.__new__(self.node.__class__)
        clone.__dict__.update(self.node.__dict__)
        clone.successors = {}
        clone.__dict__.pop("_batch_options", None)
        return {"node": clone}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["node"])  # type: ignore[misc]


class Slot:
    """Where a worker records the item and attempt it is running (read for timeouts and crashes)."""

    __slots__ = ("attempt", "index", "started")

    def __init__(self) -> None:
        self.index = -1
        self.attempt = 0
        self.started = 0


class ItemState:
    """What ``run_chunk`` tells the owner's ``Node._exec`` about the item it is running."""

    __slots__ = ("first_attempt", "owner", "slot", "track_time")

    def __init__(self, owner: Any, slot: Any, track_time: bool, first_attempt: int) -> None:
        self.owner = owner
        self.slot = slot
        self.track_time = track_time
        self.first_attempt = first_attempt


# Set by run_chunk for the duration of a chunk; read by Node._exec when the node is the owner.
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

    The item index, attempt and start time go to ``slot`` (the owner's retry loop updates the
    attempt), so a watcher can tell which item a dead or stuck worker was on.
    """
    if slot is None:
        slot = Slot()
    values: list[Any] = []
    failures: list[tuple[int, Failure]] = []
    retries = 0
    call = task.call
    token = ITEM_STATE.set(ItemState(task.owner, slot, track_time, first_attempt))
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
