"""csv_to_parquet's outputs are durable and all-or-nothing: every file is fsynced before its rename,
a dataset appears (or replaces the old one) whole, a failed or killed run leaves no partial dataset
and the old one intact, and a second writer is refused without touching anything."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from csv_helpers import SALES, write_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcore.processors import files
from batchcore.processors.cli import main
from batchcore.processors.csv.jobs import ParquetNode, csv_to_parquet
from batchcore.processors.errors import CsvFormatError, UsageError

OLD_CHUNK = 40_000  # SALES in 11 parts: the dataset an overwrite replaces
NEW_CHUNK = 150_000  # SALES in 3 parts: the new one, so a mix of the two shows
IN_PROCESS = ["sequential", "thread"]  # where a monkeypatch reaches the code that writes parts


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (hidden ones too): its bytes and mtime."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def dataset_files(out: Path) -> list[str]:
    return sorted(os.listdir(out))


def whole(names: list[str], parts: int) -> bool:
    return names == sorted([f"part-{i:05d}.parquet" for i in range(parts)] + ["_SUCCESS"])


def assert_whole_sales(out: Path, parts: int) -> None:
    """``out`` is one complete dataset of SALES in ``parts`` parts, readable by pandas too."""
    assert whole(dataset_files(out), parts), dataset_files(out)
    assert json.loads((out / "_SUCCESS").read_text())["parts"] == parts
    assert pq.read_table(out).num_rows == 5000
    assert len(pd.read_parquet(out)) == 5000


BAD_CHUNK = 250_000  # the file below in 8 ranges


def late_type_error_csv(path: Path) -> Path:
    """150,000 rows of ints (1.8 MB) whose last but ten holds text: the head (1 MiB) makes the
    column int64, so only the last range fails, after the earlier ones have written their parts."""
    lines = ["id,value"] + [f"{i},{i * 3}" for i in range(150_000)]
    lines[149_990] = "149989,not-a-number"
    return write_bytes(path, "\n".join(lines) + "\n")


# --- fsync -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", IN_PROCESS)
def test_every_output_is_fsynced_before_its_rename_and_its_folder_after(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For every part and ``_SUCCESS``: the file is fsynced, then renamed, then its folder is
    fsynced; the staging folder is fsynced before the swap and the parent folder after it."""
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, chunk_bytes=OLD_CHUNK)  # so the run below swaps (exchange)
    events: list[tuple[str, ...]] = []
    lock = threading.Lock()
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
    real_exchange = files._exchange

    def fsync(fd: int) -> None:
        with lock:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(kind: str, real: Any) -> Any:
        def call(source: Any, target: Any) -> Any:
            result = real(source, target)
            with lock:
                events.append((kind, os.fspath(source), os.fspath(target)))
            return result

        return call

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", rename("rename", real_replace))
    monkeypatch.setattr(os, "rename", rename("rename", real_rename))
    monkeypatch.setattr(files, "_exchange", rename("exchange", real_exchange))
    result = csv_to_parquet(
        SALES, out, chunk_bytes=NEW_CHUNK, overwrite=True, backend=backend, workers=2
    )
    assert_whole_sales(out, result["parts"])
    renames = {Path(e[2]).name: i for i, e in enumerate(events) if e[0] == "rename"}
    swap = next(
        i for i, e in enumerate(events) if e[0] in ("exchange", "rename") and e[2] == str(out)
    )
    staging = Path(events[swap][1])
    for name in dataset_files(out):
        at = renames[name]
        source, target = events[at][1:]
        assert Path(target) == staging / name, (name, target)
        assert ("fsync", source) in events[:at], f"{name} renamed before it was fsynced"
        assert ("fsync", str(staging)) in events[at + 1 : swap], f"{name}: folder not fsynced"
        assert at < swap
    assert events[swap - 1] == ("fsync", str(staging))
    assert ("fsync", str(tmp_path)) in events[swap + 1 :]


# --- failures --------------------------------------------------------------------------------


def test_a_failed_overwrite_leaves_the_old_dataset_intact(backend: str, tmp_path: Path) -> None:
    """A type error in a later range: the earlier ranges' parts never reach ``out``, whose old
    dataset is untouched, byte for byte; nothing else is left beside it."""
    bad = late_type_error_csv(tmp_path / "bad.csv")
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, chunk_bytes=OLD_CHUNK)
    before = tree(out)
    with pytest.raises(CsvFormatError, match="not-a-number"):
        csv_to_parquet(
            bad,
            out,
            chunk_bytes=BAD_CHUNK,
            overwrite=True,
            backend=backend,
            workers=2,
        )
    assert tree(out) == before
    assert_whole_sales(out, 11)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "ds"]


