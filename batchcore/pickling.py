"""Pickling for anything that crosses a process boundary: fast by default, cloudpickle when needed.

Plain ``pickle`` is several times faster than cloudpickle on ordinary objects, but it sends classes
and functions by reference, which a worker cannot resolve for code defined in ``__main__`` (a
script, ``python -c``, a notebook) or inside a function. So we try ``pickle`` first and switch to
cloudpickle, which sends such code by value, when pickling fails or the stream names ``__main__``.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from .errors import SerializationError, short_repr

__all__ = ["dumps", "dumps_buffers", "dumps_checked", "find_unpicklable", "loads"]

PROTOCOL = 5
_MAIN = b"__main__"


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` so that a fresh interpreter can load it; raises what the pickler raises."""
    try:
        data = pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:
        return bytes(cloudpickle.dumps(obj, protocol=PROTOCOL))
    if _MAIN in data:
        return bytes(cloudpickle.dumps(obj, protocol=PROTOCOL))
    return data


def dumps_buffers(obj: Any, threshold: int) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """``dumps``, but each contiguous buffer of ``threshold`` bytes or more (numpy arrays, Arrow
    buffers: pickle protocol 5) is left out of the stream and returned, for ``loads(buffers=)``."""
    buffers: list[pickle.PickleBuffer] = []

    def aside(buffer: pickle.PickleBuffer) -> bool:  # True: in the stream; False: out of band
        try:
            big = buffer.raw().nbytes >= threshold
        except BufferError:  # not contiguous: only a copy in the stream can carry it
            return True
        if big:
            buffers.append(buffer)
        return not big

    try:
        data = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=aside)
    except Exception:
        data = b""
    if not data or _MAIN in data:
        buffers.clear()  # the failed or by-reference attempt's buffers are not this stream's
        data = bytes(cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=aside))
    return data, buffers


def loads(data: bytes | bytearray | memoryview, buffers: Any = None) -> Any:
    """Load what ``dumps`` (or ``dumps_buffers``, given its ``buffers``) produced (cloudpickle
    output needs only cloudpickle to be importable)."""
    return pickle.loads(data, buffers=buffers)


def find_unpicklable(
    obj: Any, path: str = "", depth: int = 3
) -> tuple[str, Any, BaseException] | None:
    """Return ``(path, value, error)`` of the innermost part of ``obj`` that does not pickle."""
    try:
        dumps(obj)
        return None
    except Exception as exc:
        error: BaseException = exc
    if depth > 0:
        children: list[tuple[str, Any]] = []
        if isinstance(obj, dict):
            children = [(f"{path}[{key!r}]", value) for key, value in obj.items()]
        elif isinstance(obj, (list, tuple)):
            children = [(f"{path}[{i}]", value) for i, value in enumerate(obj)]
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            children = [(f"{path}.{name}", value) for name, value in vars(obj).items()]
        for child_path, value in children:
            found = find_unpicklable(value, child_path, depth - 1)
            if found is not None:
                return found
    return (path, obj, error)


def dumps_checked(obj: Any, what: str, name: str, hint: str, inspect: Any = None) -> bytes:
    """Pickle ``obj`` or raise ``SerializationError`` naming the part that failed and why.

    ``inspect`` is the object to search and name in the message (default ``obj`` itself), for
    wrappers whose own attributes mean nothing to the user.
    """
    try:
        return dumps(obj)
    except Exception as exc:
        root = obj if inspect is None else inspect
        path, value, error = find_unpicklable(root) or ("", root, exc)
        where = f"{name}{path}" if path else name
        raise SerializationError(
            what,
            f"{where} ({type(value).__module__}.{type(value).__qualname__}, "
            f"{short_repr(value, 60)}) cannot be pickled to send it to a worker process: "
            f"{type(error).__name__}: {error}. {hint}",
        ) from exc
