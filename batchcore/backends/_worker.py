"""The worker process of the process backend: a fresh interpreter serving jobs over two pipes.

Protocol (each message is one or more ``Connection`` frames of pickled data)::

    parent -> worker   hello {sys_path}
                       ("run", batch, has_task, start, first_attempt, fail_fast, track_time,
                        log_levels)  [task]  items
    worker -> parent   ("ready", pid) | ("startup_error", text) | ("setup_error", text)
                       | ("items_error", text) | ("done", retries, elapsed, ran)  failures  values
                       | ("log", record)  at any time, from any thread of the worker

The worker ignores SIGINT (the parent owns Ctrl-C), turns SIGTERM into ``SystemExit`` so cleanup
code runs, and exits by itself when the parent dies (a thread waits for the task pipe to hang up).
It records the item and attempt it is running in a shared-memory ``SlotStruct`` that the parent
reads to charge crashes and timeouts to the right item. Log records reach the parent's handlers:
the worker's loggers take the levels the parent's have (sent with each batch), and a handler on
its root logger sends every record that passes them up the result pipe (``forward_record``).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import pickle
import select
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from ..errors import RemoteItemError, SerializationError
from ..pickling import dumps, loads
from .base import Chunk, Failure, Task, run_chunk

SLOT_SIZE = 64
PARENT_GONE_EXIT = 70


class SlotStruct(ctypes.Structure):
    """The shared-memory twin of ``tasks.Slot``."""

    _fields_ = [("index", ctypes.c_int64), ("attempt", ctypes.c_int64), ("started", ctypes.c_int64)]


def _exit_on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _watch_parent(fd: int) -> None:
    """Exit at once when every writer of the task pipe is gone: the parent died or shut us down."""
    poller = select.poll()
    poller.register(fd, 0)  # no events requested: poll still reports hang-up and errors
    while True:
        for _, event in poller.poll():
            if event & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                os._exit(PARENT_GONE_EXIT)


# The main thread's results and any thread's log records share the result pipe: one at a time.
_SEND_LOCK = threading.Lock()


class LogForwarder(logging.Handler):
    """Sends each record that reaches the worker's root logger to the parent (``record_blob``)."""

    def __init__(self, outbox: Connection) -> None:
        super().__init__()
        self.outbox = outbox
        self.busy = threading.local()  # a record logged while sending one is dropped, not looped

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self.busy, "on", False):
            return
        self.busy.on = True
        try:
            blob = record_blob(record)
            with _SEND_LOCK:
                self.outbox.send_bytes(blob)
        except Exception:
            self.handleError(record)
        finally:
            self.busy.on = False


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


def main() -> None:
    task_fd, result_fd, slot_fd = (int(arg) for arg in sys.argv[1:4])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    inbox = Connection(task_fd, writable=False)
    outbox = Connection(result_fd, readable=False)
    threading.Thread(target=_watch_parent, args=(task_fd,), daemon=True).start()
    memory = mmap.mmap(slot_fd, SLOT_SIZE)
    os.close(slot_fd)
    slot = SlotStruct.from_buffer(memory)
    slot.index = -1
    try:
        hello = pickle.loads(inbox.recv_bytes())
        sys.path[:] = hello["sys_path"]
    except EOFError:
        return
    except Exception:
        outbox.send_bytes(pickle.dumps(("startup_error", traceback.format_exc())))
        return
    logging.getLogger().addHandler(LogForwarder(outbox))
    with _SEND_LOCK:
        outbox.send_bytes(pickle.dumps(("ready", os.getpid())))
    serve(inbox, outbox, slot)


def serve(inbox: Connection, outbox: Connection, slot: Any) -> None:
    """Run jobs until the parent closes the task pipe."""
    task: Task | None = None
    while True:
        try:
            header = pickle.loads(inbox.recv_bytes())
        except EOFError:
            return
        _, _batch, has_task, start, first_attempt, fail_fast, track_time, levels = header
        if levels is not None:
            set_log_levels(levels)
        task_blob = inbox.recv_bytes() if has_task else None
        items_blob = inbox.recv_bytes()
        slot.index = -1
        if task_blob is not None:
            try:
                task = loads(task_blob)
            except Exception:
                task = None
                with _SEND_LOCK:
                    outbox.send_bytes(pickle.dumps(("setup_error", traceback.format_exc())))
                continue
        assert task is not None
        try:
            items = loads(items_blob)
        except Exception:
            with _SEND_LOCK:
                outbox.send_bytes(pickle.dumps(("items_error", traceback.format_exc())))
            continue
        chunk = run_chunk(task, items, start, first_attempt, slot, fail_fast, track_time)
        slot.index = -1
        values_blob, failures_blob = pack(chunk.values, chunk.failures, start)
        done = pickle.dumps(("done", chunk.retries, chunk.elapsed, len(chunk.values)))
        with _SEND_LOCK:
            outbox.send_bytes(done)
            outbox.send_bytes(failures_blob)
            outbox.send_bytes(values_blob)


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


def pack(values: list[Any], failures: list[tuple[int, Any]], start: int) -> tuple[bytes, bytes]:
    """Pickle results and failures; a result that cannot be pickled becomes that item's failure."""
    try:
        values_blob = dumps(values)
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
        values_blob = dumps(values)
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
        values = loads(values_blob)
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
