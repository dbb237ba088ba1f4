"""checkpoint=: a batch records finished items in a SQLite journal and a rerun skips them, on
every backend; results in input order as if one run had made them; a changed node refuses."""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from array import array
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from journal_helpers import Full

from batchcore import BatchFlow, BatchNode, CheckpointError, Journal, Node, use_backend

ROOT = Path(__file__).resolve().parent.parent


class Marks(BatchNode):
    """Squares items; every exec leaves a file in ``folder`` (seen from any backend's workers),
    and fails on the items in ``bad``."""

    def __init__(self, folder: Path, bad: tuple[int, ...] = (), **options: Any) -> None:
        super().__init__(**options)
        self.folder = folder
        self.bad = bad

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: int) -> int:
        (self.folder / f"{item}-{uuid.uuid4().hex}").touch()
        if item in self.bad:
            raise ValueError(f"bad item {item}")
        return item * item

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["out"] = exec_res


def runs(folder: Path) -> list[int]:
    """The items exec ran on, once per run, sorted."""
    return sorted(int(name.split("-")[0]) for name in os.listdir(folder))


def test_a_rerun_runs_only_what_failed_on_every_backend(backend: str, tmp_path: Path) -> None:
    marks, journal = tmp_path / "marks", tmp_path / "journal.sqlite"
    marks.mkdir()
    items = list(range(30))
    node = Marks(marks, bad=(7, 21), backend=backend, on_error="collect", checkpoint=journal)
    shared: dict[str, Any] = {"items": items}
    node.run(shared)
    assert shared["out"] == [x * x for x in items if x not in (7, 21)]
    assert runs(marks) == items
    for path in marks.iterdir():
        path.unlink()
    node = Marks(marks, backend=backend, checkpoint=journal)
    node.run(shared)
    assert shared["out"] == [x * x for x in items]  # in input order, as one run would give
    assert runs(marks) == [7, 21]  # only the failed ones ran again
    assert node.batch_stats.resumed == 28 and node.batch_stats.checkpoint == str(journal)
    node.run(shared)  # finished: nothing runs
    assert runs(marks) == [7, 21] and node.batch_stats.resumed == 30


def test_a_changed_node_refuses_to_resume_and_says_how_to_start_over(tmp_path: Path) -> None:
    marks, journal = tmp_path / "marks", tmp_path / "journal.sqlite"
    marks.mkdir()
    Marks(marks, checkpoint=journal).run({"items": [1, 2]})

    class Changed(Marks):
        checkpoint_version = 2

    with pytest.raises(CheckpointError, match="To start over, delete the file") as caught:
        Changed(marks, checkpoint=journal).run({"items": [1, 2]})
    assert str(journal) in str(caught.value) and "checkpoint_version=2" in str(caught.value)
    journal.write_bytes(b"not a database at all, but long enough to be read as one" * 20)
    with pytest.raises(CheckpointError, match="not a usable checkpoint journal"):
        Marks(marks, checkpoint=journal).run({"items": [1, 2]})


class Lambdas(BatchNode):
    def prep(self, shared: dict[str, Any]) -> Any:
        return [lambda: 1, lambda: 2]  # pickle cannot name these

    def exec(self, item: Any) -> int:
        return int(item())


def test_a_journal_of_another_format_is_refused_and_says_how_to_start_over(
    tmp_path: Path,
) -> None:
    from batchcore.journal import SCHEMA

    marks, journal = tmp_path / "marks", tmp_path / "journal.sqlite"
    marks.mkdir()
    Marks(marks, checkpoint=journal).run({"items": [1, 2]})
    with closing(sqlite3.connect(journal)) as connection:  # as an older batchcore left it
        connection.execute("update meta set value = ? where name = 'schema'", (str(SCHEMA - 1),))
        connection.commit()
    with pytest.raises(CheckpointError, match="To start over, delete the file") as caught:
        Marks(marks, checkpoint=journal).run({"items": [1, 2]})
    assert f"format {SCHEMA - 1}" in str(caught.value) and f"format {SCHEMA} only" in str(
        caught.value
    )
    assert runs(marks) == [1, 2]  # refused before anything ran


