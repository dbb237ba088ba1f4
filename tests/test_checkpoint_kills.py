"""checkpoint= under fire: the parent SIGKILLed at points hypothesis draws, on every backend
(Dask too), then a rerun compared with an uninterrupted run; a worker that crashes mid-run; a
journal of a million items resumed in bounded memory.

What the journal promises (``batchcore/journal.py``, README "Resumable batches"): results reach
the journal in input order, one committed row per group of at most ``GROUP`` (4,096) results,
and a group is committed at the latest ``GROUP_SECONDS`` (1 s) after the previous commit. So an
item runs twice after a ``kill -9`` of the parent only if, at the kill, its result was

- still on a worker: in the chunk a worker was running (``chunksize`` items per worker), or in
  the next chunk a worker holds (``DEPTH`` chunks per worker), or on its way back;
- or received and pending: fewer than ``GROUP`` results not yet committed, plus the chunk
  whose commit the kill interrupted; and received at most ``GROUP_SECONDS`` before the kill.

The tests count the items that ran twice (every exec leaves a file, named with its item and the
time it finished) and check both halves: no item that finished more than ``GROUP_SECONDS`` +
``SLACK`` before the kill runs again, and no more than ``GROUP + workers * (DEPTH + 1) *
chunksize`` do.
"""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import backend_params
from hypothesis import example, given, settings
from hypothesis import strategies as st
from journal_helpers import Full

import batchcore
from batchcore import BatchNode, CheckpointError, WorkerCrashedError
from batchcore import journal as journal_module
from batchcore.journal import item_key

ROOT = Path(__file__).resolve().parent.parent

N = 240  # items per run
# seconds per item: a run takes ~3 s on any backend, so commits happen mid-run, and a late kill
# finds results that ended more than GROUP_SECONDS + SLACK before it
DELAY = {"sequential": 0.012}
PARALLEL_DELAY = 0.025
WORKERS = 2
CHUNK = 2  # chunksize on the parallel backends (the sequential one runs one item at a time)
DEPTH = 2  # chunks a worker holds: the one it runs and the next (Dask: 2 tasks per worker)
# seconds from an item's end to its result's commit, beyond GROUP_SECONDS: a chunk's other item,
# the wait behind the other worker's chunk, the trip to the parent, a loaded machine
SLACK = 1.0
SMALL_GROUP = 16  # a group size the child may set, so the count bound bites in a short run
# hypothesis examples per backend: each is two runs in subprocesses (~5-8 s each)
# (and the two explicit kills: a late one with the real GROUP, one mid-run with a small one)
EXAMPLES = {"sequential": 1, "thread": 1, "process": 1, "dask": 1}

CHILD = textwrap.dedent(
    """
    import pickle, sys, time, uuid
    from pathlib import Path
    from batchcore import BatchNode
    from batchcore import journal

    marks, path, out, backend = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    n, chunksize, group = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    delay = float(sys.argv[8])
    if group:
        journal.GROUP = group

    class Work(BatchNode):
        def prep(self, shared):
            return (x for x in range(n))  # a generator: read a group at a time
        def exec(self, item):
            time.sleep(delay)
            (marks / f"{item}-{time.time():.6f}-{uuid.uuid4().hex}").touch()  # when it ended
            return (item, item * item)
        def post(self, shared, prep_res, exec_res):
            with open(out, "wb") as handle:
                pickle.dump(exec_res, handle)
            print("done", len(exec_res), self.batch_stats.resumed)

    Work(backend=backend, workers=2, chunksize=chunksize, checkpoint=path).run({})
    """
)


def child_command(backend: str, marks: Path, journal: Path, out: Path, group: int = 0) -> list[str]:
    chunk = 1 if backend == "sequential" else CHUNK
    arguments = [str(marks), str(journal), str(out), backend, str(N), str(chunk), str(group)]
    return [sys.executable, "-c", CHILD, *arguments, str(DELAY.get(backend, PARALLEL_DELAY))]


def ended(marks: Path) -> list[tuple[int, float]]:
    """``(item, when exec ended)`` for every exec that ran to its end, in this folder."""
    found = []
    for name in os.listdir(marks):
        item, when, _ = name.split("-")
        found.append((int(item), float(when)))
    return found


def committed(journal: Path) -> set[bytes]:
    """The keys of the items the journal holds as done (what a rerun skips)."""
    if not journal.exists():
        return set()
    with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as connection:
        try:
            rows = connection.execute("select keys, oks from groups").fetchall()
        except sqlite3.OperationalError:  # killed before its tables were made
            return set()
    keys: set[bytes] = set()
    size = journal_module.KEY_BYTES
    for blob, oks in rows:
        keys.update(blob[i * size : (i + 1) * size] for i, ok in enumerate(oks) if ok)
    return keys


