"""Big payloads between the parent and its worker processes through shared memory, not the pipe.

Pickle protocol 5 hands each large contiguous buffer (numpy arrays, Arrow buffers) to a callback
instead of copying it into the stream (``pickling.dumps_buffers``). ``split`` keeps those buffers
(without copying them) beside the small pickle; ``seal``, when the message is sent, writes them
into a file in ``/dev/shm`` and returns a small message for the pipe: a marker, the file's path
and layout, then the pickle. ``loads`` on the other side reads the buffers out of the file into
memory of its own (writable, as unpickled arrays are) and unpickles with ``buffers=``. A payload
without a buffer of ``THRESHOLD`` bytes is the plain pickle it always was.

Why a copy out rather than a mapping: new memory pages are what costs (more than a copy, on
virtual machines several times more), so the file is not freed but kept for the sender's next
message, whose buffers are then written into pages already there; a mapping would pin the file
as long as the arrays read from it live. Reading a file costs no more than faulting it in.

Who creates and who unlinks:

* The sender, when it sends a message, renames a free file of its own (below) to a new random
  name, or creates a new one (exclusively, mode 0600); it unlinks the file itself only if it
  fails before the message is sent, including on ``SystemExit`` (a worker's SIGTERM).
* The receiver, once it has read the buffers, links the file under a free name for its sender
  (at most ``FREE_SLOTS`` per direction, none above ``RECYCLE_MAX``) and unlinks the message's
  name.
* The parent, which outlives its workers, removes the rest. Every file is named for the pair
  that exchanges it, ``batchcore-<parent pid>-<worker pid>-...``: the process pool calls
  ``sweep(worker pid)`` once a worker is reaped, which removes the worker's free files and the
  messages one side never read (a worker killed with a job unread, or between writing a result
  and sending it). At exit the parent removes every file of its pid, and when it first sends
  it removes the files of parents that died without doing so (``sweep_stale``: SIGKILL).

The Dask backend does not use this: its workers may be on other machines and Dask, not batchcore,
decides when they die, so nobody could be sure to unlink; Dask moves its messages as frames.
"""

from __future__ import annotations

import atexit
import os
import pickle
import secrets
import struct
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from ..pickling import dumps, dumps_buffers
from ..pickling import loads as loads_pickle

__all__ = ["THRESHOLD", "Payload", "loads", "message_size", "seal", "split", "sweep"]

THRESHOLD = 1 << 20  # bytes of one buffer: below this, copying it through the pipe is cheaper
MAGIC = b"\x00batchcore-shm\x00"  # a pickle starts with b"\x80": never mistaken for one
_HEAD = struct.Struct("<IQ")  # length of the header pickle, bytes in the file
ALIGN = 64  # each buffer starts on a cache line, as numpy allocates them
PREFIX = "batchcore-"
# The pid of the process that owns a worker's pool, in the worker's environment: a worker forked
# by the zygote has the zygote as its OS parent, but its files must carry the pool's pid.
PARENT_ENV = "BATCHCORE_PARENT_PID"
_WRITE_MAX = 1 << 30  # bytes per pwrite: Linux moves at most ~2 GiB per call
FREE_SLOTS = 2  # freed files kept per worker and direction: a job running and the one queued
RECYCLE_MAX = 64 << 20  # bigger files are unlinked after use: warm pools hold little memory