@pytest.mark.parametrize("existing", ["missing", "empty"])
def test_a_failed_run_leaves_no_readable_partial_dataset(
    backend: str, existing: str, tmp_path: Path
) -> None:
    bad = late_type_error_csv(tmp_path / "bad.csv")
    out = tmp_path / "ds"
    if existing == "empty":
        out.mkdir()
    with pytest.raises(CsvFormatError):
        csv_to_parquet(bad, out, chunk_bytes=BAD_CHUNK, backend=backend, workers=2)
    if existing == "missing":
        assert not out.exists()
    else:
        assert pads.dataset(out).files == []
        assert list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.csv",
        *(["ds"] * (existing == "empty")),
    ]


# --- the swap --------------------------------------------------------------------------------


def test_the_swap_shows_readers_one_whole_dataset_at_every_instant(
    backend: str, tmp_path: Path
) -> None:
    """While runs replace ``out`` (11 parts, then 3, then 11...), the folder at ``out`` always
    holds one whole dataset: never missing, never parts without ``_SUCCESS``, never a mix. (A
    listing of a folder that was swapped out meanwhile is skipped: its files are being removed.)"""
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, chunk_bytes=OLD_CHUNK)
    problems: list[str] = []
    listings = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal listings
        while not stop.is_set():
            try:
                fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                problems.append(f"{type(exc).__name__}: {exc}")
                continue
            try:
                names = sorted(os.listdir(fd))
                current = os.path.samestat(os.fstat(fd), os.stat(out))
            finally:
                os.close(fd)
            if not current:
                continue
            listings += 1
            if not (whole(names, 11) or whole(names, 3)):
                problems.append(f"not one whole dataset: {names}")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        for chunk in [NEW_CHUNK, OLD_CHUNK, NEW_CHUNK, OLD_CHUNK]:
            csv_to_parquet(
                SALES, out, chunk_bytes=chunk, overwrite=True, backend=backend, workers=2
            )
    finally:
        stop.set()
        thread.join(10)
    assert listings > 0
    assert problems[:3] == []
    assert_whole_sales(out, 11)


