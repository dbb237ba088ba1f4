"""The zygote: a fork server that imports the heavy libraries once, so new workers start in ms.

Starting a worker as a fresh interpreter costs its imports (numpy + pyarrow ~0.25 s, pandas more)
in every worker, every time one is replaced. The zygote is such a fresh interpreter, started with
``subprocess`` by the pool like a worker; it imports numpy, pyarrow, pandas and Pillow once (their
thread pools limited and left unstarted), then forks a worker for each request. Who holds what::

    parent (the user's process, may run threads; never forks)
      |-- subprocess --> zygote   (one per pool; single-threaded, checked before every fork)
      |     socketpair (SOCK_SEQPACKET):
      |       parent -> zygote   b"fork" + SCM_RIGHTS [task_r, result_w, slot_fd]
      |                          | b"preload"   (the first batch is done: import the rest)
      |       zygote -> parent   ("forked", pid) + SCM_RIGHTS [pidfd]  |  ("refused", why)
      |                          | ("preloaded",)   (every library of PRELOAD imported)
      |                          | ("exit", pid, exitcode)   (the zygote reaps its children)
      |                                 |-- os.fork --> worker: keeps the three fds, closes the
      |                                       socket, returns to the boot line, which runs a
      |                                       spawned worker's boot code (``process.BOOT``)
      |-- task_w, result_r, slot mmap: the parent's ends, talking to the worker directly

The zygote closes its copies of a worker's fds right after the fork, so only the parent and that
worker hold its pipes: a worker sees the parent die by the hang-up of its task pipe, as before,
and the zygote by the end of its socket. Signals go to a worker through its pidfd (no pid reuse
race); its exit code comes from the zygote (``None``, "unknown", for a worker that outlives a
zygote that died). The zygote ignores SIGINT, exits without a word when the parent goes, and is
killed when the pool closes (its workers are reaped by then). If it refuses a fork or dies, the
pool starts workers directly instead. Workers forked from one zygote share its hash seed.
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from types import FrameType

# What the zygote imports, in order; each is optional (a missing one is skipped). Those before
# "" are imported before the first fork; the rest a second after the pool's first batch is done,
# while no fork request waits. Importing pandas and Pillow during that batch, or right after it,
# made a cold CSV run 1 s (or 0.45 s) slower on 2 cores, and most jobs do not need them.
PRELOAD = (
    "batchcore.backends._worker",
    "numpy",
    "pyarrow",
    "pyarrow.csv",
    "pyarrow.compute",
    "",
    "pandas",
    "PIL.Image",
)
PRELOAD_ENV = "BATCHCORE_ZYGOTE_PRELOAD"  # replaces PRELOAD: names separated by ",", "" the cut
# Arrow's bundled jemalloc starts a background purge thread at import: the zygote must stay
# single-threaded to fork safely.
ZYGOTE_ENV = {"JE_ARROW_MALLOC_CONF": "background_thread:false"}
# Born with SIGINT blocked (as workers are, see process.BOOT). A forked child returns from serve
# with its fds and runs a spawned worker's boot code (argv[2]) with the argv a spawned worker
# gets, at the top level of this same program: it runs and exits as a spawned worker does.
BOOT = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "from batchcore.backends.zygote import serve; boot = sys.argv[2]; "
    "sys.argv[1:] = [str(fd) for fd in serve(int(sys.argv[1]), sys.argv[3:])]; exec(boot)"
)
LATER_DELAY = 1.0  # seconds after the first batch before importing the rest: a CLI is gone by then
MESSAGE_BYTES = 4096
PID_WAIT = 60.0  # seconds to wait for a fork asked for while the zygote still imports


def available() -> bool:
    """A zygote needs fork, pidfds (Linux 5.3+) and fd passing; elsewhere workers are spawned."""
    return all(hasattr(os, name) for name in ("fork", "pidfd_open")) and hasattr(socket, "send_fds")


def thread_count() -> int:
    """Threads of this process as the kernel sees them (C threads too), else as Python does."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - no /proc
        return threading.active_count()


# --- the zygote's side ----------------------------------------------------------------------


