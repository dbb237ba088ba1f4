"""Running one batch: pick the backend, feed it, collect ordered results, report failures and stats.

Used by ``BatchNode`` (one item per ``exec``) and ``BatchFlow`` (one sub-flow run per params dict).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from .backends.base import Failure, Task
from .backends.streams import write_out
from .errors import RemoteTraceback, short_repr
from .journal import KEY_BYTES, CheckpointError, Journal, journal_path, keyed
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
    resumed: int = 0  # items whose results came from the checkpoint journal, not a run
    checkpoint: str = ""  # the journal's path, when the batch had one

    def reset(self, backend: str, workers: int, reason: str = "") -> None:
        self.backend = backend
        self.reason = reason
        self.workers = workers
        self.resumed = 0
        self.checkpoint = ""
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
    resume: _Resume | None = None
    if plan.checkpoint is not None:
        refused = getattr(owner, "checkpoint_refused", None)
        if refused:  # its results could not be replayed from a journal
            raise CheckpointError(f"{type(owner).__name__} cannot take checkpoint=: {refused}")
        resume = _Resume(open_journal(plan.checkpoint, owner), owner, items)
        stats.checkpoint = str(resume.journal.path)
        source, items = items, resume.pending()
    # A node may weigh its items for the bar (the CSV job counts bytes): progress_units(item).
    units = getattr(owner, "progress_units", None) if plan.progress else None
    total: int | None = None
    if plan.progress and hasattr(items, "__len__"):
        total = sum(units(item) for item in items) if units else len(items)  # type: ignore[arg-type]
    unit = str(getattr(owner, "progress_unit", "item"))
    label = str(getattr(owner, "progress_label", "") or type(owner).__name__)  # what it reads
    bar = progress_bar(plan.progress, total, label, unit)
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
            failures = dict(chunk.failures)
            if resume is not None:  # recorded in item order, a failure as one (rerun later)
                positions = resume.take(results, chunk.values, failures)
            else:
                results.extend(v for offset, v in enumerate(chunk.values) if offset not in failures)
                positions = {}
            for offset, failure in sorted(failures.items()):
                index = positions.get(offset, chunk.start + offset)
                item = chunk.items[offset]
                if plan.fail_fast:
                    raise_failure(failure, index, item, task.label)
                exc = failure.exception
                stats.failures.append(ItemFailure(index, item, exc, failure.traceback))
            stats.failed += len(failures)
            stats.items += len(chunk.values)
            if units is not None:
                bar.update(sum(units(item) for item in chunk.items[: len(chunk.values)]))
            else:
                bar.update(len(chunk.values))
        if resume is not None:
            resume.flush(results)
            stats.resumed = resume.resumed
            stats.items += resume.resumed
    except BaseException:
        close_source(items)
        if resume is not None:
            close_source(source)
        raise
    finally:
        close = getattr(chunks, "close", None)  # a generator: stops the backend's work in flight
        if close is not None:
            close()
        bar.close()
        stats.seconds = time.perf_counter() - began
        if resume is not None:
            resume.journal.close()  # commits what finished, also on a failure or Ctrl-C
    return results


def open_journal(checkpoint: str | os.PathLike[str] | Journal, owner: Any) -> Journal:
    """The batch's journal, opened with ``owner``'s fingerprint: its class, ``checkpoint_version``
    and, if it has one, what its ``checkpoint_fingerprint()`` returns. A folder holds one journal
    per node class (so one ``use_backend(checkpoint=FOLDER)`` serves every batch in its block)."""
    name = f"{type(owner).__module__}.{type(owner).__qualname__}"
    fingerprint = f"{name} checkpoint_version={getattr(owner, 'checkpoint_version', 1)!r}"
    settings = getattr(owner, "checkpoint_fingerprint", None)
    if callable(settings):  # the node's own settings that change its results
        fingerprint += f" {settings()}"
    if isinstance(checkpoint, Journal):
        return checkpoint.open(fingerprint)
    return Journal(journal_path(checkpoint, owner)).open(fingerprint)


class _Resume:
    """A checkpointed batch: the items the journal has done wait in line between the others,
    which the backend runs, so results come out in input order; each result run is recorded."""

    def __init__(self, journal: Journal, owner: Any, items: Iterable[Any]) -> None:
        self.journal = journal
        self.owner = owner
        self.items = items
        # In input order, runs of consecutive items: (True, their stored results, position of
        # the first) or (False, their keys end to end, position of the first). The feeder
        # (maybe the backend's thread) appends, the parent's loop takes; ``taken``: of the first.
        self.runs: deque[tuple[bool, Any, int]] = deque()
        self.taken = 0
        self.resumed = 0

    def pending(self) -> Iterator[Any]:
        """The items not done yet, in order; the done ones are queued with their results. A
        node's ``checkpoint_usable(item, result)``, if it has one, can turn a stored result down
        (its output files are gone, say): that item runs again. Its ``checkpoint_recover(item)``
        can give the result of an item the journal lacks from the item's own output (written
        just before a kill, not yet recorded); ``None`` runs it."""
        return chain.from_iterable(self._pending_groups())  # no Python frame per item

    def _pending_groups(self) -> Iterator[list[Any]]:
        """``pending``'s items a group at a time, each queued after the runs it follows."""
        position = 0
        usable = getattr(self.owner, "checkpoint_usable", None)
        recover = getattr(self.owner, "checkpoint_recover", None)
        for items, keys in keyed(self.items, self.owner):
            found = self.journal.done(keys)
            if recover is not None and len(found) < len(items):
                for offset, item in enumerate(items):
                    if offset not in found and (result := recover(item)) is not None:
                        found[offset] = result
                found = dict(sorted(found.items()))  # in input order, as ``done`` gives them
            if not found:  # a fresh run's every group: one run, no per-item work
                self.runs.append((False, keys, position))
                position += len(items)
                yield items
                continue
            if usable is None and len(found) == len(items):  # a rerun's every group: all done
                self.runs.append((True, list(found.values()), position))
                position += len(items)
                continue
            done = [
                offset in found and (usable is None or usable(item, found[offset]))
                for offset, item in enumerate(items)
            ]
            runs: list[tuple[bool, Any, int]] = []  # made whole before they are queued
            todo = []
            start = 0
            for stop in range(1, len(items) + 1):
                if stop < len(items) and done[stop] == done[start]:
                    continue
                if done[start]:
                    runs.append((True, [found[at] for at in range(start, stop)], position + start))
                else:
                    runs.append(
                        (False, keys[start * KEY_BYTES : stop * KEY_BYTES], position + start)
                    )
                    todo += items[start:stop]
                start = stop
            position += len(items)
            self.runs.extend(runs)
            yield todo

    def take(self, results: list[Any], values: list[Any], failed: Container[int]) -> dict[int, int]:
        """A chunk's results, for the next pending items: recorded (those at offsets in
        ``failed`` as failures) and appended to ``results`` after the done results queued
        before each. Returns the failed ones' positions in the input, by offset."""
        if values and not failed:  # the usual chunk: all done, inside the run at the front
            done, keys, first = self.runs[0]
            stop = self.taken + len(values)
            if not done and stop * KEY_BYTES < len(keys):
                self.journal.record_run(first, keys, self.taken, values)
                results += values
                self.taken = stop
                return {}
        positions: dict[int, int] = {}
        offset = 0
        while offset < len(values):
            self.flush(results)
            _, keys, first = self.runs[0]
            size = len(keys) // KEY_BYTES
            count = min(len(values) - offset, size - self.taken)
            span = range(offset, offset + count)
            if not failed or not any(index in failed for index in span):
                chunk = values if count == len(values) else values[offset : offset + count]
                self.journal.record_run(first, keys, self.taken, chunk)
                results += chunk
            else:
                records = []
                at = first + self.taken
                for step, index in enumerate(span):
                    key = keys[
                        (self.taken + step) * KEY_BYTES : (self.taken + step + 1) * KEY_BYTES
                    ]
                    if index in failed:
                        records.append((at + step, key, False, None))
                        positions[index] = at + step
                    else:
                        records.append((at + step, key, True, values[index]))
                        results.append(values[index])
                self.journal.record(records)
            self.taken += count
            offset += count
            if self.taken == size:
                self.runs.popleft()
                self.taken = 0
        return positions

    def flush(self, results: list[Any]) -> None:
        """Move the done results at the front of the line to ``results``."""
        while self.runs and self.runs[0][0]:
            done = self.runs.popleft()[1]
            results += done
            self.resumed += len(done)


def close_source(items: Any) -> None:
    """After a failed batch, close a one-shot input (a generator, pandas' chunked reader) so its
    file is released now rather than whenever the garbage collector gets to it."""
    close = getattr(items, "close", None)
    if callable(close) and hasattr(items, "__next__"):
        close()
