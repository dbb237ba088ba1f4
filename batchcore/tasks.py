"""What a backend runs: a task applied to items, with PocketFlow's per-item retry policy.

Every backend, in-process or remote, runs items through ``run_chunk`` so retries, ``wait``,
``exec_fallback`` and failure capture behave the same everywhere. The retry counter lives in a
``ContextVar`` (exposed as ``Node.cur_retry``), so concurrent items never share it.
"""

from __future__ import annotations

import time
import traceback
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Chunk", "Failure", "NodeTask", "Slot", "Task", "attempt_item", "run_chunk"]

# The attempt number (0-based) of the item running in this thread or asyncio task.
CUR_RETRY: ContextVar[int] = ContextVar("batchcore_cur_retry", default=0)


class Task:
    """One unit of work per item: ``call`` is tried ``max_retries`` times, then ``fallback``."""

    max_retries: int = 1
    wait: float = 0.0
    label: str = "task"

    def call(self, item: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.call")

    def fallback(self, item: Any, exc: Exception) -> Any:
        raise exc


class NodeTask(Task):
    """Runs a node's ``exec`` per item, then its ``exec_fallback`` after the last failed attempt."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.max_retries = node.max_retries
        self.wait = node.wait
        self.label = f"{type(node).__name__}.exec"
        self.call = node.exec  # type: ignore[method-assign]  # bound once: this is the hot path
        self.fallback = node.exec_fallback  # type: ignore[method-assign]

    def __getstate__(self) -> dict[str, Any]:
        # Ship the node without its successors (workers run one node, not the rest of the graph)
        # and without a Backend object given as ``backend=`` (workers never use it).
        clone = self.node.__class__.__new__(self.node.__class__)
        clone.__dict__.update(self.node.__dict__)
        clone.successors = {}
        if not isinstance(clone.__dict__.get("backend", ""), (str, type(None))):
            del clone.__dict__["backend"]
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


_NO_SLOT = Slot()


def attempt_item(
    task: Task, item: Any, first_attempt: int = 0, slot: Any = _NO_SLOT, track_time: bool = False
) -> tuple[Any, int]:
    """Run ``task`` on one item with retries; return ``(value, retries)`` or raise the last error.

    ``max_retries=0`` never calls ``exec`` and gives ``None``, exactly like PocketFlow.
    """
    max_retries = task.max_retries
    attempt = first_attempt
    while attempt < max_retries:
        if track_time:
            slot.started = 0  # marks the slot as changing for a concurrent reader
            slot.attempt = attempt
            slot.started = time.monotonic_ns()
        else:
            slot.attempt = attempt
        token = CUR_RETRY.set(attempt)
        try:
            return task.call(item), attempt - first_attempt
        except Exception as exc:
            if attempt == max_retries - 1:
                return task.fallback(item, exc), attempt - first_attempt
            if task.wait > 0:
                time.sleep(task.wait)
        finally:
            CUR_RETRY.reset(token)
        attempt += 1
    return None, 0


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
    ``values`` is shorter than ``items`` when a fail-fast run stopped at a failure.
    """

    start: int
    items: list[Any]
    values: list[Any]
    failures: list[tuple[int, Failure]] = field(default_factory=list)
    retries: int = 0
    elapsed: float = 0.0


def run_chunk(
    task: Task,
    items: list[Any],
    start: int,
    first_attempt: int = 0,
    slot: Any = _NO_SLOT,
    fail_fast: bool = True,
    track_time: bool = False,
) -> Chunk:
    """Run ``task`` over ``items`` in order, capturing each item's failure instead of raising it."""
    values: list[Any] = []
    failures: list[tuple[int, Failure]] = []
    retries = 0
    began = time.perf_counter()
    for offset, item in enumerate(items):
        if track_time:
            slot.started = (
                0  # before the index changes, so a reader never pairs new index, old time
            )
        slot.index = start + offset
        try:
            value, item_retries = attempt_item(task, item, first_attempt, slot, track_time)
        except Exception as exc:
            attempts = max(task.max_retries - first_attempt, 1)
            failures.append((offset, Failure.capture(exc, attempts)))
            retries += attempts - 1
            values.append(None)
            if fail_fast:
                break
            continue
        retries += item_retries
        values.append(value)
    slot.started = 0
    return Chunk(start, items, values, failures, retries, time.perf_counter() - began)