def group_processes(pgid: int) -> list[psutil.Process]:
    """The live processes of a process group (the child, its workers, Dask's nannies)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def run_to_the_end(command: list[str], out: Path) -> list[Any]:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"done {N}" in done.stdout
    with open(out, "rb") as handle:
        results: list[Any] = pickle.load(handle)
    return results


UNINTERRUPTED: dict[str, list[Any]] = {}


def uninterrupted(backend: str, folder: Path) -> list[Any]:
    """The results of one run of the batch that nobody killed (once per backend)."""
    if backend not in UNINTERRUPTED:
        marks, out = folder / "whole-marks", folder / "whole.pickle"
        marks.mkdir()
        results = run_to_the_end(child_command(backend, marks, folder / "whole.sqlite", out), out)
        assert sorted(item for item, _ in ended(marks)) == list(range(N))  # each item once
        UNINTERRUPTED[backend] = results
    return UNINTERRUPTED[backend]


@pytest.mark.slow
@pytest.mark.crash
@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", backend_params(batchcore.available_backends()))
def test_a_parent_killed_anywhere_resumes_to_the_uninterrupted_results(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    expected = uninterrupted(backend, tmp_path_factory.mktemp("whole"))
    assert expected == [(x, x * x) for x in range(N)]

    @settings(max_examples=EXAMPLES[backend], deadline=None)
    @example(after=N * 9 // 10, extra=0.0, group=0)  # late: the time bound bites
    @example(after=N // 2, extra=0.0, group=SMALL_GROUP)  # the count bound bites
    @given(
        after=st.integers(0, N),  # kill once this many items have ended ...
        extra=st.floats(0, 0.5),  # ... and this much later
        group=st.sampled_from([0, SMALL_GROUP]),  # 0: the real GROUP (4,096)
    )
    def killed_then_resumed(after: int, extra: float, group: int) -> None:
        folder = tmp_path_factory.mktemp("kill")
        first, second = folder / "marks-1", folder / "marks-2"
        first.mkdir()
        second.mkdir()
        journal, out = folder / "j.sqlite", folder / "out.pickle"
        command = child_command(backend, first, journal, out, group)
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 90
            while len(os.listdir(first)) < after and child.poll() is None:
                assert time.monotonic() < deadline, "the run stalled"
                time.sleep(0.003)
            time.sleep(extra)
            killed_at = time.time()
            os.kill(child.pid, signal.SIGKILL)  # the parent alone: its workers must notice
            child.wait(timeout=30)
            # No process left behind: workers (and Dask's nannies) exit once the parent is gone.
            deadline = time.monotonic() + 10
            while group_processes(child.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not group_processes(child.pid), "a worker outlived its killed parent"
        finally:
            if child.poll() is None or group_processes(child.pid):
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=30)

        kept = committed(journal)  # readable after any kill
        before = ended(first)
        results = run_to_the_end(child_command(backend, second, journal, out, group), out)
        assert results == expected  # nothing lost, nothing duplicated, in input order
        again = ended(second)
        ran_again = sorted(item for item, _ in again)
        # the rerun ran exactly the items the journal lacked, each once
        assert ran_again == [x for x in range(N) if item_key(x) not in kept]
        # ... and only those may have run twice: the ones whose results were not yet committed
        twice = {item for item, _ in before} & set(ran_again)
        size = journal_module.GROUP if group == 0 else group
        workers, chunk = (1, 1) if backend == "sequential" else (WORKERS, CHUNK)
        bound = size + workers * (DEPTH + 1) * chunk
        assert len(twice) <= bound, f"{len(twice)} items ran twice, more than {bound}"
        horizon = killed_at - journal_module.GROUP_SECONDS - SLACK
        stale = sorted(item for item, when in before if item in twice and when < horizon)
        assert not stale, (
            f"items {stale[:10]} ended more than {journal_module.GROUP_SECONDS + SLACK} s "
            "before the kill, yet were not committed"
        )

    killed_then_resumed()


# --- a worker crash mid-run ---------------------------------------------------------------------


class Crashing(BatchNode):
    """Squares items, leaving a file per exec in ``marks``; the first time item ``crash`` runs
    (no ``flag`` file yet) it kills its own worker: ``os._exit`` or SIGKILL."""

    def __init__(self, marks: Path, flag: Path, how: str, crash: int, **options: Any) -> None:
        super().__init__(**options)
        self.marks, self.flag, self.how, self.crash = marks, flag, how, crash

    def prep(self, shared: dict[str, Any]) -> Any:
        return iter(shared["items"])

    def exec(self, item: int) -> int:
        time.sleep(0.01)
        if item == self.crash and not self.flag.exists():
            self.flag.touch()
            if self.how == "exit":
                os._exit(3)
            os.kill(os.getpid(), signal.SIGKILL)
        (self.marks / f"{item}-{time.time():.6f}-{os.getpid()}").touch()
        return item * item

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["out"] = exec_res


def journal_is_readable(path: Path) -> int:
    """The number of done items, read as a rerun would (raises if the file is damaged)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        assert connection.execute("pragma integrity_check").fetchone() == ("ok",)
    return len(committed(path))


