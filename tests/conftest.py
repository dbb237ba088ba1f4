"""Shared fixtures: the backend parameter (from the registry), a leak check, hypothesis profiles."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow.csv as pyarrow_csv
import pytest
import tqdm
from hypothesis import HealthCheck, settings

import batchcore
from batchcore.backends import base, shm
from batchcore.processors.parallel_reads import THREAD_NAME as GET_THREADS

settings.register_profile(
    "default",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

try:
    import distributed  # noqa: F401

    HAS_DASK = True
except ImportError:
    HAS_DASK = False


def backend_params(names: list[str]) -> list[Any]:
    """Backend names as pytest params; Dask is skipped only when its extra is not installed."""
    params = []
    for name in names:
        marks = []
        if name == "dask":
            marks = [
                pytest.mark.dask,
                pytest.mark.skipif(not HAS_DASK, reason='needs pip install "batchcore[dask]"'),
            ]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


BACKENDS = batchcore.available_backends()
PARALLEL_BACKENDS = [name for name in BACKENDS if name != "sequential"]
LOCAL_BACKENDS = [name for name in BACKENDS if name != "dask"]


@pytest.fixture(params=backend_params(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """Every registered backend, by name: a new backend is tested without editing tests."""
    return str(request.param)


@pytest.fixture(params=backend_params(PARALLEL_BACKENDS))
def parallel_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pool_worker_pids(descendants: list[psutil.Process] | None = None) -> set[int]:
    """Pids of the warm workers that live backends keep on purpose (process pools and their
    zygotes, and the processes of a Dask LocalCluster a Dask backend started). ``descendants``:
    this process's, when the caller has just listed them (a listing reads every /proc/PID)."""
    pids: set[int] = set()
    live = list(base._LIVE)
    for backend in live:
        if backend.name == "process":
            for pool in backend._idle:  # type: ignore[attr-defined]
                pids.update(worker.proc.pid for worker in pool.workers)
                if pool.zygote is not None:  # the fork server that starts its workers
                    pids.add(pool.zygote.proc.pid)
    if HAS_DASK:
        if any(getattr(b, "_cluster", None) is not None for b in live if b.name == "dask"):
            if descendants is None:
                descendants = psutil.Process().children(recursive=True)
            for child in descendants:
                try:
                    command = " ".join(child.cmdline())
                    if "multiprocessing" in command and "resource_tracker" not in command:
                        pids.add(child.pid)
                except psutil.Error:
                    continue
    return pids


def _stray_children(
    before: set[int], descendants: list[psutil.Process] | None = None
) -> list[psutil.Process]:
    if descendants is None:
        descendants = psutil.Process().children(recursive=True)
    allowed = before | pool_worker_pids(descendants)
    strays = []
    for child in descendants:
        try:
            if child.pid in allowed or child.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(child.cmdline()):
                continue  # multiprocessing's (Dask starts it): one per program, lives until exit
            strays.append(child)
        except psutil.NoSuchProcess:
            continue
    return strays


# --- the leak check: processes, escaped grandchildren, threads, fds, temp files -----------------
#
# Every process this session starts inherits MARK in its environment, so a CLI's workers that
# outlive the CLI (reparented to init, out of reach of ``children()``) are still found as ours.
# Threads and fds that warm components keep on purpose are allowed, and only those:
# - threads: the idle thread-pool workers of live thread backends; Dask's own threads while a
#   Dask backend holds a client or a cluster (a test fixture's) runs (its event loop, offload
#   and comm executors), and the two thread pools distributed keeps for the whole program;
#   tqdm's monitor; fsspec's event-loop thread (one per program, for async filesystems: s3fs)
#   and its loop's default executor;
# - fds: while no warm component was started, replaced or closed, the fd table must come back
#   to what it was; when one was, new pipes, sockets, event fds and memfds are its own (regular
#   files never are); a live Dask client's sockets (its connection pool) and scratch folder;
#   the pipes the session's first Dask cluster leaves open for good (resource tracker, queue);
#   a live pool worker's /proc/PID/statm (read for max_memory); once fsspec's event loop runs,
#   its epoll and event fds and the connection pools of cached filesystems (sockets);
# Temporary files: the session's temp folder (TMPDIR, for subprocesses too; Dask's shared
# ``dask-scratch-space`` excepted) and this process's shared-memory files (``batchcore-PID-*``
# in /dev/shm, other than a live worker's kept file).