def _preload(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception:  # an optional library that is absent or broken: workers import it
        pass


def _wake(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD only needs to wake the loop: the wakeup fd does that."""


def serve(sock_fd: int, preload: list[str]) -> tuple[int, int, int]:
    """Run the zygote until the parent goes. Returns only in a forked child, with its fds."""
    sock = socket.socket(fileno=sock_fd)
    try:
        eager, later, idle = list(preload), list[str](), list[str]()
        later_at: float | None = None  # when to move ``later`` to ``idle``
        if "" in eager:
            cut = eager.index("")
            eager, later = eager[:cut], eager[cut + 1 :]
        for name in eager:
            _preload(name)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, _wake)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            wait_ms = None if later_at is None else max(0, (later_at - time.monotonic()) * 1000)
            ready = poller.poll(0 if idle else wait_ms)
            if later_at is not None and time.monotonic() >= later_at:
                idle, later, later_at = later, [], None
            if not ready and idle:
                _preload(idle.pop(0))
                if not idle:
                    sock.send(pickle.dumps(("preloaded",)))
            for fd, events in ready:
                if fd == wake_r:
                    while len(os.read(wake_r, 512)) == 512:
                        pass
                    _reap(sock)
                    continue
                fds = _fork_request(sock, events)
                if fds == ():
                    if not later:
                        sock.send(pickle.dumps(("preloaded",)))
                    elif later_at is None:
                        later_at = time.monotonic() + LATER_DELAY
                elif len(fds or ()) == 3:  # the child: leave the zygote's loop behind
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for own in (wake_r, wake_w):
                        os.close(own)
                    sock.close()
                    numpy_random = sys.modules.get("numpy.random")
                    if numpy_random is not None:  # else every worker draws the same numbers
                        numpy_random.seed()
                    return fds  # type: ignore[return-value]  # three fds, as checked
    except OSError:
        pass  # the parent is gone (the socket broke): nobody to tell
    except BaseException:
        traceback.print_exc()
    os._exit(0)


def _fork_request(sock: socket.socket, events: int) -> tuple[int, int, int] | tuple[()] | None:
    """Serve one request: fork a worker; the child gets its fds back, the zygote ``None``
    (``()`` for a request to import the rest of its preload list)."""
    data, fds, _, _ = socket.recv_fds(sock, MESSAGE_BYTES, 3)
    if not data or events & select.POLLHUP:  # the parent closed the pool (or died): no more work
        os._exit(0)
    if data == b"preload":
        return ()
    threads = thread_count()
    if threads != 1 or threading.active_count() != 1:
        for fd in fds:
            os.close(fd)
        sock.send(pickle.dumps(("refused", f"the zygote runs {threads} threads; fork is unsafe")))
        return None
    # Every object the zygote holds (its imported libraries) goes to the permanent generation
    # before the fork: the child's garbage collections then never walk them. A walk writes to
    # each object's header, so in a forked child it copies every page of the zygote's heap
    # (copy-on-write), and on this VM fresh pages cost ~3 s/GiB: a worker spent ~0.3 s making
    # its first s3fs client and ~0.4 s more exiting. Objects never collected: the zygote's
    # cycles, which live as long as it does anyway.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        return fds[0], fds[1], fds[2]
    pidfd = os.pidfd_open(pid)  # before any reaping: it names this child, never a reused pid
    for fd in fds:
        os.close(fd)
    socket.send_fds(sock, [pickle.dumps(("forked", pid))], [pidfd])
    os.close(pidfd)
    return None


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(pickle.dumps(("exit", pid, os.waitstatus_to_exitcode(status))))


# --- the parent's side ----------------------------------------------------------------------


def _preload_list(imports: Sequence[str] = ()) -> tuple[str, ...]:
    names = os.environ.get(PRELOAD_ENV)
    found = PRELOAD if names is None else tuple(name.strip() for name in names.split(","))
    cut = found.index("") if "" in found else len(found)
    eager, later = found[:cut], found[cut:]
    extra = tuple(name for name in imports if name not in eager)  # asked for: before any fork
    return eager + extra + tuple(name for name in later if name not in extra)


class ZygoteGone(Exception):
    """The zygote refused a fork or died: start workers directly."""


class Zygote:
    """The parent's handle on a zygote: asks it for workers and learns how they exit."""

    def __init__(self, env: dict[str, str], boot: str, imports: Sequence[str] = ()) -> None:
        """Start a zygote whose workers run ``boot`` (a spawned worker's ``-c`` program), with
        ``imports`` imported before the first fork, after the preload list's eager part."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        env = dict(env)
        for name, value in ZYGOTE_ENV.items():
            env.setdefault(name, value)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    BOOT,
                    str(theirs.fileno()),
                    boot,
                    *_preload_list(imports),
                ],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            theirs.close()
        self.alive = True
        self.asked = False  # to preload the rest
        self.preloaded = False  # everything in PRELOAD imported: forks are as fast as they get
        self.why = ""  # why it is no longer used
        self.pending: deque[ForkedProcess] = deque()  # asked for, pid not yet known
        self.exits: dict[int, int] = {}
        self.lock = threading.RLock()

    def fork(self, fds: tuple[int, int, int]) -> ForkedProcess:
        """Ask for a worker that will own ``fds``; returns at once (the pid comes later)."""
        with self.lock:
            if not self.alive:
                raise ZygoteGone(self.why)
            try:
                socket.send_fds(self.sock, [b"fork"], list(fds))
            except OSError as exc:
                self.lost(f"it could not be reached ({exc})")
                raise ZygoteGone(self.why) from exc
            child = ForkedProcess(self)
            self.pending.append(child)
            return child

    def preload(self) -> None:
        """Let the zygote import the rest of its preload list (once; the first batch is done)."""
        with self.lock:
            if self.alive and not self.asked:
                self.asked = True
                try:
                    self.sock.send(b"preload")
                except OSError:
                    pass  # it is gone: the next fork finds out

    def pump(self, timeout: float) -> bool:
        """Handle one message from the zygote, waiting up to ``timeout`` s; False if none came."""
        with self.lock:
            if not self.alive or not select.select([self.sock], [], [], max(0.0, timeout))[0]:
                return False
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, MESSAGE_BYTES, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                code = self.proc.poll()
                self.lost("it exited" if code is None else f"it exited with code {code}")
                return False
            message = pickle.loads(data)
            if message[0] == "forked":
                child = self.pending.popleft()
                child._pid, child.pidfd = message[1], fds[0]
            elif message[0] == "preloaded":
                self.preloaded = True
            elif message[0] == "refused":
                self.pending.popleft().abandoned = True
                self.lost(f"it refused to fork: {message[1]}")
            else:
                self.exits[message[1]] = message[2]
            return True

    def lost(self, why: str) -> None:
        """Stop using the zygote; workers it was still to fork will never exist."""
        if self.alive:
            self.alive, self.why = False, why
        for child in self.pending:
            child.abandoned = True
        self.pending.clear()

    def close(self) -> None:
        """End the zygote and reap it. SIGKILL: it holds no work, its workers are reaped or live
        on by themselves, and it may be in the middle of a long import."""
        with self.lock:
            self.lost("the pool closed")
            self.sock.close()
        self.proc.kill()
        self.proc.wait()


class ForkedProcess:
    """A worker the zygote forked, with the part of ``subprocess.Popen``'s interface the pool
    uses. Its exit code is ``None`` when it cannot be known (the zygote died before it)."""

    def __init__(self, zygote: Zygote) -> None:
        self.zygote = zygote
        self._pid: int | None = None
        self.pidfd: int | None = None
        self.abandoned = False  # never forked, or given up on before its pid was known
        self.returncode: int | None = None
        self.done = False

    @property
    def pid(self) -> int | None:
        """The pid, once the zygote has forked it (waiting for that); ``None`` if it never will."""
        return self.resolve(PID_WAIT)

    def resolve(self, timeout: float) -> int | None:
        """The pid, waiting up to ``timeout`` s for the zygote to report the fork."""
        deadline = time.monotonic() + timeout
        while self._pid is None and not self.abandoned:
            if not self.zygote.pump(deadline - time.monotonic()) and (
                time.monotonic() >= deadline or not self.zygote.alive
            ):
                break
        return self._pid

    def send_signal(self, signum: int) -> None:
        if self.resolve(0) is None:
            self.abandoned = True  # it exits by itself: its task pipe is closed with the worker
            return
        if self.done or self.pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            if self._pid is None:
                if self.resolve(max(0.0, left)) is None and (
                    self.abandoned or not self.zygote.alive
                ):
                    self.finish(None)
                    break
            elif self._pid in self.zygote.exits:
                self.finish(self.zygote.exits.pop(self._pid))
                break
            elif self.zygote.alive:
                self.zygote.pump(max(0.0, left))
            elif self.pidfd is not None:  # orphaned: the pidfd still tells when it ends
                if select.select([self.pidfd], [], [], max(0.0, left))[0]:
                    self.finish(None)
                    break
            if deadline is not None and time.monotonic() >= deadline and not self.done:
                raise subprocess.TimeoutExpired(f"worker {self._pid}", timeout or 0.0)
        return self.returncode

    def finish(self, returncode: int | None) -> None:
        self.returncode, self.done = returncode, True
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
