"""What crosses between the parent and a worker process: the protocol, the slot, results, logs.

Protocol (each message is one or more ``Connection`` frames of pickled data)::

    parent -> worker   hello {sys_path}
                       (has_task, start, first_attempt, fail_fast, track_time, log_levels)
                       [task]  items
    worker -> parent   ("ready",) | ("startup_error", text) | ("setup_error", text)
                       | ("items_error", text) | ("done", retries, elapsed, ran)  failures  values
                       | ("log", record) | ("out", "stdout" or "stderr", whole lines)
                         at any time, from any thread of the worker

The worker records the item and attempt it is running in a shared-memory ``SlotStruct`` that the
parent reads to charge crashes and timeouts to the right item. Results travel as ``pack`` makes
them (a result or error that does not pickle fails its item, not the job); from process
workers, their big buffers (numpy arrays, Arrow tables) go through shared memory (``shm``), as
those of items do. Log records reach the
parent's handlers: the worker's loggers take the levels the parent's have (``log_levels``, sent
with each batch) and every record that passes them is sent up (``record_blob``), to be handled
by the parent's logger of the same name (``forward_record``). The Dask backend uses ``pack`` and
``unpack`` as well.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
from typing import Any

from ..errors import RemoteItemError, SerializationError
from ..pickling import dumps, dumps_checked, loads
from . import shm
from .base import Chunk, Failure, Task

__all__ = [
    "SLOT_SIZE",
    "SlotStruct",
    "forward_record",
    "log_levels",
    "pack",
    "pickle_task",
    "record_blob",
    "set_log_levels",
    "unpack",
]

SLOT_SIZE = 64


class SlotStruct(ctypes.Structure):
    """The shared-memory twin of ``base.Slot``."""

    _fields_ = [("index", ctypes.c_int64), ("attempt", ctypes.c_int64), ("started", ctypes.c_int64)]


def record_blob(record: logging.LogRecord) -> bytes:
    """``("log", record)`` pickled, the record prepared as QueueHandler does (args merged into the
    message, exc_info as text); attributes that do not pickle (extras) are sent as their repr."""
    attrs = dict(record.__dict__)
    attrs["msg"] = record.getMessage()
    attrs["args"] = None
    if record.exc_info:
        attrs["exc_text"] = record.exc_text or logging.Formatter().formatException(record.exc_info)
    attrs["exc_info"] = None
    attrs["processName"] = f"batchcore-worker-{os.getpid()}"
    try:
        return pickle.dumps(("log", logging.makeLogRecord(attrs)))
    except Exception:  # rare: check each attribute only now, not for every record
        for key, value in list(attrs.items()):
            try:
                pickle.dumps(value)
            except Exception:
                attrs[key] = repr(value)
        return pickle.dumps(("log", logging.makeLogRecord(attrs)))


def set_log_levels(levels: dict[str, int]) -> None:
    """Give this worker's loggers the levels of the parent's (``""`` is the root logger)."""
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def log_levels() -> dict[str, int]:
    """The parent's side: the levels set on its loggers (``""``: root), for the workers."""
    levels = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


def forward_record(record: logging.LogRecord) -> None:
    """The parent's side: hand a worker's record to the parent's logger of the same name."""
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def pickle_task(task: Task, hint: str) -> bytes:
    """Pickle ``task`` for workers; an unpicklable node is named by its class and attribute."""
    name = type(task.node).__name__ if task.node is not None else task.label
    return dumps_checked(task, "node", name, hint, inspect=task.node)


def portable(exc: BaseException, text: str) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a ``RemoteItemError`` describing it."""
    try:
        loads(dumps(exc))
        return exc
    except Exception:
        try:
            message = str(exc)
        except Exception:
            message = "<str() failed>"
        return RemoteItemError(f"{type(exc).__module__}.{type(exc).__qualname__}", message, text)


def _seal_shared(obj: Any) -> bytes:
    return shm.seal(shm.split(obj))


def pack(
    values: list[Any], failures: list[tuple[int, Any]], start: int, shared: bool = False
) -> tuple[bytes, bytes]:
    """Pickle results and failures; a result that cannot be pickled becomes that item's failure.
    ``shared``: in a process worker, big buffers of results go to the parent through ``shm``."""
    encode = _seal_shared if shared else dumps
    try:
        values_blob = encode(values)
    except Exception:
        values = list(values)
        failed = {offset for offset, _ in failures}
        for offset, value in enumerate(values):
            if offset in failed:
                continue
            try:
                dumps(value)
            except Exception as exc:
                values[offset] = None
                error = SerializationError(
                    "result",
                    f"the result of item {start + offset} "
                    f"({type(value).__module__}.{type(value).__qualname__}) cannot be pickled to "
                    f"send it back from the worker: {type(exc).__name__}: {exc}. Return plain data "
                    "(numbers, strings, paths, bytes, arrays) instead",
                )
                failures.append((offset, Failure.capture(error, 1)))
        failures.sort(key=lambda pair: pair[0])
        values_blob = encode(values)
    records = [
        (offset, portable(f.exception, f.traceback), f.traceback, f.attempts)
        for offset, f in failures
    ]
    return values_blob, dumps(records)


def unpack(
    start: int,
    items: list[Any],
    ran: int,
    failures_blob: bytes,
    values_blob: bytes,
    retries: int,
    elapsed: float,
) -> Chunk:
    """The parent's half of ``pack``: a ``Chunk``; what cannot be unpickled fails its items."""
    try:
        records = loads(failures_blob)
        failures = [(o, Failure(exc, text, n, remote=True)) for o, exc, text, n in records]
    except Exception as exc:
        error = SerializationError(
            "result", f"the errors of items {start}.. could not be unpickled: {exc}"
        )
        failures = [(0, Failure.capture(error, 1))]
    try:
        values = shm.loads(values_blob)
    except Exception as exc:
        failed = {offset for offset, _ in failures}
        error = SerializationError(
            "result",
            f"the results of items {start}..{start + ran - 1} could not be unpickled in the "
            f"parent: {type(exc).__name__}: {exc}",
        )
        values = [None] * ran
        failures += [(o, Failure.capture(error, 1)) for o in range(ran) if o not in failed]
        failures.sort(key=lambda pair: pair[0])
    return Chunk(start, items, values, failures, retries, elapsed)
