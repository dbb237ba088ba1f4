"""Exceptions raised by batchcore, each under a familiar built-in base so a plain ``except`` works.

::

    BatchcoreError(Exception)
    ├── WorkerCrashedError(RuntimeError)   a worker process died while running an item
    ├── ItemTimeoutError(TimeoutError)     an item ran longer than ``timeout=`` seconds
    ├── ItemMemoryError(MemoryError)       a worker grew past ``max_memory=`` while running an item
    ├── RemoteItemError                    an item raised an exception that could not be sent back
    ├── SerializationError(PicklingError)  a node, item, result or shared value could not be pickled
    └── WorkerStartupError(RuntimeError)   a worker process could not start

An exception raised by the user's ``exec`` keeps its own type: batchcore adds a note naming the
item (``exc.__notes__``) and, for remote workers, chains the worker's traceback as ``__cause__``.
"""

from __future__ import annotations

import pickle
import signal
from typing import Any

__all__ = [
    "BatchcoreError",
    "ItemMemoryError",
    "ItemTimeoutError",
    "RemoteItemError",
    "RemoteTraceback",
    "SerializationError",
    "WorkerCrashedError",
    "WorkerStartupError",
    "check_positive_int",
    "format_bytes",
    "short_repr",
]


def short_repr(value: Any, limit: int = 80) -> str:
    """A one-line ``repr(value)`` of at most ``limit`` characters, for error messages.

    Arrays and frames (anything with a ``shape``) are described by type and shape instead of a
    multi-line table; a ``__repr__`` that fails never hides the real error.
    """
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple) and not isinstance(value, type):
        return f"<{type(value).__name__} shape={shape}>"
    try:
        text = " ".join(repr(value).split())
    except Exception as exc:
        text = f"<{type(value).__name__} object (repr failed: {type(exc).__name__})>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def check_positive_int(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is an int, ``ValueError`` unless it is >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def format_bytes(size: int) -> str:
    """``size`` bytes for a message, in the largest binary unit that keeps it >= 1: ``1.5 GiB``."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "bytes":
        return f"{size} bytes"
    return f"{value:.1f} {unit}".replace(".0 ", " ")


class BatchcoreError(Exception):
    """Base class of every error batchcore raises itself."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; chained as ``__cause__`` of a re-raised error."""

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return "\n\nTraceback in the worker:\n" + self.traceback_text


def count_attempts(attempts: int) -> str:
    """``1 attempt`` or ``N attempts``: how the item errors say how often an item was tried."""
    return "1 attempt" if attempts == 1 else f"{attempts} attempts"


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended, with a hint when SIGKILL points at the out-of-memory killer."""
    if exitcode is None:
        return "ended for an unknown reason"
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    number = -exitcode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    hint = ", often the out-of-memory killer" if number == signal.SIGKILL else ""
    return f"was killed by {name} (signal {number}{hint})"


class WorkerCrashedError(BatchcoreError, RuntimeError):
    """A worker died (``os._exit``, a signal, a segfault) while it ran ``index``."""

    def __init__(
        self, index: int, item_repr: str, pid: int | None, exitcode: int | None, attempts: int
    ) -> None:
        self.index = index
        self.item_repr = item_repr
        self.pid = pid
        self.exitcode = exitcode
        self.attempts = attempts
        tries = count_attempts(attempts)
        who = f"worker pid {pid}" if pid is not None else "the worker"
        how = describe_exit(exitcode) if exitcode is not None else "died"
        super().__init__(f"{who} running item {index} ({item_repr}) {how}; gave up after {tries}")

    def __reduce__(self) -> Any:
        return (type(self), (self.index, self.item_repr, self.pid, self.exitcode, self.attempts))


class ItemTimeoutError(BatchcoreError, TimeoutError):
    """Item ``index`` ran longer than ``timeout`` seconds; its worker was stopped."""

    def __init__(self, index: int, item_repr: str, timeout: float, attempts: int) -> None:
        self.index = index
        self.item_repr = item_repr
        self.timeout = timeout
        self.attempts = attempts
        tries = count_attempts(attempts)
        super().__init__(
            f"item {index} ({item_repr}) ran longer than timeout={timeout!r} seconds; "
            f"gave up after {tries}"
        )

    def __reduce__(self) -> Any:
        return (type(self), (self.index, self.item_repr, self.timeout, self.attempts))


class ItemMemoryError(BatchcoreError, MemoryError):
    """While item ``index`` ran, its worker's memory (``used`` bytes resident) went past
    ``limit`` (``max_memory=``); the worker was stopped and replaced."""

    def __init__(
        self, index: int, item_repr: str, limit: int, used: int, pid: int | None, attempts: int
    ) -> None:
        self.index = index
        self.item_repr = item_repr
        self.limit = limit
        self.used = used
        self.pid = pid
        self.attempts = attempts
        tries = count_attempts(attempts)
        who = f"worker pid {pid}" if pid is not None else "the worker"
        super().__init__(
            f"{who} running item {index} ({item_repr}) used {format_bytes(used)} of memory, "
            f"over max_memory={format_bytes(limit)}, and was stopped; gave up after {tries}"
        )

    def __reduce__(self) -> Any:
        args = (self.index, self.item_repr, self.limit, self.used, self.pid, self.attempts)
        return (type(self), args)


class RemoteItemError(BatchcoreError):
    """An item raised ``type_name`` in a worker, but the exception itself could not be sent back."""

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> Any:
        return (type(self), (self.type_name, self.message, self.traceback_text))


class SerializationError(BatchcoreError, pickle.PicklingError):
    """``what`` (node, item, result or shared) could not be pickled to cross a process boundary."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        super().__init__(message)

    def __reduce__(self) -> Any:
        return (type(self), (self.what, str(self)))


class WorkerStartupError(BatchcoreError, RuntimeError):
    """A worker process failed before it could run anything; its output is in the message."""
