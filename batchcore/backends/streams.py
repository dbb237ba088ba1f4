"""Worker output as whole lines: what ``exec`` prints reaches the caller's stdout and stderr intact.

A process worker's ``sys.stdout`` and ``sys.stderr`` are ``LineWriter``s that send each finished
line up the result pipe, so nothing waits in a block buffer that is thrown away when the worker
stops. Worker threads (the thread backend's, a Dask worker's) share their process's streams:
inside ``captured(...)`` a thread's writes are collected as whole lines of its own, so one item
never tears another's. Either way a chunk's lines travel with its results (``Chunk.output``),
and the caller writes them with ``write_out`` when the chunk's turn comes: a parallel run prints
what a sequential one prints, in the same order.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TextIO

__all__ = ["STREAMS", "Output", "LineWriter", "captured", "write_out"]

STREAMS = ("stdout", "stderr")
Output = list[tuple[str, str]]  # what was printed: (stream name, whole lines), in order
PARTIAL_LIMIT = 1 << 16  # characters of an unfinished line kept before it is passed on anyway


class LineWriter(io.TextIOBase):
    """A text stream that hands ``emit`` whole lines only, each thread's unfinished line apart.

    An unfinished line goes out on ``flush()`` (``print(..., flush=True)``, interpreter exit),
    on ``drain()`` (the end of a chunk), or once it grows past ``PARTIAL_LIMIT``.
    """

    def __init__(self, emit: Callable[[str], None], fileno: int | None = None) -> None:
        super().__init__()
        self._emit = emit
        self._fileno = fileno
        self._partial: dict[int, str] = {}
        self._lock = threading.Lock()

    encoding = "utf-8"  # what is written is str, encoded only by the stream it finally reaches
    errors = "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        """The descriptor underneath (what C code and ``faulthandler`` write to directly)."""
        if self._fileno is None:
            raise io.UnsupportedOperation("fileno")
        return self._fileno

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        ident = threading.get_ident()
        with self._lock:
            pending = self._partial.pop(ident, "") + text
            cut = pending.rfind("\n") + 1
            if cut == 0 and len(pending) < PARTIAL_LIMIT:
                self._partial[ident] = pending
                return len(text)
            cut = cut or len(pending)
            if cut < len(pending):
                self._partial[ident] = pending[cut:]
        self._emit(pending[:cut])
        return len(text)

    def flush(self) -> None:
        with self._lock:
            pending = self._partial.pop(threading.get_ident(), "")
        if pending:
            self._emit(pending)

    def drain(self) -> None:
        """Pass on every thread's unfinished line."""
        with self._lock:
            pending = list(self._partial.values())
            self._partial.clear()
        for text in pending:
            self._emit(text)


def write_out(stream: str, text: str) -> None:
    """Write a worker's whole lines to this process's ``sys.stdout`` or ``sys.stderr``, now."""
    target = getattr(sys, stream, None)
    if target is None:  # no console (pythonw, a closed stream): output has nowhere to go
        return
    target.write(text)
    target.flush()


class _Router:
    """Stands in for ``sys.stdout``/``sys.stderr`` while threads route their output: a routing
    thread writes to its own ``LineWriter``, every other thread straight to the stream it wraps."""

    def __init__(self, name: str, target: TextIO) -> None:
        self._name = name
        self._target = target

    def write(self, text: str) -> int:
        writer = _writers().get(self._name)
        if writer is None:
            return self._target.write(text)
        return writer.write(text)

    def flush(self) -> None:
        writer = _writers().get(self._name)
        if writer is not None:
            writer.flush()
        self._target.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, buffer, fileno, isatty...
        return getattr(self._target, name)


_local = threading.local()
_install_lock = threading.Lock()
_installed = 0


def _writers() -> dict[str, LineWriter]:
    writers: dict[str, LineWriter] = getattr(_local, "writers", {})
    return writers


@contextmanager
def captured(output: Output) -> Iterator[None]:
    """Collect this thread's whole lines of stdout and stderr into ``output``.

    ``sys.stdout`` and ``sys.stderr`` are wrapped while any thread captures; other threads'
    writes pass straight through. A stream replaced meanwhile by someone else is left alone.
    """
    global _installed
    with _install_lock:
        if _installed == 0:
            for name in STREAMS:
                current = getattr(sys, name)
                if current is not None and not isinstance(current, _Router):
                    setattr(sys, name, _Router(name, current))
        _installed += 1
    writers = {name: LineWriter(partial(_collect, output, name)) for name in STREAMS}
    outer = _writers()
    _local.writers = writers
    try:
        yield
    finally:
        _local.writers = outer
        for writer in writers.values():
            writer.drain()
        with _install_lock:
            _installed -= 1
            if _installed == 0:
                for name in STREAMS:
                    current = getattr(sys, name)
                    if isinstance(current, _Router):
                        setattr(sys, name, current._target)


def _collect(output: Output, stream: str, text: str) -> None:
    output.append((stream, text))