MARK = f"{os.getpid()}-{os.urandom(4).hex()}"
MARK_ENV = "BATCHCORE_TEST_SESSION"
GRACE_SECONDS = 5.0
# The modules whose threads belong to a live Dask client or LocalCluster (their event loops,
# executors and comms): allowed only while a Dask backend holds a client.
DASK_THREAD_MODULES = (
    "distributed",
    "tornado",
    "dask",
    "concurrent.futures",
    "asyncio",
    "multiprocessing",  # the queue feeders of a LocalCluster's nannies
)
DASK_SCRATCH = "dask-scratch-space"  # Dask's work folder in the temp folder, shared and reused
# Thread pools distributed creates once per program (``distributed.utils._offload_executor``,
# ``Future._cb_executor``); the first one's start also marks the first cluster of the session.
DASK_PROGRAM_THREADS = ("Dask-Offload", "Dask-Callback-Thread")
FSSPEC_LOOP_THREAD = "fsspecIO"  # fsspec.asyn's one event-loop thread, for the whole program


def _marked_processes() -> list[psutil.Process]:
    """Processes of this session other than this one (every process started by a test)."""
    needle = f"{MARK_ENV}={MARK}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            proc = psutil.Process(int(name))
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _escaped_grandchildren(descendants: list[psutil.Process]) -> list[psutil.Process]:
    """Marked processes that are no descendant of this one: orphans of a subprocess it ran
    (one an earlier test left was killed then, so every one found is this test's)."""
    ours = {child.pid for child in descendants}
    return [p for p in _marked_processes() if p.pid not in ours]


def _live_dask_clusters() -> list[Any]:
    """Dask clusters of this process not yet closed (a backend's, or a test fixture's own)."""
    if not HAS_DASK:
        return []
    from distributed.deploy.spec import SpecCluster

    return [c for c in list(SpecCluster._instances) if str(c.status.name) != "closed"]


def _dask_holds_a_client() -> bool:
    """Whether Dask is warm: a backend holds a client, or a cluster (a fixture's) is running."""
    if any(getattr(b, "_client", None) is not None for b in list(base._LIVE)):
        return True
    return bool(_live_dask_clusters())


