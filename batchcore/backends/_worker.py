"""The worker process of the process backend: a fresh interpreter serving jobs over two pipes.

What crosses the pipes, and how, is ``wire.py``. The worker ignores SIGINT (the parent owns
Ctrl-C), turns SIGTERM into ``SystemExit`` so cleanup code runs, and exits by itself when the
parent dies (a thread waits for the task pipe to hang up while an item runs; an idle worker reads
the end of the pipe). A worker that finds its parent gone, at any point, exits quietly: nobody is
left to read a traceback. It records the item and attempt it is running in the shared-memory
slot; a handler on its root logger sends every record that passes the parent's levels up the
result pipe (``LogForwarder``), and its ``sys.stdout``/``sys.stderr`` send whole lines
(``streams.LineWriter``).
"""

from __future__ import annotations

import gc
import logging
import mmap
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from functools import partial
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from .base import Task, run_chunk
from .shm import loads
from .streams import STREAMS, LineWriter
from .wire import SLOT_SIZE, SlotStruct, pack, record_blob, set_log_levels

PARENT_GONE_EXIT = 70


def _exit_on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# True while an item runs: then a hang-up of the task pipe must stop the worker from outside.
_busy = False


def _watch_parent(fd: int) -> None:
    """Exit at once when every writer of the task pipe is gone while an item runs: the parent
    died or stopped us. An idle worker reads the end of the pipe itself and exits cleanly."""
    poller = select.poll()
    poller.register(fd, 0)  # no events requested: poll still reports hang-up and errors
    while not any(
        event & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, event in poller.poll()
    ):
        pass
    # Jobs written before the hang-up may still be read and started: stop the worker then.
    while not _busy:
        time.sleep(0.05)
    os._exit(PARENT_GONE_EXIT)


# Results, log records and printed lines from any thread share the result pipe: one at a time.
_SEND_LOCK = threading.RLock()


def send(outbox: Connection, *blobs: bytes) -> None:
    """Send ``blobs`` as one message; with the parent gone there is nobody to tell: exit quietly."""
    try:
        with _SEND_LOCK:
            for blob in blobs:
                outbox.send_bytes(blob)
    except OSError:
        os._exit(PARENT_GONE_EXIT)


def forward_streams(outbox: Connection) -> list[LineWriter]:
    """Make this worker's ``sys.stdout`` and ``sys.stderr`` send whole lines to the parent."""
    writers = []
    for fd, name in enumerate(STREAMS, start=1):
        writer = LineWriter(partial(send_output, outbox, name), fd)
        setattr(sys, name, writer)
        writers.append(writer)
    return writers


def send_output(outbox: Connection, stream: str, text: str) -> None:
    send(outbox, pickle.dumps(("out", stream, text)))


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
            send(self.outbox, record_blob(record))
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
    writers = forward_streams(outbox)
    try:
        hello = pickle.loads(inbox.recv_bytes())
        sys.path[:] = hello["sys_path"]
    except (EOFError, OSError):
        return
    except Exception:
        send(outbox, pickle.dumps(("startup_error", traceback.format_exc())))
        return
    logging.getLogger().addHandler(LogForwarder(outbox))
    send(outbox, pickle.dumps(("ready",)))
    serve(inbox, outbox, slot, writers)
    # The parent closed the pool: exit without a last garbage collection over every object
    # (the interpreter's exit does one). It walks the whole heap, copying each page a forked
    # worker still shares with its zygote: ~0.15 s on 2 cores, which the parent waits for.
    # Objects in reference cycles are then not finalized at exit, which Python never promises.
    gc.freeze()


def serve(inbox: Connection, outbox: Connection, slot: Any, writers: list[LineWriter]) -> None:
    """Run jobs until the parent closes the task pipe."""
    global _busy
    task: Task | None = None
    while True:
        try:
            header = pickle.loads(inbox.recv_bytes())
        except (EOFError, OSError):
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
                send(outbox, pickle.dumps(("setup_error", traceback.format_exc())))
                continue
        assert task is not None
        try:
            items = loads(items_blob)
        except Exception:
            send(outbox, pickle.dumps(("items_error", traceback.format_exc())))
            continue
        _busy = True
        chunk = run_chunk(task, items, start, first_attempt, slot, fail_fast, track_time)
        _busy = False
        slot.index = -1
        for writer in writers:
            writer.drain()  # a chunk's output arrives before its results
        values_blob, failures_blob = pack(chunk.values, chunk.failures, start, shared=True)
        done = pickle.dumps(("done", chunk.retries, chunk.elapsed, len(chunk.values)))
        send(outbox, done, failures_blob, values_blob)