@pytest.mark.crash
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["exit", "sigkill"])
@pytest.mark.parametrize("backend", backend_params(["process", "dask"]))
def test_a_worker_crash_mid_run_leaves_a_journal_the_rerun_completes_from(
    backend: str, how: str, tmp_path: Path
) -> None:
    """The process backend fails the crashed item (fail-fast: the run raises); Dask reschedules
    a dead worker's tasks on the others (the run recovers). Either way the journal is readable
    and a rerun ends with every result exactly once."""
    items = list(range(120))
    first, second, flag = tmp_path / "marks-1", tmp_path / "marks-2", tmp_path / "crashed"
    first.mkdir()
    second.mkdir()
    journal = tmp_path / "j.sqlite"
    options: dict[str, Any] = {"backend": backend, "workers": 2, "chunksize": 2}
    shared: dict[str, Any] = {"items": items}
    node = Crashing(first, flag, how, 60, checkpoint=journal, **options)
    if backend == "process":
        with pytest.raises(WorkerCrashedError) as caught:
            node.run(shared)
        assert caught.value.index == 60
        assert "out" not in shared
    else:
        node.run(shared)  # Dask's business: the killed worker's tasks ran on another
        assert shared["out"] == [x * x for x in items]
    assert flag.exists()
    kept = journal_is_readable(journal)
    done_first = {item for item, _ in ended(first)}
    if backend == "process":
        assert 0 < kept < len(items) and 60 not in done_first
    else:
        assert kept == len(items) and done_first == set(items)

    rerun = Crashing(second, flag, how, 60, checkpoint=journal, **options)
    shared = {"items": items}
    rerun.run(shared)
    assert shared["out"] == [x * x for x in items]  # every result once, in order
    ran = sorted(item for item, _ in ended(second))
    assert len(ran) == len(items) - kept == len(items) - rerun.batch_stats.resumed
    assert len(set(ran)) == len(ran)  # each at most once in the rerun
    assert set(ran) | done_first == set(items)  # none lost
    assert journal_is_readable(journal) == len(items)


@pytest.mark.crash
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", backend_params(["process", "dask"]))
def test_a_crashed_item_collected_is_the_only_one_the_rerun_runs(
    backend: str, tmp_path: Path
) -> None:
    """Under on_error="collect" the process backend records the crashed item as failed; the
    rerun runs it alone. (Dask reruns a killed worker's task itself: nothing fails.)"""
    items = list(range(40))
    first, second, flag = tmp_path / "marks-1", tmp_path / "marks-2", tmp_path / "crashed"
    first.mkdir()
    second.mkdir()
    journal = tmp_path / "j.sqlite"
    options: dict[str, Any] = {"backend": backend, "workers": 2, "chunksize": 2}
    shared: dict[str, Any] = {"items": items}
    node = Crashing(first, flag, "sigkill", 20, checkpoint=journal, on_error="collect", **options)
    node.run(shared)
    failed = [failure.index for failure in node.batch_stats.failures]
    assert failed == ([20] if backend == "process" else [])
    assert shared["out"] == [x * x for x in items if x not in failed]
    assert journal_is_readable(journal) == len(items) - len(failed)
    rerun = Crashing(second, flag, "sigkill", 20, checkpoint=journal, **options)
    shared = {"items": items}
    rerun.run(shared)
    assert shared["out"] == [x * x for x in items]
    assert sorted(item for item, _ in ended(second)) == failed


# --- a million items: resumed in bounded memory ------------------------------------------------

MILLION = 1_000_000
ITEM_CHARS = 200  # each item a 200-character string: all of them at once would be ~250 MB

