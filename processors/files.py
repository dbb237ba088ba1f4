"""Atomic file writes for every job's outputs (Parquet parts, images), folders swapped in whole
under a lock (Parquet datasets), and cleanup of what an interrupted run leaves behind.

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

``StagedFolder.begin(final, check)``: a run that will replace the folder ``final`` first takes
an exclusive ``flock`` on ``.NAME.lock`` beside it (refusing with ``UsageError`` when another run
holds it; the kernel drops the lock when its holder dies, so a lock is never stale), then builds
the new contents in a hidden ``.NAME.staging-PID-RANDOM`` folder beside ``final``. ``commit``
fsyncs that folder and swaps it in: one ``rename`` when ``final`` is missing or empty, else one
``renameat2(RENAME_EXCHANGE)`` (Linux), else two renames with the old folder set aside as
``.NAME.old-PID-RANDOM`` (restored by the next run if a crash falls between them); then the
parent folder is fsynced and the old contents removed. ``close`` removes an uncommitted staging
folder and releases the lock. Staging and set-aside folders of ``final`` are removed only under
its lock, that is, only once the run that made them is gone. A resumable run keeps its staging
folder when it fails (``close(keep=True)``), and the next one adopts it (``begin(adopt=...)``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import UsageError

__all__ = [
    "StagedFolder",
    "is_temp_name",
    "lock_path",
    "newest_staging",
    "remove_stale_temps",
    "side_folders",
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


def remove_stale_temps(folder: Path, *, prefix: str = "") -> int:
    """Remove the temporary files (whose names start with ``prefix``) that interrupted runs left in
    ``folder``; those of a live process are kept. Returns how many were removed."""
    if not folder.is_dir():
        return 0
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            found = _TEMP.match(entry.name)
            if found is None or not entry.name.startswith(prefix):
                continue
            if _alive(int(found.group("pid") or found.group("old_pid"))):
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
            fields = handle.read()
    except OSError:
        return False  # no /proc (macOS): taken as running, as before
    end = fields.rfind(b")")
    return fields[end + 2 : end + 3] == b"Z"


# --- folders swapped in whole ------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


def lock_path(final: Path) -> Path:
    """``.NAME.lock`` beside ``final``: the file whose ``flock`` marks a run replacing ``final``."""
    return final.with_name(f".{final.name}.lock")


def _side_folder(final: Path, kind: str) -> Path:
    """A new hidden folder ``.NAME.KIND-PID-RANDOM`` beside ``final``, created by us alone."""
    while True:
        folder = final.with_name(f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder


def newest_staging(final: Path, adopt: Callable[[Path], bool]) -> Path | None:
    """Of the staging folders earlier runs left beside ``final``, the one last written to for
    which ``adopt`` is true (``None``: none is)."""
    chosen = [folder for folder in side_folders(final, "staging") if adopt(folder)]
    return max(chosen, key=lambda folder: folder.stat().st_mtime_ns, default=None)


def side_folders(final: Path, kind: str) -> list[Path]:
    """The ``.NAME.KIND-*`` folders beside ``final`` that earlier runs left."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.{kind}-\d+-[0-9a-f]{{8,}}$")
    with os.scandir(final.parent) as entries:
        return sorted(Path(e.path) for e in entries if pattern.match(e.name) and e.is_dir())


def _take_lock(final: Path) -> int:
    """An fd holding the exclusive ``flock`` of ``final``'s lock file; ``UsageError`` when another
    run holds it (its files are then left alone)."""
    path = lock_path(final)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            # The lock is the run's first write: name the output the user gave, not our file.
            raise PermissionError(exc.errno, f"cannot write: {exc.strerror}", str(final)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"{final}: another run is writing it (pid {holder} holds {path.name}); "
                "wait for it to finish, or write elsewhere"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:  # else its last holder removed it between our open and our lock: take a new one
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _release_lock(final: Path, fd: int) -> None:
    """Remove the lock file while still holding it (so no one locks a file about to vanish), then
    release it."""
    with contextlib.suppress(FileNotFoundError):
        lock_path(final).unlink()
    os.close(fd)


@functools.cache
def _renameat2() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not glibc/Linux
        return None


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system or filesystem cannot. POSIX has no such call: plain ``rename`` will not replace a
    folder that is not empty."""
    call = _renameat2()
    if call is None:
        return False
    done = call(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


class StagedFolder:
    """The next contents of the folder ``final``, built in ``staging`` (a hidden folder beside it)
    while this run holds ``final``'s lock, and swapped in whole by ``commit``."""

    def __init__(
        self, final: Path, staging: Path, lock_fd: int | None, adopted: bool = False
    ) -> None:
        self.final = final
        self.staging = staging
        self.lock_fd = lock_fd
        self.committed = False
        self.adopted = adopted  # ``staging`` is an earlier, killed run's, carried on

    @classmethod
    def begin(
        cls,
        final: str | os.PathLike[str],
        check: Callable[[Path], None],
        adopt: Callable[[Path], bool] | None = None,
    ) -> StagedFolder:
        """Lock ``final`` and make its staging folder. ``check(final)`` raises to refuse; it runs
        before anything is touched and again under the lock (the folder may change meanwhile).
        ``adopt``: an earlier run's staging folder for which it is true (the newest) is carried
        on instead of removed (a resumed run), less its writers' temporary files; of several,
        the one last written to."""
        # the folder itself, not a symlink to it (the swap replaces the folder where it lives);
        # absolute, so that "." has a name to put the lock and staging folder beside
        final = Path(os.path.realpath(final))
        check(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd = _take_lock(final)
        try:
            aside = side_folders(final, "old")
            if aside and not final.exists():  # a crash between the two renames of a swap
                os.rename(aside[-1], final)
                _fsync(final.parent, folder=True)
            check(final)
            earlier = side_folders(final, "staging")
            kept = None if adopt is None else newest_staging(final, adopt)
            for stale in [*earlier, *side_folders(final, "old")]:
                if stale != kept:  # their run is gone: we hold its lock
                    shutil.rmtree(stale, ignore_errors=True)
            if kept is not None:
                remove_stale_temps(kept)
            staging = kept or _side_folder(final, "staging")
        except BaseException:
            _release_lock(final, fd)
            raise
        return cls(final, staging, fd, adopted=kept is not None)

    def commit(self) -> None:
        """Swap the staging folder in for ``final`` (see the module docstring for each step)."""
        _fsync(self.staging, folder=True)
        old: Path | None = None
        try:
            os.rename(self.staging, self.final)  # final missing or empty: one atomic step
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if _exchange(self.staging, self.final):
                old = self.staging  # now holds the previous contents
            else:
                old = _side_folder(self.final, "old")
                os.rename(self.final, old)  # replaces the empty folder just made
                try:
                    os.rename(self.staging, self.final)
                except BaseException:
                    os.rename(old, self.final)
                    raise
        self.committed = True
        _fsync(self.final.parent, folder=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # the next run removes what this leaves

    def close(self, keep: bool = False) -> None:
        """Remove the staging folder unless committed (or ``keep``: a resumable run's, for the
        next run to adopt), and release the lock."""
        if not self.committed and not keep:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self.lock_fd is not None:
            _release_lock(self.final, self.lock_fd)
            self.lock_fd = None

    def __getstate__(self) -> dict[str, Any]:
        # a copy sent to a worker writes into the staging folder; only this run holds the lock
        return {**self.__dict__, "lock_fd": None}