def test_a_node_s_own_settings_in_its_fingerprint_refuse_another_setting(tmp_path: Path) -> None:
    class Scaled(BatchNode):
        def __init__(self, factor: int, **options: Any) -> None:
            super().__init__(**options)
            self.factor = factor

        def checkpoint_fingerprint(self) -> str:
            return f"factor={self.factor}"

        def exec(self, item: int) -> int:
            return item * self.factor

    journal = tmp_path / "j.sqlite"
    Scaled(2, checkpoint=journal).run({})
    Scaled(2, checkpoint=journal).run({})
    with pytest.raises(CheckpointError, match="factor=3"):
        Scaled(3, checkpoint=journal).run({})


def test_a_stored_result_the_node_turns_down_runs_again(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    class Picky(Marks):
        def checkpoint_usable(self, item: int, result: int) -> bool:
            return item % 3 != 0  # as if these items' outputs were gone

    journal = tmp_path / "j.sqlite"
    shared: dict[str, Any] = {"items": list(range(9))}
    Picky(marks, checkpoint=journal).run(shared)
    node = Picky(marks, checkpoint=journal)
    node.run(shared)
    assert shared["out"] == [x * x for x in range(9)]
    assert runs(marks) == sorted([*range(9), 0, 3, 6]) and node.batch_stats.resumed == 6


def test_an_item_the_node_recovers_from_its_output_does_not_run(
    backend: str, tmp_path: Path
) -> None:
    """``checkpoint_recover(item)``: a result the journal lacks, rebuilt from the item's own
    output (written just before a kill); ``None`` runs the item. Counted as resumed."""
    marks = tmp_path / "marks"
    marks.mkdir()

    class Recovering(Marks):
        def checkpoint_recover(self, item: int) -> int | None:
            return item * item if item % 4 == 1 else None  # as if their outputs were there

    shared: dict[str, Any] = {"items": list(range(12))}
    node = Recovering(marks, backend=backend, checkpoint=tmp_path / "j.sqlite")
    node.run(shared)
    assert shared["out"] == [x * x for x in range(12)]
    assert runs(marks) == [0, 2, 3, 4, 6, 7, 8, 10, 11] and node.batch_stats.resumed == 3


def test_an_item_that_does_not_pickle_needs_a_checkpoint_key(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="define checkpoint_key"):
        Lambdas(checkpoint=tmp_path / "j.sqlite").run({})

    class Keyed(Lambdas):
        def checkpoint_key(self, item: Any) -> Any:
            return item()

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
            shared["out"] = exec_res

    shared: dict[str, Any] = {}
    Keyed(checkpoint=tmp_path / "k.sqlite").run(shared)
    assert shared["out"] == [1, 2]


def test_a_folder_checkpoint_in_a_scope_gives_each_node_class_its_journal(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    class Other(Marks):
        pass

    with use_backend("thread", checkpoint=tmp_path):
        Marks(marks).run({"items": [1, 2, 3]})
        Other(marks).run({"items": [1, 2, 3]})  # another class: its own journal, no refusal
        Marks(marks).run({"items": [1, 2, 3]})
    assert runs(marks) == [1, 1, 2, 2, 3, 3]
    assert len(list(tmp_path.glob("*.sqlite"))) == 2


@pytest.mark.parametrize(
    ("job", "why"),
    [("csv to-parquet", "pass resume=True"), ("images --per-job", "run the grouped job")],
)
def test_jobs_whose_outputs_a_journal_cannot_vouch_for_refuse_a_checkpoint(
    job: str, why: str, tmp_path: Path
) -> None:
    from batchcore.processors.csv.jobs import csv_to_parquet
    from batchcore.processors.images.jobs import run_images

    with use_backend("sequential", checkpoint=tmp_path), pytest.raises(CheckpointError) as caught:
        if job == "csv to-parquet":
            csv_to_parquet(ROOT / "data" / "sales.csv", tmp_path / "out")
        else:
            run_images(ROOT / "data" / "images", tmp_path / "out", "grayscale", grouped=False)
    assert "cannot take checkpoint=" in str(caught.value) and why in str(caught.value)
    assert not list(tmp_path.glob("*.sqlite"))  # refused before a journal was made


class Seen(Node):
    def prep(self, shared: dict[str, Any]) -> int:
        return int(self.params["x"])

    def exec(self, x: int) -> int:
        (Path(self.params["marks"]) / f"{x}-{uuid.uuid4().hex}").touch()
        return x

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> None:
        shared.setdefault("seen", {})[exec_res] = exec_res * 2


class EachX(BatchFlow):
    def prep(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"x": x, "marks": shared["marks"]} for x in range(8)]


@pytest.mark.parametrize("backend", ["sequential", "thread"])
def test_a_batch_flow_resumes_with_its_runs_writes(backend: str, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    for _attempt in range(2):
        shared: dict[str, Any] = {"marks": str(marks)}
        EachX(Seen(), backend=backend, checkpoint=tmp_path / "flow.sqlite").run(shared)
        assert shared["seen"] == {x: x * 2 for x in range(8)}  # the writes, replayed
    assert runs(marks) == list(range(8))  # each run once


@settings(max_examples=40)
@given(
    items=st.lists(st.integers(0, 30), max_size=60),
    done=st.sets(st.integers(0, 30)),
    group=st.sampled_from([1, 3, 256]),
)
def test_post_gets_every_result_in_input_order_whatever_was_done(
    items: list[int], done: set[int], group: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from batchcore import journal as journal_module

    folder = tmp_path_factory.mktemp("h")
    (folder / "marks").mkdir()
    path = folder / "j.sqlite"
    Marks(folder / "marks", checkpoint=path).run({"items": sorted(done)})
    real = journal_module.GROUP, journal_module.LOOKUP
    journal_module.GROUP = journal_module.LOOKUP = group  # lookups and commits cut anywhere
    try:
        shared: dict[str, Any] = {"items": iter(items)}  # a generator, read a group at a time
        Marks(folder / "marks", backend="thread", checkpoint=path).run(shared)
    finally:
        journal_module.GROUP, journal_module.LOOKUP = real
    assert shared["out"] == [x * x for x in items]


SCALARS = st.one_of(
    st.integers(-(1 << 70), 1 << 70),  # beyond 64 bits too: those are keyed by their pickle
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.tuples(st.integers(0, 3)),
)


@settings(max_examples=200)
@given(st.lists(SCALARS, max_size=20))
@example(["\ud800", "a"])  # a lone surrogate: a str that plain UTF-8 cannot encode
def test_an_item_s_key_is_its_own_whatever_its_group(items: list[Any]) -> None:
    """A group is keyed in one call (numpy, for ints or floats; a comprehension for items of one
    kind), an item alone by item_key: the two agree, so a rerun finds an item whatever its
    neighbours; distinct items (by value and type: 1, 1.0, True, "1", b"1") have distinct keys."""
    from batchcore.journal import KEY_BYTES, _group_keys, item_key

    kinds = (int, float, str, tuple)
    for group in (items, *([x for x in items if type(x) is kind] for kind in kinds)):
        keys = _group_keys(None)(group)
        assert keys == b"".join(item_key(x) for x in group)
        assert len(keys) == KEY_BYTES * len(group)
    distinct = {(type(x), x if type(x) is not float else struct.pack("<d", x)) for x in items}
    assert len({item_key(x) for x in items}) == len(distinct)


class Typed(BatchNode):
    """Returns each item with its type's name; marks every exec in ``folder``."""

    def __init__(self, folder: Path, **options: Any) -> None:
        super().__init__(**options)
        self.folder = folder

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: Any) -> tuple[Any, str]:
        (self.folder / uuid.uuid4().hex).write_text(repr(item))
        return item, type(item).__name__

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["out"] = exec_res


def test_a_rerun_finds_items_among_items_of_other_types(tmp_path: Path) -> None:
    marks, journal = tmp_path / "marks", tmp_path / "j.sqlite"
    marks.mkdir()
    for items in ([1, 2, 3], [0.5, 1.5, -0.0], [1 << 64], ["a", b"a"]):  # groups of one type
        Typed(marks, checkpoint=journal).run({"items": items})
    for path in marks.iterdir():
        path.unlink()
    items = [3, "a", 1.0, True, 1, 1 << 64, 0.0, -0.0, b"a", 1.5, "b", 2]
    shared: dict[str, Any] = {"items": items}
    node = Typed(marks, backend="thread", checkpoint=journal)
    node.run(shared)
    assert shared["out"] == [(x, type(x).__name__) for x in items]
    ran = sorted(path.read_text() for path in marks.iterdir())
    assert ran == sorted(["1.0", "True", "0.0", "'b'"])  # the others came from the journal
    assert node.batch_stats.resumed == 8


def test_a_full_disk_fails_the_run_cleanly_and_the_journal_stays_readable(tmp_path: Path) -> None:
    from batchcore import journal as journal_module

    marks, path = tmp_path / "marks", tmp_path / "j.sqlite"
    marks.mkdir()
    items = list(range(3000))
    real = journal_module.GROUP
    journal_module.GROUP = 100  # rows of 100 results: the first fits, later ones do not
    try:
        with pytest.raises(CheckpointError, match=r"could not record .* full"):
            Marks(marks, checkpoint=Full(path)).run({"items": items})
    finally:
        journal_module.GROUP = real
    first = len(runs(marks))
    shared: dict[str, Any] = {"items": items}
    node = Marks(marks, checkpoint=path)
    node.run(shared)  # the same file, room to grow: it resumes
    assert shared["out"] == [x * x for x in items]
    assert 100 <= node.batch_stats.resumed < first


def test_the_journal_is_plain_sqlite_and_a_duplicate_item_is_one_key(tmp_path: Path) -> None:
    marks, path = tmp_path / "marks", tmp_path / "j.sqlite"
    marks.mkdir()
    Marks(marks, checkpoint=Journal(path)).run({"items": [5, 5, 6]})
    with closing(sqlite3.connect(path)) as connection:  # (sqlite3's own "with" keeps it open)
        [(spans, oks)] = connection.execute("select spans, oks from groups").fetchall()
    assert array("q", spans).tolist() == [0, 3] and oks == b"\x01\x01\x01"  # one row: the group
    journal = Journal(path).open(f"{__name__}.Marks checkpoint_version=1")
    try:
        assert journal.count() == 2  # 5 and 6: the same content is the same key
    finally:
        journal.close()


# --- killed: SIGKILL of the parent at some point of the run, then a rerun --------------------

CHILD = textwrap.dedent(
    """
    import sys, time, uuid
    from pathlib import Path
    from batchcore import BatchNode

    marks, journal, backend = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Slow(BatchNode):
        def prep(self, shared):
            return range(400)
        def exec(self, item):
            time.sleep(0.01)  # 2-4 s in all: commits (every 0.2 s) happen mid-run
            (marks / f"{item}-{uuid.uuid4().hex}").touch()
            return item * 3
        def post(self, shared, prep_res, exec_res):
            assert exec_res == [x * 3 for x in range(400)], "results out of order or lost"
            print("done", len(exec_res))

    Slow(backend=backend, workers=2, checkpoint=journal).run({})
    """
)


def done_in(journal: Path) -> int:
    try:
        with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as connection:
            rows = connection.execute("select oks from groups").fetchall()
            return sum(oks.count(1) for (oks,) in rows)  # each item once, in this test
    except sqlite3.Error:
        return 0


# SIGKILL at drawn points, on every backend: tests/test_checkpoint_kills.py. Here: one kill
# early, and Ctrl-C, which commits what finished on the way out.
@pytest.mark.parametrize("backend", ["sequential", "thread", "process"])
@pytest.mark.parametrize(("kill_after", "how"), [(1, "SIGKILL"), (1, "SIGINT")])
def test_a_parent_killed_or_interrupted_resumes_and_loses_nothing(
    backend: str, kill_after: int, how: str, tmp_path: Path
) -> None:
    marks, journal = tmp_path / "marks", tmp_path / "j.sqlite"
    marks.mkdir()
    command = [sys.executable, "-c", CHILD, str(marks), str(journal), backend]
    child = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while done_in(journal) < kill_after and time.monotonic() < deadline:
        assert child.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    if how == "SIGINT":  # let results pile up that no commit has written yet
        ahead = done_in(journal) + 40
        while len(os.listdir(marks)) < ahead and time.monotonic() < deadline:
            time.sleep(0.005)
    if how == "SIGKILL":
        os.killpg(child.pid, signal.SIGKILL)  # the parent and its workers, at once
    else:
        os.kill(child.pid, signal.SIGINT)  # Ctrl-C: the parent stops its workers and exits
    assert child.wait(timeout=30) != 0
    committed = done_in(journal)
    assert kill_after <= committed < 400  # stopped mid-run, with some results committed
    before = runs(marks)
    if how == "SIGINT":  # what finished before Ctrl-C is committed on the way out
        assert len(before) - committed <= 3
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "done 400" in done.stdout
    every = runs(marks)
    assert set(every) == set(range(400))  # none lost
    # the rerun ran exactly the items the journal did not hold: at most those in flight or not
    # yet committed at the kill ran twice
    assert len(every) - len(before) == 400 - committed
