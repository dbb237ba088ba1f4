"""The leak check itself (``conftest.Resources``): each kind of leak it covers is seen, then
cleaned up here, so the autouse check after each of these tests finds nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from conftest import Resources

from batchcore.backends import shm


def test_a_thread_left_running_is_seen(session_temp_dir: Path) -> None:
    before = Resources.now(session_temp_dir)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)  # daemon threads count too
    thread.start()
    try:
        assert before.leaks(session_temp_dir)["threads"] == [thread]
    finally:
        stop.set()
        thread.join()
    assert before.leaks(session_temp_dir)["threads"] == []


def test_an_open_file_and_a_pipe_are_seen(session_temp_dir: Path) -> None:
    before = Resources.now(session_temp_dir)
    read, write = os.pipe()
    with open(__file__, "rb") as handle:
        leaked = before.leaks(session_temp_dir)["file descriptors"]
        assert f"{handle.fileno()} -> {__file__}" in leaked
        assert any(entry.startswith(f"{read} -> pipe:") for entry in leaked)
    os.close(read)
    os.close(write)
    assert before.leaks(session_temp_dir)["file descriptors"] == []


def test_temporary_and_shared_memory_files_are_seen(session_temp_dir: Path) -> None:
    before = Resources.now(session_temp_dir)
    fd, temporary = tempfile.mkstemp()  # the session's temp folder: TMPDIR points there
    os.close(fd)
    shared = Path(shm.SHARED_DIR, f"{shm.PREFIX}{os.getpid()}-1-probe")
    shared.write_bytes(b"x")
    try:
        leaks = before.leaks(session_temp_dir)
        assert leaks["temporary files"] == [temporary]
        assert leaks["shared-memory files"] == [str(shared)]
    finally:
        os.unlink(temporary)
        shared.unlink()


def test_a_grandchild_whose_parent_exited_is_seen(session_temp_dir: Path) -> None:
    """A CLI's worker outliving the CLI is reparented away from us: the marker finds it."""
    before = Resources.now(session_temp_dir)
    started = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " start_new_session=True,"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print(p.pid)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    orphan = psutil.Process(int(started.stdout))
    try:
        assert orphan not in psutil.Process().children(recursive=True)
        assert [p.pid for p in before.leaks(session_temp_dir)["escaped grandchildren"]] == [
            orphan.pid
        ]
    finally:
        orphan.kill()
        # Gone once it is a zombie (exited; nothing of it runs): init reaps an orphan when it
        # gets to it, which can take a second or more (psutil's wait() waits for that).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if orphan.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
