"""Atomic file writes for every job's outputs (Parquet parts, images), and cleanup of the
temporary files an interrupted run leaves behind.

``write_atomically(final, write)``: a hidden temporary ``.NAME.PID-RANDOM.tmp`` is created
exclusively (``O_EXCL``, an unpredictable name) in ``final``'s folder, ``write(temporary)`` fills
it, it is fsynced and ``os.replace``d over ``final``, then the folder is fsynced. On any failure
(Ctrl-C included) the temporary file is removed, so ``final`` is either whole or untouched. A
writer killed outright leaves only a hidden temporary file, which ``remove_stale_temps`` finds
later by its name (the PID tells whether its writer is still running).

``write_atomically_in(root, final, write)`` does the same for a file inside the folder ``root``
without following symlinks: each folder from ``root`` down is opened with ``O_NOFOLLOW`` and the
temporary file is created, renamed and synced through that folder's descriptor, so a folder
swapped for a symlink after a path was checked cannot redirect the write; a symlink at ``final``
is refused. ``write(handle)`` gets the open temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "is_temp_name",
    "remove_stale_temps",
    "temp_path",
    "write_atomically",
    "write_atomically_in",
]

# ``.NAME.PID-RANDOM.tmp``; also ``.NAME.tmp-PID``, the name Parquet parts had in earlier versions,
# so that their interrupted runs are cleaned up too.
_TEMP = re.compile(r"^\..+\.(?:(?P<pid>\d+)-[0-9a-f]{8,}\.tmp|tmp-(?P<old_pid>\d+))$")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FD_CALLS = {os.open, os.mkdir, os.rename, os.unlink, os.stat}
_DIR_FD = bool(_NOFOLLOW) and _DIR_FD_CALLS <= os.supports_dir_fd


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


def write_atomically_in(
    root: str | os.PathLike[str], final: str | os.PathLike[str], write: Callable[[BinaryIO], object]
) -> None:
    """``write_atomically`` for ``final`` inside folder ``root`` (created as needed), following
    no symlink below ``root``; ``OSError`` naming the path if one is in the way."""
    root, final = Path(root), Path(final)
    root.mkdir(parents=True, exist_ok=True)
    relative = final.relative_to(root)  # ValueError when final is not under root
    if ".." in relative.parts or not relative.parts:
        raise ValueError(f"{final} is not a file inside {root}")
    if not _DIR_FD:  # no descriptor-relative calls here (Windows): check, then write by path
        _check_inside(root, final)
        write_atomically(final, lambda temporary: _write_path(temporary, write))
        return
    folder = os.open(root, _FOLDER)  # root itself may be a symlink: the caller chose it
    try:
        where = root
        for part in relative.parts[:-1]:
            where = where / part
            inner = _enter(folder, part, where)
            os.close(folder)
            folder = inner
        _replace_in(folder, final, write)
    finally:
        os.close(folder)


def _write_path(temporary: Path, write: Callable[[BinaryIO], object]) -> None:
    with open(temporary, "r+b") as handle:
        write(handle)


def _check_inside(root: Path, final: Path) -> None:
    real_root = os.path.realpath(root)
    real = Path(os.path.realpath(final.parent), final.name)
    if final.is_symlink() or not real.is_relative_to(real_root):
        raise OSError(errno.ELOOP, f"leads outside {root} (a symlink); refusing to write", final)


def _enter(parent: int, name: str, where: Path) -> int:
    """The folder ``name`` in ``parent`` (made if missing), opened without following a symlink."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=parent)
    try:
        return os.open(name, _FOLDER | _NOFOLLOW, dir_fd=parent)
    except OSError:
        if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise OSError(
                errno.ELOOP, "is a symlink; refusing to write through it", str(where)
            ) from None
        raise


def _replace_in(folder: int, final: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``final.name`` in the open ``folder`` through a temporary file (see module doc)."""
    name = final.name
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, "is a symlink; refusing to write over it", str(final))
    while True:
        temporary = temp_path(final).name
        try:
            # read-write: some encoders (multi-page TIFF) read back what they wrote
            flags = (_CREATE & ~os.O_WRONLY) | os.O_RDWR | _NOFOLLOW
            fd = os.open(temporary, flags, 0o666, dir_fd=folder)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "w+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # a rename replaces a symlink planted meanwhile, never writes through it
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise
    try:
        os.fsync(folder)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


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
