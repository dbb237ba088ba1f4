"""Ctrl-C, a killed parent, memory: scenarios run in a subprocess so they cannot hang the suite."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

HERE = Path(__file__).parent

LONG_BATCH = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import batchcore
    from faulty import FaultyNode

    backend = batchcore.get_backend({backend!r}, 2)
    if {backend!r} == "process":
        backend.start()
        pool = backend._idle[0]
        print("pids", *[w.proc.pid for w in pool.workers], flush=True)
    node = FaultyNode(backend={backend!r}, workers=2, chunksize=1)
    node.set_params({{"kind": "raise", "bad": (), "delay": 30, "marker_dir": {marks!r}}})
    print("started", flush=True)
    try:
        node.run({{"items": list(range(20))}})
    except KeyboardInterrupt:
        print("interrupted", time.monotonic(), flush=True)
        raise
    """
)


def start(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal job
    )


def read_until(proc: subprocess.Popen[str], word: str) -> list[str]:
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(word):
            return lines
    raise AssertionError(f"no {word!r} line; stderr: {proc.stderr.read() if proc.stderr else ''}")


def long_batch(backend: str, marks: Path) -> str:
    """LONG_BATCH on ``backend``; each item's attempt leaves a file in ``marks`` as it starts."""
    return LONG_BATCH.format(tests=str(HERE), backend=backend, marks=str(marks))


def wait_for_items(marks: Path, count: int) -> None:
    """Until ``count`` items have started (each then sleeps 30 s): both workers are busy."""
    deadline = time.monotonic() + 60
    while len(list(marks.glob("attempt-*"))) < count:
        assert time.monotonic() < deadline, "the workers never started their items"
        time.sleep(0.01)


def worker_pids(lines: list[str]) -> list[int]:
    for line in lines:
        if line.startswith("pids"):
            return [int(pid) for pid in line.split()[1:]]
    return []


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


@pytest.mark.crash
@pytest.mark.parametrize("to_group", [True, False], ids=["terminal-ctrl-c", "sigint-to-parent"])
def test_ctrl_c_stops_a_process_batch_quickly_and_leaves_no_worker(
    to_group: bool, tmp_path: Path
) -> None:
    proc = start(long_batch("process", tmp_path))
    try:
        lines = read_until(proc, "started")
        pids = worker_pids(lines)
        assert len(pids) == 2
        wait_for_items(tmp_path, 2)  # the workers are now inside 30-second items
        sent = time.monotonic()
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - sent
        assert "KeyboardInterrupt" in err
        assert "interrupted" in out
        assert elapsed < 3, f"took {elapsed:.1f} s to stop"
        assert wait_gone(pids, 2) == []
        assert err.count("Traceback") == 1, err  # the parent's own; workers print nothing
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.crash
def test_ctrl_c_stops_a_thread_batch(tmp_path: Path) -> None:
    proc = start(long_batch("thread", tmp_path))
    try:
        read_until(proc, "started")
        wait_for_items(tmp_path, 2)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert "KeyboardInterrupt" in err
        assert time.monotonic() - sent < 3  # abandoned threads are daemons: exit is not blocked
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.crash
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    proc = start(long_batch("process", tmp_path))
    try:
        pids = worker_pids(read_until(proc, "started"))
        wait_for_items(tmp_path, 2)
        proc.kill()
        proc.wait()
        assert wait_gone(pids, 5) == []
    finally:
        proc.kill()
        proc.communicate()


MEMORY = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import batchcore
    from batchcore import BatchNode

    def peak_kib():
        # VmHWM, this address space's peak: ru_maxrss would carry the peak of the parent that
        # started this process (Linux keeps it across the vfork and exec that start us).
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))

    class Nothing(BatchNode):
        def __init__(self, count, **options):
            super().__init__(**options)
            self.count = count
        def prep(self, shared):
            return (i for i in range(self.count))
        def exec(self, item):
            return None
        def post(self, shared, prep_res, exec_res):
            shared["n"] = len(exec_res)

    backend = batchcore.get_backend({backend!r}, 2)
    # Imports, the pool and the allocators' first arenas, with a batch far too small to set the
    # high-water mark: the peak measured next is this run's own.
    Nothing(1000, backend=backend).run({{}})
    before = peak_kib()
    shared = {{}}
    Nothing(1_000_000, backend=backend).run(shared)
    after = peak_kib()
    print(json.dumps({{"n": shared["n"], "growth_kib": after - before}}))
    """
)


def peak_growth(backend: str) -> float:
    """MiB the parent's peak RSS rose during one 1,000,000-item batch, in a fresh interpreter."""
    code = MEMORY.format(tests=str(HERE), backend=backend)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=True
    )
    report = json.loads(result.stdout)
    assert report["n"] == 1_000_000
    return float(report["growth_kib"]) / 1024


@functools.cache
def sequential_peak_growth() -> float:
    """``peak_growth("sequential")``, measured once for both backends compared with it (the
    sequential run of a million items is the slowest of the three, about 3 s)."""
    return peak_growth("sequential")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_million_item_generator_costs_the_parent_no_more_than_sequential(backend: str) -> None:
    # post receives the list of 1,000,000 results (8 MiB of pointers) on every backend; what the
    # backend itself adds on top must stay small: the input is never materialised (a list of
    # the million items would add about 38 MiB: 8 MiB of pointers and 30 MiB of ints).
    sequential = sequential_peak_growth()
    assert sequential > 4, f"sequential grew only {sequential:.1f} MiB: the peak was set earlier"
    extra_mib = peak_growth(backend) - sequential
    assert extra_mib < 8, f"{backend} used {extra_mib:.1f} MiB more than sequential"


def test_pools_shut_down_at_interpreter_exit() -> None:
    code = LONG_BATCH.split("node = FaultyNode")[0].format(tests=str(HERE), backend="process")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    pids = worker_pids(result.stdout.splitlines())
    assert len(pids) == 2
    assert wait_gone(pids, 2) == []  # the interpreter exited normally and took its workers along


def test_a_parent_running_threads_is_safe() -> None:
    """pyarrow and pandas start threads; workers are fresh interpreters, never forked copies."""
    code = textwrap.dedent(
        f"""
        import sys, threading, time
        sys.path.insert(0, {str(HERE)!r})
        import pyarrow as pa, pyarrow.compute as pc
        from faulty import Square
        pc.sum(pa.array(range(1_000_000)))  # starts Arrow's thread pool
        busy = threading.Thread(target=lambda: time.sleep(5), daemon=True)
        busy.start()
        shared = {{"items": list(range(100))}}
        Square(backend="process", workers=2).run(shared)
        print(sum(shared["out"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(sum(x * x for x in range(100)))
