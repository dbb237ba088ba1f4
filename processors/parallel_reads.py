"""One read of a remote object as several ranged GETs in flight at once, into the same buffer.

An object store answers each GET after a round trip (~20-50 ms in a cloud region) and then
streams it at ~50-100 MB/s per connection, so one 16 MiB GET takes ~0.2 s: five times what Arrow
needs to parse it. Cut into ``MAX_GETS`` pieces fetched at once, each on its own connection, the
read takes a fraction of that. Every piece is written straight into its slice of the caller's
buffer, so memory stays one buffer per reader::

    buffer  [ piece 0 (this thread) | piece 1 (pool) | piece 2 (pool) | piece 3 (pool) ]

A store that answers fast (a server on the same machine or network) gains nothing and pays more
requests (on a loopback S3 server: 12% slower), so a process reads one GET per read until a
whole read of a store (a bucket) has come slower than ``SLOW_RATE``, and in pieces from then on;
``BATCHCORE_GETS_PER_READ=N`` fixes the count instead. On the 2-core benchmark machine a
loopback server answered 16 MiB GETs at 250-1,200 MB/s, even with two workers parsing beside
it; through a link of 30 ms and 90 MB/s per connection, at 68-143 MB/s. Measured in
``benchmarks/README.md`` (``bench_remote.py --link``).

The pieces after the first go to a small thread pool per process (threads only wait on sockets:
Arrow's client and fsspec's loop release the GIL); the calling thread reads the first and then
waits for all of them, whatever happened, since they write into its buffer.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

__all__ = [
    "GETS_ENV",
    "GET_PIECE",
    "MAX_GETS",
    "THREAD_NAME",
    "gets_per_read",
    "observe",
    "pieces",
    "run_all",
    "submit",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)

GET_PIECE = 4 << 20  # the least bytes worth a GET of their own: below, a round trip dominates
MAX_GETS = 4  # GETs in flight for one read of a slow store: a 16 MiB block as four 4 MiB pieces
SLOW_RATE = 150e6  # bytes/s: a whole read slower (16 MiB in over 112 ms) marks its store
GETS_ENV = "BATCHCORE_GETS_PER_READ"  # N: always N per read (1: never in pieces)
# Enough for every reading thread of a process to have its pieces in flight at once.
POOL_THREADS = min(32, MAX_GETS * (os.cpu_count() or 1))
THREAD_NAME = "batchcore-get"  # the pool's threads' names start so


def _fixed_gets() -> int | None:
    """``GETS_ENV``'s count, or ``None`` (unset, or not a whole number >= 1: said once)."""
    value = os.environ.get(GETS_ENV, "")
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        logger.warning("%s=%r is not a whole number >= 1: ignored", GETS_ENV, value)
        return None
    return count


FIXED_GETS = _fixed_gets()
_slow: set[str] = set()  # stores (``scheme://bucket``) whose whole reads came slow here

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _store(url: str) -> str:
    return "/".join(url.split("/", 3)[:3])


def gets_per_read(url: str) -> int:
    """How many GETs one large read of ``url`` makes at once: ``GETS_ENV``'s count if set, else
    ``MAX_GETS`` once its store has been slow here, else one."""
    if FIXED_GETS is not None:
        return FIXED_GETS
    return MAX_GETS if _store(url) in _slow else 1


def observe(url: str, size: int, seconds: float) -> None:
    """A read of ``size`` bytes of ``url`` in one GET took ``seconds``: a read worth pieces
    (``2 * GET_PIECE`` or more) slower than ``SLOW_RATE`` marks its store for pieces."""
    if size >= 2 * GET_PIECE and size < SLOW_RATE * seconds:
        _slow.add(_store(url))


def pieces(start: int, length: int, count: int) -> list[tuple[int, int]]:
    """``start..start+length`` as ``(start, end)`` spans read at once: as many as ``count``
    of at least ``GET_PIECE`` bytes each, of about equal size (one span for a short read)."""
    count = max(1, min(count, length // GET_PIECE))
    step = -(-length // count) if length else 0
    if count == 1 or step == 0:
        return [(start, start + length)]
    return [(at, min(at + step, start + length)) for at in range(start, start + length, step)]


def run_all(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Every call's result, in order: the first in this thread, the rest in the pool at once.
    Returns (or raises the first call's error, in order) only once every call has ended."""
    if len(calls) == 1:
        return [calls[0]()]
    pool = _threads()
    futures: list[Future[T]] = [pool.submit(call) for call in calls[1:]]
    try:
        first = calls[0]()
    finally:
        wait(futures)  # they write into the caller's buffer: none may still run after us
    return [first, *(future.result() for future in futures)]


def submit(call: Callable[..., T], *args: object) -> Future[T]:
    """``call(*args)`` in the pool, now: a fetch ahead of a stream's reader."""
    return _threads().submit(call, *args)


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix=THREAD_NAME)
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist here; start a new pool."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)
