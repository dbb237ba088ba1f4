"""Stopping is prompt everywhere: fail-fast never waits for a hung item, SIGTERM stops the CLI
like Ctrl-C, late worker log records arrive, and ``exec_fallback`` runs where the README says.

Anything that could hang runs in a subprocess with a timeout; every bound is generous (the hung
item sleeps for 600 s, the run must end within 20 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import backend_params

from batchcore import BatchNode, ItemTimeoutError

HERE = Path(__file__).parent
ROOT = HERE.parent
PROMPT = 20.0  # seconds: far above the ~1 s a stop takes, far below the 600 s a hung item sleeps


def run_script(tmp_path: Path, code: str, timeout: float = 100) -> dict[str, Any]:
    """Run ``code`` as a script (with a ``__main__`` guard, for Dask's spawned workers) and
    return the JSON it prints last; on a hang, its whole process group is killed."""
    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


HUNG_SIBLING = """
import json, os, sys, time
import batchcore
from batchcore import BatchNode

STARTED = {started!r}  # item 1 creates it: the hung sibling is under way

class OneFailsOneHangs(BatchNode):
    def prep(self, shared):
        return shared["items"]
    def exec(self, item):
        if item == 0:
            # Until the sibling is under way on the other worker; 0.5 s at most, as it may also
            # be queued behind this item on this worker (then it starts once this one failed).
            deadline = time.monotonic() + 0.5
            while not os.path.exists(STARTED) and time.monotonic() < deadline:
                time.sleep(0.01)
            raise ValueError("item 0 is bad")
        if item == 1:
            open(STARTED, "w").close()
            time.sleep(600)
        return item

class Square(BatchNode):
    def prep(self, shared):
        return shared["items"]
    def exec(self, item):
        return item * item
    def post(self, shared, prep_res, exec_res):
        shared["out"] = exec_res

if __name__ == "__main__":
    backend = batchcore.get_backend({backend!r}, 2)
    backend.start()
    Square(backend=backend).run({{"items": [1, 2]}})  # warm: time only the stop
    began = time.monotonic()
    try:
        OneFailsOneHangs(backend=backend, chunksize=1).run({{"items": [0, 1, 2, 3]}})
    except ValueError as exc:
        error = str(exc)
    stopped = time.monotonic() - began
    shared = {{"items": list(range(20))}}
    began = time.monotonic()
    Square(backend=backend, chunksize=1).run(shared)
    print(json.dumps({{"error": error, "stopped": stopped, "out": shared["out"],
                       "next": time.monotonic() - began}}))
"""


@pytest.mark.crash
@pytest.mark.parametrize("backend", backend_params(["thread", "process", "dask"]))
def test_fail_fast_does_not_wait_for_a_hung_sibling(tmp_path: Path, backend: str) -> None:
    """No ``timeout=``: the failure still reaches the caller at once; the next batch on the same
    backend runs on a full pool (the hung item's thread was abandoned and replaced)."""
    started = tmp_path / "item-1-started"
    report = run_script(tmp_path, HUNG_SIBLING.format(backend=backend, started=str(started)))
    assert report["error"] == "item 0 is bad"
    assert report["stopped"] < PROMPT, f"fail-fast waited {report['stopped']:.1f} s"
    assert report["out"] == [x * x for x in range(20)]
    assert report["next"] < PROMPT, f"the next batch took {report['next']:.1f} s"


def test_an_abandoned_thread_runs_no_further_item() -> None:
    """The abandoned thread finishes the item it is on, then runs nothing else of its job."""
    ran: list[int] = []
    threads: list[threading.Thread] = []
    started = threading.Event()
    release = threading.Event()

    class Gated(BatchNode):
        def prep(self, shared: Any) -> Any:
            return list(range(6))

        def exec(self, item: int) -> int:
            if item == 0:
                started.wait(30)  # until item 3, on the other thread, is under way
                raise ValueError("item 0 is bad")
            ran.append(item)
            threads.append(threading.current_thread())
            started.set()
            release.wait(30)  # held past the stop's grace: its thread is abandoned
            return item

    began = time.monotonic()
    with pytest.raises(ValueError, match="item 0 is bad"):
        Gated(backend="thread", workers=2, chunksize=3).run({})  # jobs [0, 1, 2] and [3, 4, 5]
    assert time.monotonic() - began < PROMPT
    assert ran == [3]
    release.set()
    threads[0].join(10)  # it finishes item 3 and ends (were it to run 4 and 5, they are quick)
    assert ran == [3]  # items 4 and 5, behind it in its job, never ran


# --- where exec_fallback runs --------------------------------------------------------------


class WhereFallback(BatchNode):
    """Item ``"hang"`` outlives ``timeout=``, item ``"raise"`` raises; the fallback says where it
    ran (pid, thread) and, for a timeout, with what error."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: str) -> Any:
        if item == "hang":
            time.sleep(2)  # 4 times the timeout; an abandoned thread is a leak until it ends
        if item == "raise":
            raise ValueError("bad")
        return ("ok", os.getpid(), threading.get_ident())

    def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
        return (type(exc).__name__, os.getpid(), threading.get_ident())

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["out"] = exec_res


def test_exec_fallback_placement(parallel_backend: str) -> None:
    """The README's table: after a timeout (or a crash) the fallback runs in the caller, on every
    backend; after ``exec`` raised, it runs where ``exec`` ran (the worker)."""
    node = WhereFallback(backend=parallel_backend, workers=2, chunksize=1, timeout=0.5)
    shared: dict[str, Any] = {"items": ["hang", "raise", "fine"]}
    node.run(shared)
    timed_out, raised, fine = shared["out"]
    caller = (os.getpid(), threading.get_ident())
    assert timed_out == ("ItemTimeoutError", *caller)  # in the caller, Dask included
    assert raised[0] == "ValueError"
    assert tuple(raised[1:]) != caller  # in the worker that ran exec
    if parallel_backend == "thread":
        assert raised[1] == os.getpid()
    else:
        assert raised[1] != os.getpid()
    assert fine[0] == "ok"


@pytest.mark.parametrize("backend", backend_params(["thread", "process", "dask"]))
def test_a_failing_fallback_after_a_timeout_fails_the_item(backend: str) -> None:
    class NoRescue(WhereFallback):
        def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
            raise exc

    node = NoRescue(backend=backend, workers=2, chunksize=1, timeout=0.5)
    with pytest.raises(ItemTimeoutError, match=r"item 1 \('hang'\)"):
        node.run({"items": ["fine", "hang", "fine"]})


# --- log records that arrive after the last result ------------------------------------------

LATE_LOG = """
import json, logging, threading, time
import batchcore
from batchcore import BatchNode

class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []
    def emit(self, record):
        self.messages.append(record.getMessage())

class LogsLate(BatchNode):
    def prep(self, shared):
        return [0, 1]
    def exec(self, item):
        log = logging.getLogger("late")
        threading.Thread(target=lambda: (time.sleep(0.5), log.warning("late %s", item))).start()
        return item

if __name__ == "__main__":
    handler = Collect()
    logging.getLogger("late").addHandler(handler)
    backend = batchcore.get_backend("process", 2)
    LogsLate(backend=backend, chunksize=1).run({})
    backend.close()
    print(json.dumps({"messages": sorted(handler.messages)}))
"""


@pytest.mark.crash
def test_late_worker_log_records_arrive_before_the_pool_closes(tmp_path: Path) -> None:
    assert run_script(tmp_path, LATE_LOG) == {"messages": ["late 0", "late 1"]}


# --- SIGTERM to the CLI ----------------------------------------------------------------------

# Loaded by every interpreter of the run (the CLI and its workers): each output's temporary file
# is created, then the write waits, so the stop always finds writes under way.
SLOW_WRITES = """
import os, time
delay = float(os.environ.get("BATCHCORE_TEST_SLOW_WRITE", "0"))
if delay:
    from batchcore.processors import files
    _write = files.write_atomically
    def write_atomically(final, write):
        def slow(temporary):
            time.sleep(delay)
            write(temporary)
        return _write(final, slow)
    _write_in = files.write_atomically_in
    def write_atomically_in(root, final, write):
        def slow(handle):
            time.sleep(delay)
            write(handle)
        return _write_in(root, final, slow)
    from batchcore.processors.csv import jobs as csv_jobs
    from batchcore.processors.images import io as images_io
    csv_jobs.write_atomically = write_atomically
    images_io.write_atomically_in = write_atomically_in
"""


def make_job(tmp_path: Path, job: str) -> tuple[list[str], Path]:
    """The CLI arguments of a job with many outputs, and its output folder."""
    out = tmp_path / "out"
    if job == "csv":
        source = tmp_path / "big.csv"
        rows = "".join(f"{i},{i % 7},{i * 0.5}\n" for i in range(20_000))
        source.write_text("id,group,amount\n" + rows)
        return ["csv", "to-parquet", str(source), str(out), "--chunk-bytes", "4000"], out
    from PIL import Image

    source = tmp_path / "images"
    source.mkdir()
    for index in range(60):
        Image.new("RGB", (32, 32), (index, 0, 0)).save(source / f"p{index:02d}.png")
    return ["images", str(source), "-o", str(out), "-f", "invert"], out


def descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids: list[int]) -> list[int]:
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            continue
    return living


@pytest.mark.crash
@pytest.mark.parametrize("to_group", [False, True], ids=["to-pid", "to-group"])
@pytest.mark.parametrize("job", ["csv", "images"])
@pytest.mark.parametrize("backend", ["process", "thread"])
def test_sigterm_stops_the_cli_like_ctrl_c(
    tmp_path: Path, backend: str, job: str, to_group: bool
) -> None:
    """A supervisor's SIGTERM, to the CLI's pid (``kill PID``, Docker) or to its whole group
    (systemd): one line on stderr, exit 143, no process left behind, no temporary file left in
    the output folder."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SLOW_WRITES))
    argv, out = make_job(tmp_path, job)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "BATCHCORE_TEST_SLOW_WRITE": "0.3",
    }
    command = [sys.executable, "-m", "batchcore", *argv, "--backend", backend, "--workers", "2"]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # a group of its own, so cleanup can reach strays
    )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            seen.update(descendants(proc.pid))
            # parts go to a staging folder beside ``out`` (``.out.staging-*``), images to ``out``
            written = [p for p in tmp_path.glob("*out*/**/*") if p.is_file()]
            written += [p for p in tmp_path.glob(".out.staging-*/**/*") if p.is_file()]
            if written:
                break  # the job is well under way: outputs are appearing
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be stopped"
        seen.update(descendants(proc.pid))
        sent = time.monotonic()
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PROMPT)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    if backend == "process":
        assert seen, "no worker process was seen: the check below would prove nothing"
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["batchcore: terminated"], err
    assert elapsed < PROMPT
    deadline = time.monotonic() + 5
    while alive(sorted(seen)) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = alive(sorted(seen))
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], "processes outlived the CLI"
    temporary = [p.name for p in out.rglob(".*") if p.name.endswith(".tmp")]
    assert temporary == []


def test_the_cli_restores_the_sigterm_handler_it_replaced(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from batchcore.processors.cli import main
    from batchcore.processors.cli.errors import EXIT_TERMINATED, Terminated, exit_code

    before = signal.getsignal(signal.SIGTERM)
    assert main(["--version"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
    assert exit_code(Terminated()) == EXIT_TERMINATED == 143
    assert isinstance(Terminated(), KeyboardInterrupt)  # every Ctrl-C cleanup path applies
    capsys.readouterr()
