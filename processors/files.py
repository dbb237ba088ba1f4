"""Atomic file writes for every job's outputs (Parquet parts, images), and cleanup of the
temporary files an interrupted run leaves behind.

``write_atomically(final, write)``: a hidden temporary ``.NAME.PID-RANDOM.tmp`` is created
exclusively (``O_EXCL``, an unpredictable name) in ``final``'s folder, ``write(temporary)`` fills
it, it is fsynced and ``os.replace``d over ``final``, then the folder is fsynced. On any failure
(Ctrl-C included) the temporary file is removed, so ``final`` is either whole or untouched. A
writer killed outright leaves only a hidden temporary file, which ``remove_stale_temps`` finds
later by its name (the PID tells whether its writer is still running).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["is_temp_name", "remove_stale_temps", "temp_path", "write_atomically"]

# ``.NAME.PID-RANDOM.tmp``; also ``.NAME.tmp-PID``, the name Parquet parts had in earlier versions,
# so that their interrupted runs are cleaned up too.
_TEMP = re.compile(r"^\..+\.(?:(?P<pid>\d+)-[0-9a-f]{8,}\.tmp|tmp-(?P<old_pid>\d+))$")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def temp_path(final: Path) -> Path:
    """``.NAME.PID-RANDOM.tmp`` beside ``final``: hidden, unpredictable, traceable to its writer."""
    return final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(8)}.tmp")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file ``write_atomically`` writes."""
    return _TEMP.match(name) is not None


def _create_temp(final: Path) -> Path:
    """A new, empty temporary file beside ``final``, created by us alone (never an existing one)."""
    while True:
        temporary = temp_path(final)
        try:
            os.close(os.open(temporary, _CREATE, 0o666))  # the usual umask-based permissions
        except FileExistsError:
            continue
        return temporary


def _fsync(path: Path, *, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # some filesystems cannot sync a folder; the rename itself has already happened
        if not folder or exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_atomically(final: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Make ``final`` appear whole or not at all: ``write(temporary)`` writes a temporary file in
    the same folder, which is fsynced and renamed over ``final``; removed on any failure."""
    final = Path(final)
    temporary = _create_temp(final)
    try:
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync(final.parent, folder=True)


def remove_stale_temps(folder: Path, *, prefix: str = "", live_writers_too: bool = False) -> int:
    """Remove the temporary files (whose names start with ``prefix``) that interrupted runs left in
    ``folder``; those of a live process are kept unless ``live_writers_too``. Returns how many
    were removed."""
    if not folder.is_dir():
        return 0
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            found = _TEMP.match(entry.name)
            if found is None or not entry.name.startswith(prefix):
                continue
            if not live_writers_too and _alive(int(found.group("pid") or found.group("old_pid"))):
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass  # another cleaner got there first
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process may be writing it right now (another run, another thread)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but was not reaped yet (a worker whose parent died first, under
    an init that is slow to reap, or never does in a container): it writes nothing more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:  # "pid (comm) STATE ..."
            stat = handle.read()
    except OSError:
        return False  # no /proc (macOS): taken as running, as before
    end = stat.rfind(b")")
    return stat[end + 2 : end + 3] == b"Z"
