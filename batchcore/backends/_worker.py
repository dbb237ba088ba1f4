"""The worker process of the process backend: a fresh interpreter serving jobs over two pipes.

What crosses the pipes, and how, is ``wire.py``. The worker ignores SIGINT (the parent owns
Ctrl-C), turns SIGTERM into ``SystemExit`` so cleanup code runs, and exits by itself when the
parent dies (a thread waits for the task pipe to hang up). It records the item and attempt it is
running in the shared-memory slot, and a handler on its root logger sends every record that
passes the parent's levels up the result pipe (``LogForwarder``).
"""

from __future__ import annotations

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

from ..pickling import loads
from .base import Task, run_chunk
from .wire import SLOT_SIZE, SlotStruct, pack, record_blob, set_log_levels

PARENT_GONE_EXIT = 70


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
        outbox.send_bytes(pickle.dumps(("ready",)))
    serve(inbox, outbox, slot)


def serve(inbox: Connection, outbox: Connection, slot: Any) -> None:
    """Run jobs until the parent closes the task pipe."""
    task: Task | None = None
    while True:
        try:
            header = pickle.loads(inbox.recv_bytes())
        except EOFError:
            return
        has_task, start, first_attempt, fail_fast, track_time, levels = header
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