def _shared_dir() -> str:
    """``/dev/shm`` (memory) where there is one, else the temp folder (page cache)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()  # pragma: no cover - macOS


SHARED_DIR = _shared_dir()


@dataclass(eq=False)
class Payload:
    """A pickle whose big buffers travel beside it: ``blob`` for the pipe, ``buffers`` for the
    shared file; ``obj`` to fall back on an ordinary pickle when no file can be made."""

    obj: Any
    blob: bytes
    buffers: list[pickle.PickleBuffer]
    nbytes: int  # of the buffers


def split(obj: Any) -> bytes | Payload:
    """Pickle ``obj``: the plain pickle when it has no big buffer, else a ``Payload``; raises what
    the pickler raises, as ``pickling.dumps`` does."""
    blob, buffers = dumps_buffers(obj, THRESHOLD)
    if not buffers:
        return blob
    nbytes = sum(buffer.raw().nbytes for buffer in buffers)
    try:
        room = os.statvfs(SHARED_DIR)
        if room.f_bavail * room.f_frsize < 2 * nbytes:  # no room: the pipe it is, as before
            return dumps(obj)
    except OSError:  # pragma: no cover - no such folder
        return dumps(obj)
    return Payload(obj, blob, buffers, nbytes)


def shared_size(payload: bytes | Payload) -> int:
    """Bytes of ``payload`` that travel through shared memory."""
    return payload.nbytes if isinstance(payload, Payload) else 0


def pipe_size(payload: bytes | Payload) -> int:
    """Bytes of ``payload`` that travel through the pipe (about: the header is not counted)."""
    return len(payload.blob) if isinstance(payload, Payload) else len(payload)


def seal(payload: bytes | Payload, worker: int | None = None) -> bytes:
    """The message to send for ``payload``, writing its buffers to a new shared file first.

    ``worker`` is the pid of the worker the parent sends to; ``None`` in a worker, sending to its
    parent. Without a file (the folder is full), the whole pickle goes through the pipe.
    """
    if not isinstance(payload, Payload):
        return payload
    if worker is None:
        parent = int(os.environ.get(PARENT_ENV) or os.getppid())
        worker, direction = os.getpid(), "r"
    else:
        parent, direction = os.getpid(), "i"
        _first_use()
    pair = os.path.join(SHARED_DIR, f"{PREFIX}{parent}-{worker}-")
    path = pair + secrets.token_hex(8)
    free = f"{pair}free{direction}"  # where the receiver leaves the file for the next message
    spans = []
    offset = 0
    for buffer in payload.buffers:
        spans.append((offset, buffer.raw().nbytes))
        offset += -(-buffer.raw().nbytes // ALIGN) * ALIGN
    try:
        _write(path, free, offset, spans, payload.buffers)
    except OSError:
        return dumps(payload.obj)
    head = pickle.dumps((path, spans, free), protocol=5)
    return b"".join((MAGIC, _HEAD.pack(len(head), offset), head, payload.blob))


def _write(
    path: str,
    free: str,
    size: int,
    spans: list[tuple[int, int]],
    buffers: list[pickle.PickleBuffer],
) -> None:
    """Write ``buffers`` into ``path``: a file the receiver freed (its pages already allocated:
    writing is a plain copy, several times faster than into new pages), else a new one.
    Unlink it on any failure."""
    fd = _reuse(free, path)
    if fd is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        for (offset, nbytes), buffer in zip(spans, buffers, strict=True):
            view = buffer.raw()
            done = 0
            while done < nbytes:
                done += os.pwrite(fd, view[done : done + _WRITE_MAX], offset + done)
    except BaseException:  # SystemExit (SIGTERM) too: nobody else knows of this file yet
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def _reuse(free: str, path: str) -> int | None:
    """Take a freed file of this pair and direction (renamed to ``path``: nobody else can take
    it), opened; ``None`` when there is none."""
    for slot in range(FREE_SLOTS):
        try:
            os.rename(f"{free}{slot}", path)
        except FileNotFoundError:
            continue
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    return None


def message_size(data: bytes | bytearray | memoryview) -> int:
    """Bytes a message moved: its own and those of its shared file."""
    if data[: len(MAGIC)] != MAGIC:
        return len(data)
    return len(data) + int(_HEAD.unpack_from(data, len(MAGIC))[1])


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Load a message ``seal`` made (or any ``pickling.dumps`` output): map and unlink its file."""
    if data[: len(MAGIC)] != MAGIC:
        return loads_pickle(data)
    view = memoryview(data)
    head_size, size = _HEAD.unpack_from(view, len(MAGIC))
    start = len(MAGIC) + _HEAD.size
    path, spans, free = pickle.loads(view[start : start + head_size])
    for name in (path, free):
        if os.path.dirname(name) != SHARED_DIR or not os.path.basename(name).startswith(PREFIX):
            raise ValueError(f"not a batchcore shared-memory file: {name!r}")
    if not _started and os.path.basename(path).startswith(f"{PREFIX}{os.getpid()}-"):
        _first_use()  # a parent that only receives big payloads cleans up at exit as well
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buffers = []
        for offset, nbytes in spans:
            # A copy of our own: the file can serve the next message, and reading it is no
            # slower than faulting in a mapping of it (measured). Writable, as unpickled arrays.
            buffer = bytearray(nbytes)
            done = 0
            while done < nbytes:
                read = os.preadv(fd, [memoryview(buffer)[done : done + _WRITE_MAX]], offset + done)
                if not read:
                    raise EOFError(f"{path} ends at {offset + done}, before its buffers do")
                done += read
            buffers.append(buffer)
    finally:
        os.close(fd)
        _free(path, free, size)
    return loads_pickle(view[start + head_size :], buffers=buffers)


def _free(path: str, free: str, size: int) -> None:
    """Leave the file read for its sender's next message, in a free slot, or unlink it."""
    if size <= RECYCLE_MAX:
        for slot in range(FREE_SLOTS):
            try:
                os.link(path, f"{free}{slot}")
                break
            except FileExistsError:
                continue
            except OSError:  # no hard links here
                break
    os.unlink(path)


def sweep(worker: int, parent: int | None = None) -> None:
    """Unlink the files still named for ``worker`` and ``parent`` (default: this process): the
    messages one of them sent that the other never read."""
    _unlink_matching(f"{PREFIX}{parent or os.getpid()}-{worker}-")


def _unlink_matching(prefix: str) -> None:
    try:
        names = os.listdir(SHARED_DIR)
    except OSError:  # pragma: no cover - the folder is gone
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHARED_DIR, name))
            except OSError:
                pass  # the receiver took it meanwhile


def sweep_stale() -> None:
    """Unlink the files of parents that are gone (killed before they could sweep)."""
    try:
        names = os.listdir(SHARED_DIR)
    except OSError:  # pragma: no cover - the folder is gone
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(SHARED_DIR, name))
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


_started = False
_start_lock = threading.Lock()


def _first_use() -> None:
    """In a parent, once: clean up after dead parents and arrange to clean up after itself."""
    global _started
    with _start_lock:
        if _started:
            return
        _started = True
    sweep_stale()
    atexit.register(_sweep_own, os.getpid())


def _sweep_own(pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child that inherited the hook
        _unlink_matching(f"{PREFIX}{pid}-")