BIG = textwrap.dedent(
    """
    import sys, time
    from batchcore import BatchNode
    from batchcore.journal import Journal, key_function

    mode, path, n, chars = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def items():
        return (str(i).zfill(chars) for i in range(n))

    class Big(BatchNode):
        def prep(self, shared):
            return items()  # a generator of n items
        def exec(self, item):
            return int(item) & 0xFF
        def post(self, shared, prep_res, exec_res):
            assert len(exec_res) == n and exec_res[-1] == (n - 1) & 0xFF
            assert exec_res[:300] == [i & 0xFF for i in range(300)]
            shared["resumed"] = self.batch_stats.resumed

    if mode == "build":  # the journal a finished run leaves, written directly (seconds, not a run)
        journal = Journal(path).open("__main__.Big checkpoint_version=1")
        key = key_function(Big())
        for i, item in enumerate(items()):
            journal.record([(i, key(item), True, int(item) & 0xFF)])
        journal.close()
    else:
        import numpy, sqlite3  # what a run imports anyway, before the baseline
        def status(field):  # in bytes, from this process's own memory map
            with open("/proc/self/status") as lines:
                for line in lines:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        # Not ru_maxrss: Linux keeps it across exec, so it can be the test runner's own peak.
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM (the peak) starts again from here
        base = status("VmRSS")
        shared = {}
        Big(checkpoint=path).run(shared)
        print(shared["resumed"], status("VmHWM") - base)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_million_item_generator_resumes_in_bounded_memory(tmp_path: Path) -> None:
    """A rerun over a journal of a million done items reads the generator a group at a time
    and the stored results a row at a time: its peak RSS grows by the keys' index (~28 MB, ~60
    while it is sorted), the results list and the queue of done results (8 MB each: pointers to
    small ints), ~70 MB in all. Holding the items (~250 MB), a dict of every key and result
    (~100 MB more), or a tuple per done item in the queue (~90 MB more) would break 120 MiB."""
    path = tmp_path / "big.sqlite"
    build = [sys.executable, "-c", BIG, "build", str(path), str(MILLION), str(ITEM_CHARS)]
    subprocess.run(build, cwd=ROOT, check=True, timeout=120)
    resume = [sys.executable, "-c", BIG, "resume", str(path), str(MILLION), str(ITEM_CHARS)]
    done = subprocess.run(resume, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed, growth = (int(word) for word in done.stdout.split())
    assert resumed == MILLION  # every item from the journal, nothing ran
    assert growth < 120 << 20, f"peak RSS grew by {growth >> 20} MiB resuming {MILLION} items"


# --- results received must not wait for the next result to be committed -------------------------


class Stalls(BatchNode):
    """Fast items, then one slow one (``slow``) during which the journal is read from outside,
    as a ``kill -9`` at that moment would leave it."""

    def __init__(self, journal: Path, slow: int, **options: Any) -> None:
        super().__init__(checkpoint=journal, **options)
        self.journal, self.slow = journal, slow

    def prep(self, shared: dict[str, Any]) -> Any:
        return range(self.slow + 1)

    def exec(self, item: int) -> int:
        if item == self.slow:
            time.sleep(journal_module.GROUP_SECONDS + SLACK)
            return len(committed(self.journal))
        return item

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["seen"] = exec_res[-1]


@pytest.mark.parametrize("backend", ["sequential", "thread"])
def test_results_are_committed_within_a_second_even_when_no_more_arrive(
    backend: str, tmp_path: Path
) -> None:
    """The fast items' results reach the parent within the first second; the slow item takes
    longer than GROUP_SECONDS. Its own exec sees the journal: all fast results must be
    committed by then, or a kill during a long item would lose results that ended long ago."""
    shared: dict[str, Any] = {}
    Stalls(tmp_path / "j.sqlite", 10, backend=backend, workers=2, chunksize=1).run(shared)
    assert shared["seen"] == 10


class Wide(BatchNode):
    """Six items of 20 kB results; the last is slow, so the first five wait for the timed
    commit, which a cramped journal cannot take."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return range(6)

    def exec(self, item: int) -> str:
        if item == 5:
            time.sleep(journal_module.GROUP_SECONDS + SLACK)  # the flusher's commit fails meanwhile
        return "x" * 20_000 + str(item)  # rows larger than the one page the file may grow by

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[str]) -> None:
        shared["out"] = exec_res


def test_a_full_disk_met_by_the_timed_commit_fails_the_run_and_the_rerun_resumes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    with pytest.raises(CheckpointError, match=r"could not record .* full"):
        Wide(checkpoint=Full(path)).run({})
    assert journal_is_readable(path) == 0  # nothing half-written
    shared: dict[str, Any] = {}
    Wide(checkpoint=path).run(shared)  # room to grow now: all run, and the journal takes them
    assert [result[-1] for result in shared["out"]] == list("012345")
    assert journal_is_readable(path) == 6