def _thread_module(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    return str(getattr(target, "__module__", None) or type(thread).__module__)


def _warm_threads() -> set[int]:
    """Idents of the threads live components keep on purpose (see the note above)."""
    idents: set[int] = set()
    for backend in list(base._LIVE):
        if backend.name == "thread":
            for pool in backend._idle:  # type: ignore[attr-defined]
                idents.update(w.thread.ident for w in pool.workers if w.thread.ident)
    dask_warm = HAS_DASK and _dask_holds_a_client()
    monitors = _tqdm_monitors()
    for thread in threading.enumerate():
        if thread in monitors or (HAS_DASK and thread.name.startswith(DASK_PROGRAM_THREADS)):
            idents.add(thread.ident or 0)
        elif thread.name == FSSPEC_LOOP_THREAD or thread in _fsspec_executor_threads():
            idents.add(thread.ident or 0)
        elif thread.name.startswith(GET_THREADS):  # parallel_reads' pool, kept for the next read
            idents.add(thread.ident or 0)
        elif dask_warm and _thread_module(thread).startswith(DASK_THREAD_MODULES):
            idents.add(thread.ident or 0)
    return idents


def _tqdm_monitors() -> list[Any]:
    """The monitor thread each tqdm class keeps (``tqdm.auto`` bars are a subclass's)."""
    classes: list[type[Any]] = [tqdm.tqdm]
    monitors = []
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if "monitor" in vars(cls) and cls.monitor is not None:
            monitors.append(cls.monitor)
    return monitors


def _stray_threads(before: set[int]) -> list[threading.Thread]:
    warm = _warm_threads()
    return [
        t
        for t in threading.enumerate()
        if t.is_alive() and t.ident not in before and t.ident not in warm
    ]


def _warm_state(descendants: list[psutil.Process] | None = None) -> frozenset[Any]:
    """What warm components exist: any change excuses new pipes and sockets (they are theirs)."""
    state: set[Any] = set(pool_worker_pids(descendants))
    for backend in list(base._LIVE):
        state.update(id(pool) for pool in getattr(backend, "_idle", ()))
        if getattr(backend, "_client", None) is not None:
            state.add(id(backend._client))  # type: ignore[attr-defined]
    state.update(id(cluster) for cluster in _live_dask_clusters())
    return frozenset(state)


def _open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own fd, closed already
    return fds


def _fsspec_executor_threads() -> set[threading.Thread]:
    """The threads of fsspec's loop's default executor (aiohttp resolves host names there)."""
    asyn = sys.modules.get("fsspec.asyn")
    loop = getattr(asyn, "loop", [None])[0] if asyn is not None else None
    executor = getattr(loop, "_default_executor", None)
    return set(getattr(executor, "_threads", ()))


def _fsspec_loop_runs() -> bool:
    asyn = sys.modules.get("fsspec.asyn")
    return asyn is not None and getattr(asyn, "loop", [None])[0] is not None


def _leaked_fds(before: dict[int, str], warm_changed: bool) -> list[str]:
    dask_warm = HAS_DASK and _dask_holds_a_client()
    fsspec_loop = _fsspec_loop_runs()
    leaked = []
    for fd, target in _open_fds().items():
        if before.get(fd) == target:
            continue
        if warm_changed and (not target.startswith("/") or target.startswith("/memfd:")):
            continue  # a pipe, socket, event fd or memfd of a pool started or replaced meanwhile
        if dask_warm and (target.startswith("socket:") or DASK_SCRATCH in target):
            continue  # a live Dask client's connection pool and its cluster's work folder
        if fsspec_loop and target.startswith(("socket:", "anon_inode:")):
            continue  # fsspec's event loop and the connection pools of cached filesystems
        if _a_live_workers_statm(target):
            continue  # a pool under max_memory keeps each worker's /proc/PID/statm open
        leaked.append(f"{fd} -> {target}")
    return leaked


def _a_live_workers_statm(target: str) -> bool:
    parts = target.split("/")  # /proc/PID/statm
    return (
        len(parts) == 4
        and parts[1] == "proc"
        and parts[3] == "statm"
        and parts[2].isdigit()
        and int(parts[2]) in pool_worker_pids()
    )


def _shm_files() -> set[str]:
    folder = shm.SHARED_DIR
    mine = f"{shm.PREFIX}{os.getpid()}-"
    return {os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(mine)}


def _kept_for_a_live_worker(path: str) -> bool:
    """A file a live worker's messages freed, kept for the next message until the pool closes."""
    name = os.path.basename(path)
    worker = int(name.split("-")[2])
    return "-free" in name and worker in pool_worker_pids()


def _temp_files(folder: Path) -> set[str]:
    return {str(folder / name) for name in os.listdir(folder) if name != DASK_SCRATCH}


@dataclass
class Resources:
    """What a test may leak, as it was before the test."""

    children: set[int]
    threads: set[int]
    fds: dict[int, str]
    warm: frozenset[Any]
    shm: set[str]
    temps: set[str]

    @classmethod
    def now(cls, temp_dir: Path) -> Resources:
        descendants = psutil.Process().children(recursive=True)  # listed once: see leaks()
        return cls(
            children={child.pid for child in descendants},
            threads={t.ident or 0 for t in threading.enumerate()},
            fds=_open_fds(),
            warm=_warm_state(descendants),
            shm=_shm_files(),
            temps=_temp_files(temp_dir),
        )

    def started_dask(self) -> bool:
        """Whether this test started distributed for the first time in the session: the pipes
        multiprocessing then opens for good (its resource tracker's, a nanny queue's) are its."""
        return any(
            t.name.startswith(DASK_PROGRAM_THREADS[0]) and t.ident not in self.threads
            for t in threading.enumerate()
        )

    def leaks(self, temp_dir: Path) -> dict[str, list[Any]]:
        """Everything left behind since ``self``, by kind (empty lists when clean)."""
        # One listing of this process's descendants for every check below: each listing reads
        # every /proc/PID/stat on the machine, and this runs after every test.
        descendants = psutil.Process().children(recursive=True)
        return {
            "child processes": _stray_children(self.children, descendants),
            "escaped grandchildren": _escaped_grandchildren(descendants),
            "threads": _stray_threads(self.threads),
            "file descriptors": _leaked_fds(
                self.fds, _warm_state(descendants) != self.warm or self.started_dask()
            ),
            "shared-memory files": sorted(
                p for p in _shm_files() - self.shm if not _kept_for_a_live_worker(p)
            ),
            "temporary files": sorted(_temp_files(temp_dir) - self.temps),
        }


def _describe(kind: str, things: list[Any]) -> str:
    if kind in ("child processes", "escaped grandchildren"):
        described = []
        for proc in things:
            try:
                described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            except psutil.Error:
                described.append(str(proc.pid))
        return f"{kind}: {described}"
    if kind == "threads":
        return f"{kind}: {[f'{t.name} ({_thread_module(t)})' for t in things]}"
    return f"{kind}: {things}"


def _clean_up(leaks: dict[str, list[Any]]) -> None:
    """Kill and remove what a failed test left, so one failure does not cascade."""
    for proc in [*leaks["child processes"], *leaks["escaped grandchildren"]]:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    for path in [*leaks["shared-memory files"], *leaks["temporary files"]]:
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


@pytest.fixture(autouse=True, scope="session")
def session_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temp folder of this session's own (for its subprocesses too, through TMPDIR), so the
    leak check can tell our temporary files from other programs'; and the process MARK."""
    folder = tmp_path_factory.mktemp("tempdir", numbered=False)
    saved = tempfile.tempdir, os.environ.get("TMPDIR"), os.environ.get(MARK_ENV)
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)
    os.environ[MARK_ENV] = MARK
    # pyarrow's first CSV read opens a self-pipe (its signal-based stop) kept for the whole
    # program: opened here, it is no test's leak.
    pyarrow_csv.read_csv(io.BytesIO(b"a\n1\n"))
    yield folder
    tempfile.tempdir = saved[0]
    for name, value in (("TMPDIR", saved[1]), (MARK_ENV, saved[2])):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True, scope="session")