def test_a_crash_between_the_two_renames_of_a_swap_is_repaired(tmp_path: Path) -> None:
    """Where ``RENAME_EXCHANGE`` is missing, the old folder is set aside, then the new one renamed
    in; a crash in between leaves ``out`` missing and the old dataset aside, whole. The next run
    (holding the lock, so that writer is gone) puts it back before anything else."""
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, chunk_bytes=OLD_CHUNK)
    before = tree(out)
    aside = tmp_path / ".ds.old-999999-0123456789abcdef"
    staging = tmp_path / ".ds.staging-999999-0123456789abcdef"
    out.rename(aside)
    csv_to_parquet(SALES, tmp_path / "new", chunk_bytes=NEW_CHUNK)
    (tmp_path / "new").rename(staging)  # complete, but never swapped in
    with pytest.raises(FileExistsError, match="not empty"):
        csv_to_parquet(SALES, out, chunk_bytes=NEW_CHUNK)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [staging.name, "ds"]  # refused: kept
    csv_to_parquet(SALES, out, chunk_bytes=NEW_CHUNK, overwrite=True)
    assert_whole_sales(out, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_an_output_reached_by_a_symlink_or_as_dot_is_replaced_where_it_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    csv_to_parquet(SALES, real, chunk_bytes=OLD_CHUNK)
    (tmp_path / "link").symlink_to(real)
    csv_to_parquet(SALES, tmp_path / "link", chunk_bytes=NEW_CHUNK, overwrite=True)
    assert (tmp_path / "link").is_symlink()
    assert_whole_sales(real, 3)
    monkeypatch.chdir(real)
    csv_to_parquet(SALES, ".", chunk_bytes=OLD_CHUNK, overwrite=True)
    assert_whole_sales(real, 11)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_the_two_rename_swap_when_exchange_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, chunk_bytes=OLD_CHUNK)
    csv_to_parquet(SALES, out, chunk_bytes=NEW_CHUNK, overwrite=True)
    assert_whole_sales(out, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


# --- the lock --------------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def other_writer(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """Another run writing ``tmp_path/ds``: it holds the lock and has a staging folder with a
    temporary part in it; ``ds`` holds an older dataset."""
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, chunk_bytes=OLD_CHUNK)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / ".ds.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        staging = tmp_path / f".ds.staging-{holder.pid}-0123456789abcdef"
        staging.mkdir()
        (staging / "part-00000.parquet").write_bytes(b"PAR1 complete part")
        (staging / f".part-00001.parquet.{holder.pid}-0123456789abcdef.tmp").write_bytes(b"PA")
        (out / f".part-00002.parquet.{holder.pid}-0123456789abcdef.tmp").write_bytes(b"PA")
        yield out, holder.pid
    finally:
        holder.communicate("", timeout=30)


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_run_finding_the_lock_held_refuses_and_touches_nothing(
    other_writer: tuple[Path, int], overwrite: bool, tmp_path: Path
) -> None:
    out, pid = other_writer
    before = tree(tmp_path)
    expected = (UsageError, "another run is writing") if overwrite else (FileExistsError, "empty")
    with pytest.raises(expected[0], match=expected[1]) as info:
        csv_to_parquet(SALES, out, chunk_bytes=NEW_CHUNK, overwrite=overwrite)
    if overwrite:
        assert f"pid {pid}" in str(info.value) and str(out) in str(info.value)
    assert tree(tmp_path) == before


def test_the_cli_refuses_a_held_lock_with_exit_2(
    other_writer: tuple[Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pid = other_writer
    before = tree(tmp_path)
    code = main(["csv", "to-parquet", str(SALES), str(out), "--overwrite", "--backend", "thread"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another run is writing" in err[0] and f"pid {pid}" in err[0]
    assert tree(tmp_path) == before


class GatedParquetNode(ParquetNode):
    """A ParquetNode whose ranges after the first wait (on any backend) for the file ``gate``
    to exist before writing."""

    def __init__(self, path: str, out_dir: str, gate: str, **options: Any) -> None:
        super().__init__(path, out_dir, **options)
        self.gate = gate

    def exec(self, table: pa.Table) -> tuple[str, int]:
        rng = self.current_range
        assert rng is not None
        deadline = time.monotonic() + 60
        while rng.index > 0 and not os.path.exists(self.gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().exec(table)


def test_a_second_run_does_not_disturb_a_running_one(
    backend: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """While one run writes (its staging folder has parts, and the others wait until the
    second run is refused), a second run into the same folder is refused, and the first one
    completes its whole dataset."""
    out = tmp_path / "ds"
    gate = tmp_path_factory.mktemp("gate") / "open"
    node = GatedParquetNode(
        str(SALES),
        str(out),
        str(gate),
        overwrite=True,
        chunk_bytes=OLD_CHUNK,
        backend=backend,
        workers=2,
    )
    errors: list[BaseException] = []

    def first() -> None:
        try:
            node.run({})
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".ds.staging-*/part-*.parquet")):
            assert time.monotonic() < deadline, "the first run never wrote a part"
            time.sleep(0.01)
        with pytest.raises(UsageError, match="another run is writing"):
            csv_to_parquet(SALES, out, chunk_bytes=NEW_CHUNK, overwrite=True)
    finally:
        gate.touch()
        thread.join(120)
    assert errors == []
    assert_whole_sales(out, 11)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_stale_staging_is_removed_once_its_writer_is_gone(tmp_path: Path) -> None:
    """Staging and set-aside folders of a killed run, and part temp files of an older version,
    are removed by the next run (it holds the lock, so their writer is gone)."""
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, chunk_bytes=OLD_CHUNK)
    for kind in ("staging", "old"):
        left = tmp_path / f".ds.{kind}-{os.getpid()}-0123456789abcdef"  # even a live pid
        left.mkdir()
        (left / "part-00000.parquet").write_bytes(b"PA")
    (out / ".part-00003.parquet.tmp-999999").write_bytes(b"PA")
    (tmp_path / ".other.staging-1-0123456789abcdef").mkdir()  # another output's: not ours
    csv_to_parquet(SALES, out, chunk_bytes=NEW_CHUNK, overwrite=True)
    assert_whole_sales(out, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.staging-1-0123456789abcdef", "ds"]


def test_a_hidden_file_not_ours_is_never_deleted(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    csv_to_parquet(SALES, out, chunk_bytes=OLD_CHUNK)
    (out / ".keep").write_text("mine")
    with pytest.raises(FileExistsError, match=r"'\.keep'"):
        csv_to_parquet(SALES, out, overwrite=True)
    assert (out / ".keep").read_text() == "mine"
    assert pq.read_table(out).num_rows == 5000


# --- killed runs -----------------------------------------------------------------------------

# The run under test, in its own process. Parent-side steps are counted by wrapping the calls
# that write, sync, rename or remove: ``count`` prints them; ``kill:K`` SIGKILLs the process at
# step K (a write is killed halfway through its bytes). ``worker:I:PHASE`` kills the process that
# writes range I (a worker on the process backend) before, halfway through or after its part;
# ``parent-after:I`` has range I's writer kill the parent once its part is written.
CHILD = textwrap.dedent(
    """
    import os, shutil, signal, sys
    import pyarrow as pa, pyarrow.parquet as pq
    from batchcore.processors import files
    from batchcore.processors.csv.jobs import PART, ParquetNode

    csv, out, backend, overwrite, mode, chunk = sys.argv[1:7]
    steps = []
    kill_at = int(mode.split(":")[1]) if mode.startswith("kill:") else -1

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def step(name, real, half=False):
        def call(*args, **kwargs):
            steps.append(name + " " + " ".join(os.path.basename(os.fspath(a)) for a in args[:2]
                                                if isinstance(a, (str, os.PathLike))))
            if len(steps) - 1 == kill_at:
                if half:
                    sink = pa.BufferOutputStream()
                    real(args[0], sink)
                    data = sink.getvalue().to_pybytes()
                    with open(args[1], "wb") as handle:
                        handle.write(data[: len(data) // 2])
                die()
            return real(*args, **kwargs)
        return call

    os.fsync = step("fsync", os.fsync)
    os.replace = step("rename", os.replace)
    os.rename = step("rename", os.rename)
    files._exchange = step("exchange", files._exchange)
    shutil.rmtree = step("rmtree", shutil.rmtree)
    pq.write_table = step("write", pq.write_table, half=True)

    class KillingNode(ParquetNode):
        def exec(self, table):
            kind, index, *phase = (self.mode + ":-1").split(":")
            if kind not in ("worker", "parent-after") or int(index) != self.current_range.index:
                return super().exec(table)
            if kind == "parent-after":
                result = super().exec(table)
                os.kill(self.parent_pid, signal.SIGKILL)
                return result
            if phase[0] == "after":
                super().exec(table)
            elif phase[0] == "half":
                final = self.part_dir / PART.format(index=self.current_range.index)
                with open(files.temp_path(final), "wb") as handle:
                    handle.write(b"PAR1" + bytes(1000))
            die()

    node = KillingNode(csv, out, overwrite == "1", chunk_bytes=int(chunk), backend=backend,
                       workers=2)
    node.mode, node.parent_pid = mode, os.getpid()
    node.run({})
    if mode == "count":
        print("\\n".join(steps))
    """
)


def group_alive(group: int) -> bool:
    """Whether a process of process group ``group`` is still running (zombies are not)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == group and fields[0] != "Z":  # fields 3 and 5 of proc(5): state, pgrp
            return True
    return False


def run_child(
    tmp_path: Path, backend: str, overwrite: bool, mode: str
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "ds"
    argv = [
        sys.executable,
        str(script),
        str(SALES),
        str(out),
        backend,
        str(int(overwrite)),
        mode,
        str(NEW_CHUNK),
    ]
    child = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = child.communicate(timeout=180)
    finally:
        # The workers of a killed parent notice and exit; make sure. An exited process that is
        # still a zombie counts as gone: orphans are reaped by init, which may take its time.
        deadline = time.monotonic() + 10
        while group_alive(child.pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        if child.poll() is None:
            child.kill()
            child.wait()
    script.unlink()
    return subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)


_STEPS: dict[tuple[str, bool], list[str]] = {}


def child_steps(tmp_path: Path, backend: str, overwrite: bool) -> list[str]:
    """The steps an undisturbed run takes in its (parent) process."""
    key = (backend, overwrite)
    if key not in _STEPS:
        prepare(tmp_path, overwrite)
        done = run_child(tmp_path, backend, overwrite, "count")
        assert done.returncode == 0, done.stderr
        _STEPS[key] = done.stdout.splitlines()
        clear(tmp_path)
    return _STEPS[key]


def prepare(tmp_path: Path, overwrite: bool) -> None:
    if overwrite:
        csv_to_parquet(SALES, tmp_path / "ds", chunk_bytes=OLD_CHUNK)


def clear(tmp_path: Path) -> None:
    for path in sorted(tmp_path.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()


def check_after_kill(
    tmp_path: Path, overwrite: bool, done: subprocess.CompletedProcess[str], worker: bool = False
) -> None:
    """The old dataset whole (or the new one, if the kill came after the swap); without an old
    one, no dataset or the whole new one. Then a rerun succeeds and leaves only the dataset."""
    if worker:  # the run saw its worker die, failed, and cleaned up after itself
        assert done.returncode == 1 and "WorkerCrashedError" in done.stderr, done.stderr
        assert [p.name for p in tmp_path.iterdir()] == ["ds"] * overwrite
    else:
        assert done.returncode == -signal.SIGKILL, done.stderr
    out = tmp_path / "ds"
    if out.exists():
        names = dataset_files(out)
        if whole(names, 11):
            assert overwrite
            assert_whole_sales(out, 11)
        else:
            assert_whole_sales(out, 3)
    else:
        assert not overwrite, "the old dataset is gone"
    result = csv_to_parquet(SALES, out, chunk_bytes=NEW_CHUNK, overwrite=True)
    assert_whole_sales(out, result["parts"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    clear(tmp_path)


KILL_BACKENDS = ["process", "thread"]


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "fresh"])
@pytest.mark.parametrize("backend", KILL_BACKENDS)
@settings(max_examples=4)
@given(data=st.data())
def test_killed_at_any_step_of_the_parent(
    backend: str, overwrite: bool, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGKILL at any write, fsync, rename or removal the run's main process makes (on the thread
    backend that includes every part)."""
    tmp_path = tmp_path_factory.mktemp("kill")
    steps = child_steps(tmp_path, backend, overwrite)
    at = data.draw(st.integers(0, len(steps) - 1), label="step")
    data.draw(st.just(steps[at]), label="which")
    prepare(tmp_path, overwrite)
    check_after_kill(tmp_path, overwrite, run_child(tmp_path, backend, overwrite, f"kill:{at}"))


NAMED_STEPS = {
    "while parts are written": lambda steps: [
        i for i, s in enumerate(steps) if s.startswith("write")
    ][1],
    "between the last part and _SUCCESS": lambda steps: next(
        i for i, s in enumerate(steps) if s.startswith("rename") and s.endswith("_SUCCESS")
    ),
    "during the swap": lambda steps: [
        i for i, s in enumerate(steps) if s.startswith(("exchange", "rename")) and s.endswith(" ds")
    ][-1],
    "before the old dataset is removed": lambda steps: next(
        i for i, s in enumerate(steps) if s.startswith("rmtree")
    ),
}


NAMED_CASES = [
    pytest.param(point, overwrite, id=f"{point}-{'overwrite' if overwrite else 'fresh'}")
    for point in NAMED_STEPS
    for overwrite in [True, False]
    if overwrite or point != "before the old dataset is removed"  # a fresh output has none
]


@pytest.mark.parametrize(("point", "overwrite"), NAMED_CASES)
@pytest.mark.parametrize("backend", KILL_BACKENDS)
def test_killed_at_each_named_step(
    backend: str, point: str, overwrite: bool, tmp_path: Path
) -> None:
    """SIGKILL of the run's main process at the steps where a crash does most harm."""
    steps = child_steps(tmp_path, backend, overwrite)
    if point == "while parts are written" and backend == "process":
        mode = "parent-after:1"  # the parts are written by the workers: one of them kills it
    else:
        mode = f"kill:{NAMED_STEPS[point](steps)}"
    prepare(tmp_path, overwrite)
    check_after_kill(tmp_path, overwrite, run_child(tmp_path, backend, overwrite, mode))


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "fresh"])
@pytest.mark.parametrize("backend", KILL_BACKENDS)
@settings(max_examples=3)
@given(index=st.integers(0, 2), phase=st.sampled_from(["before", "half", "after"]))
def test_killed_while_writing_a_part(
    backend: str,
    overwrite: bool,
    index: int,
    phase: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The process writing part ``index`` dies (a worker on the process backend, the whole run on
    the thread backend) before, halfway through or after writing it."""
    tmp_path = tmp_path_factory.mktemp("kill")
    prepare(tmp_path, overwrite)
    done = run_child(tmp_path, backend, overwrite, f"worker:{index}:{phase}")
    check_after_kill(tmp_path, overwrite, done, worker=backend == "process")
