"""Running one batch: pick the backend, feed it, collect ordered results, report failures and stats.

Used by ``BatchNode`` (one item per ``exec``) and ``BatchFlow`` (one sub-flow run per params dict).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .backends.base import Failure, Task
from .backends.streams import write_out
from .errors import RemoteTraceback, short_repr
from .options import BatchPlan
from .progress import progress_bar

__all__ = ["BatchStats", "ItemFailure", "run_batch"]


@dataclass
class ItemFailure:
    """An item that failed under ``on_error="collect"``: its index, the item, what it raised."""

    index: int
    item: Any
    exception: BaseException
    traceback: str


@dataclass
class BatchStats:
    """What the last batch of a node did; shared by the flow's copies of the node, so the
    original node object reports the run even when a ``Flow`` ran a copy."""

    backend: str = ""
    reason: str = ""  # why this backend, when batchcore chose it (backend="auto")
    workers: int = 0
    items: int = 0
    failed: int = 0
    retries: int = 0
    seconds: float = 0.0
    failures: list[ItemFailure] = field(default_factory=list)

    def reset(self, backend: str, workers: int, reason: str = "") -> None:
        self.backend = backend
        self.reason = reason
        self.workers = workers
        self.items = 0
        self.failed = 0
        self.retries = 0
        self.seconds = 0.0
        self.failures = []


def raise_failure(failure: Failure, index: int, item: Any, label: str) -> None:
    """Re-raise an item's exception with a note naming the item (and the worker's traceback)."""
    exc = failure.exception
    note = f"batchcore: item {index} ({short_repr(item)}) failed in {label}"
    if failure.attempts > 1:
        note += f" after {failure.attempts} attempts"
    exc.add_note(note)
    if failure.remote and exc.__cause__ is None:
        raise exc from RemoteTraceback(failure.traceback)
    raise exc


def run_batch(owner: Any, task: Task, items: Iterable[Any], plan: BatchPlan) -> list[Any]:
    """Run ``task`` over ``items`` on ``plan.backend``; return results in input order.

    Fail-fast (the default, ``on_error="raise"``) re-raises the first failing item's exception;
    ``on_error="collect"`` leaves failed items out of the result and lists them in
    ``owner.batch_stats.failures``.
    """
    backend = plan.backend
    stats = getattr(owner, "batch_stats", None)
    if not isinstance(stats, BatchStats):
        stats = BatchStats()
    stats.reset(backend.name, backend.workers, plan.reason)
    # A node may weigh its items for the bar (the CSV job counts bytes): progress_units(item).
    units = getattr(owner, "progress_units", None) if plan.progress else None
    total: int | None = None
    if plan.progress and hasattr(items, "__len__"):
        total = sum(units(item) for item in items) if units else len(items)  # type: ignore[arg-type]
    unit = str(getattr(owner, "progress_unit", "item"))
    bar = progress_bar(plan.progress, total, type(owner).__name__, unit)
    results: list[Any] = []
    began = time.perf_counter()
    # Only a backend that caps memory takes max_memory= (``resolve_options`` refused the others).
    memory = {} if plan.max_memory is None else {"max_memory": plan.max_memory}
    chunks = backend.map(
        task,
        items,
        chunksize=plan.chunksize,
        timeout=plan.timeout,
        fail_fast=plan.fail_fast,
        **memory,
    )
    try:
        for chunk in chunks:
            for stream, text in chunk.output:
                write_out(stream, text)
            stats.retries += chunk.retries
            if chunk.failures:
                failed = set()
                for offset, failure in chunk.failures:
                    index = chunk.start + offset
                    item = chunk.items[offset]
                    if plan.fail_fast:
                        raise_failure(failure, index, item, task.label)
                    failed.add(offset)
                    exc = failure.exception
                    stats.failures.append(ItemFailure(index, item, exc, failure.traceback))
                stats.failed += len(failed)
                results.extend(v for offset, v in enumerate(chunk.values) if offset not in failed)
            else:
                results.extend(chunk.values)
            stats.items += len(chunk.values)
            if units is not None:
                bar.update(sum(units(item) for item in chunk.items[: len(chunk.values)]))
            else:
                bar.update(len(chunk.values))
    except BaseException:
        close_source(items)
        raise
    finally:
        close = getattr(chunks, "close", None)  # a generator: stops the backend's work in flight
        if close is not None:
            close()
        bar.close()
        stats.seconds = time.perf_counter() - began
    return results


def close_source(items: Any) -> None:
    """After a failed batch, close a one-shot input (a generator, pandas' chunked reader) so its
    file is released now rather than whenever the garbage collector gets to it."""
    close = getattr(items, "close", None)
    if callable(close) and hasattr(items, "__next__"):
        close()