def close_backends_at_the_end(session_temp_dir: Path) -> Iterator[None]:
    """Close warm pools and clusters while pytest's output streams are still open (at interpreter
    exit, a closing Dask scheduler would log into streams pytest has already closed)."""
    yield
    batchcore.shutdown()


@pytest.fixture(autouse=True)
def no_leaks(session_temp_dir: Path) -> Iterator[None]:
    """Fail a test that leaves behind a child process (also one its subprocess orphaned), a
    thread, a file descriptor, a shared-memory file or a temporary file, other than what warm
    pools keep on purpose; waits up to GRACE_SECONDS for things that are on their way out."""
    before = Resources.now(session_temp_dir)
    yield
    deadline = time.monotonic() + GRACE_SECONDS
    leaks = before.leaks(session_temp_dir)
    while any(leaks.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
        leaks = before.leaks(session_temp_dir)
    if any(leaks.values()):
        _clean_up(leaks)
        found = "; ".join(_describe(kind, things) for kind, things in leaks.items() if things)
        pytest.fail(f"test left behind {found}")


# --- a real S3-compatible server on loopback (moto, tests/s3server.py) -------------------------
#
# The session's server is started by the first test that asks for it and stopped at the end.
# pytest sets up session-scoped fixtures before function-scoped ones, so the server process, its
# pipes, and the threads s3fs keeps for the program (warmed there) exist before ``no_leaks`` takes
# its snapshot: they are no test's leak. What a test opens itself (s3fs connections, a private
# server) is closed by fixtures that request ``no_leaks``, so they are torn down before it checks.


@pytest.fixture(autouse=True, scope="session")
def aws_sandbox() -> Iterator[None]:
    """For the whole session (subprocesses too): no AWS client reads ``~/.aws`` or the developer's
    AWS_* credentials, asks instance metadata, or defaults to a real endpoint."""
    from s3server import AWS_SANDBOX

    saved = {name: os.environ.get(name) for name in AWS_SANDBOX}
    for name, value in AWS_SANDBOX.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    yield
    for name, old in saved.items():
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _start_s3_server(auth: bool = False) -> Any:
    pytest.importorskip("moto")
    pytest.importorskip("flask", reason='the server needs "moto[server]"')
    from s3server import start_server

    return start_server(auth=auth)


@pytest.fixture(scope="session")
def s3_server(aws_sandbox: None) -> Iterator[Any]:
    """The session's ``s3server.S3Server``: ``.endpoint_url`` (``http://127.0.0.1:PORT``),
    ``.key``/``.secret`` (fake: any are accepted), ``.storage_options()``, ``.client()``."""
    from s3server import warm_s3fs

    server = _start_s3_server()
    try:
        warm_s3fs(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_auth_server(s3_server: Any) -> Iterator[Any]:
    """A second server that checks credentials like AWS (moto's IAM checks on): only its
    ``.key``/``.secret`` are accepted; a wrong secret is SignatureDoesNotMatch (access denied),
    an unknown key InvalidAccessKeyId."""
    server = _start_s3_server(auth=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def s3_connections_closed(no_leaks: None) -> Iterator[None]:
    """Close the connections cached s3fs filesystems keep (they reconnect when used again)
    before the leak check looks; nothing to do in tests that never imported s3fs."""
    yield
    from s3server import close_s3fs_sessions

    close_s3fs_sessions()


@pytest.fixture
def s3_bucket(s3_server: Any, no_leaks: None) -> Iterator[str]:
    """The name of a fresh, empty bucket on ``s3_server``; emptied and deleted after the test."""
    from s3server import close_s3fs_sessions, create_bucket, delete_bucket, new_bucket_name

    bucket = new_bucket_name()
    create_bucket(s3_server, bucket)
    yield bucket
    close_s3fs_sessions()
    delete_bucket(s3_server, bucket)


@pytest.fixture
def s3_storage_options(s3_server: Any) -> dict[str, Any]:
    """What a user passes to fsspec/s3fs for ``s3_server``:
    ``{"endpoint_url": ..., "key": ..., "secret": ...}`` (a new dict each test)."""
    options: dict[str, Any] = s3_server.storage_options()
    return options


@pytest.fixture
def s3_put(s3_server: Any, s3_bucket: str) -> Any:
    """``s3_put(key, data) -> "s3://BUCKET/key"``: uploads bytes or a local file to the bucket."""
    from s3server import put_object

    def put(key: str, data: bytes | str | Path) -> str:
        return put_object(s3_server, s3_bucket, key, data)

    return put


@pytest.fixture
def stoppable_s3_server(s3_server: Any, no_leaks: None) -> Iterator[Any]:
    """A private server (``s3server.S3Server``) the test may ``.kill()`` or ``.stop()`` mid-run;
    stopped after the test in any case. (It needs ``s3_server`` only for s3fs's warm threads.)"""
    server = _start_s3_server()
    try:
        yield server
    finally:
        server.stop()
