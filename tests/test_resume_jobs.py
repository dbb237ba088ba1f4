"""``--resume`` on the built-in CSV jobs: a killed or interrupted run's finished ranges are kept
and a rerun does only the rest, with the same result as one uninterrupted run."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchcore import CheckpointError
from batchcore.processors.csv.jobs import JOURNAL, ParquetNode, csv_stats, csv_to_parquet
from batchcore.processors.errors import CsvFormatError, ImagesUsageError
from batchcore.processors.images.jobs import run_images

ROOT = Path(__file__).resolve().parent.parent
CHUNK = "32KiB"  # ~265 ranges


@pytest.fixture(scope="module")
def sales(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~8.7 MB of sales, 100,000 rows."""
    path = tmp_path_factory.mktemp("resume") / "sales.csv"
    make = [sys.executable, str(ROOT / "data" / "make_sales.py"), str(path), "--rows", "100000"]
    subprocess.run(make, check=True, capture_output=True, timeout=120)
    return path


# The batchcore command, with the journal committing every 20 ms instead of every second, so
# that a run of a few hundred milliseconds is killed with some results committed and some not.
CLI = """
import sys
import batchcore.journal
from batchcore.processors.cli import main
batchcore.journal.GROUP_SECONDS = 0.02
sys.exit(main(sys.argv[1:]))
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def committed(journal: Path | None) -> int:
    """Items the journal holds as done (0 while it does not exist or is being created)."""
    if journal is None:
        return 0
    try:
        with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as connection:
            return sum(oks.count(1) for (oks,) in connection.execute("select oks from groups"))
    except sqlite3.Error:
        return 0


def staging_journal(out: Path) -> Path | None:
    found = sorted(out.parent.glob(f".{out.name}.staging-*/{JOURNAL}"))
    return found[-1] if found else None


def interrupt(command: list[str], journal: Any, how: str, env: dict[str, str]) -> int:
    """Start ``command``, stop it with ``how`` once its journal has committed results; returns
    how many it had committed when it stopped."""
    child = subprocess.Popen(
        command, cwd=ROOT, env=env, start_new_session=True, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 90
    while committed(journal()) < 10:
        assert child.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no result was committed in time"
        time.sleep(0.01)
    if how == "SIGKILL":
        os.killpg(child.pid, signal.SIGKILL)  # the parent and its workers, at once
    else:
        os.kill(child.pid, signal.SIGINT)  # Ctrl-C
    assert child.wait(timeout=60) != 0
    return committed(journal())


def rows_of(folder: Path) -> list[tuple[Any, ...]]:
    table = pq.read_table(folder)
    return sorted(zip(*(table[name].to_pylist() for name in table.column_names), strict=True))


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("backend", "how"),
    [
        ("sequential", "SIGKILL"),
        ("thread", "SIGKILL"),
        ("process", "SIGKILL"),
        ("process", "SIGINT"),
    ],
)
def test_to_parquet_killed_resumes_with_only_the_missing_parts(
    backend: str, how: str, sales: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = cli("csv", "to-parquet", str(sales), str(out), "--resume", "--chunk-bytes", CHUNK)
    command += ["--backend", backend, "--workers", "2"]
    done = interrupt(command, lambda: staging_journal(out), how, dict(os.environ))
    assert not out.exists()  # the dataset appears whole or not at all
    # Every part in the staging folder is whole (renamed into place): those the journal lacks
    # are kept by their footers, so exactly the parts written before the stop are not run again.
    written = len(list(tmp_path.glob(".out.staging-*/part-*.parquet")))
    assert written >= done
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    total = json.loads((out / "_SUCCESS").read_text())["parts"]
    assert f"{written:,} of {total:,} parts came from the interrupted run" in again.stderr
    assert sorted(os.listdir(out)) == ["_SUCCESS", *(f"part-{i:05d}.parquet" for i in range(total))]
    assert not list(tmp_path.glob(".out.*"))  # no staging folder, no journal left
    reference = tmp_path / "reference"
    csv_to_parquet(sales, reference, chunk_bytes=32 << 10, backend="thread")
    assert rows_of(out) == rows_of(reference)
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0
    assert "is complete already (_SUCCESS): nothing was run" in finished.stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_stats_killed_resumes_and_gives_the_uninterrupted_answer(
    how: str, sales: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "BATCHCORE_CACHE_DIR": str(tmp_path / "cache")}
    plain = cli("csv", "stats", str(sales), "--sum", "amount", "--sum", "qty", "--json")
    plain += ["--group-by", "region", "--chunk-bytes", CHUNK, "--backend", "thread"]
    command = [*plain, "--resume"]

    def journal() -> Path | None:
        found = list((tmp_path / "cache" / "checkpoints").glob("csv-stats-*.sqlite"))
        return found[0] if found else None

    done = interrupt(command, journal, how, env)
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report.pop("checkpoint") == {"path": str(journal()), "resumed_ranges": done}
    assert f"{done:,} of " in again.stderr
    expected = json.loads(subprocess.run(plain, cwd=ROOT, capture_output=True, text=True).stdout)
    for key in ("seconds", "backend", "backend_reason"):
        report.pop(key, None)
        expected.pop(key, None)
    assert report == expected
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert "came from" in finished.stderr and "nothing was run" in finished.stderr


def write_sales(path: Path, rows: list[str]) -> None:
    path.write_text("order_id,qty\n" + "".join(f"{row}\n" for row in rows))


def test_a_rewritten_input_file_runs_again_and_the_others_resume(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_sales(first, [f"{i},{i % 7}" for i in range(3000)])
    write_sales(second, [f"{i},{i % 5}" for i in range(3000)])
    journal = tmp_path / "stats.sqlite"
    options: dict[str, Any] = {"chunk_bytes": 4096, "checkpoint": journal}
    csv_stats([first, second], ["qty"], **options)
    size = second.stat().st_size
    write_sales(second, [f"{i},{i % 3}" for i in range(3000)])  # rewritten: only its mtime says
    assert second.stat().st_size == size
    again = csv_stats([first, second], ["qty"], **options)
    assert 0 < again.resumed < again.ranges  # the first file's ranges only
    fresh = csv_stats([first, second], ["qty"], chunk_bytes=4096)
    assert (again.rows, again.columns) == (fresh.rows, fresh.columns)


def test_a_failed_to_parquet_resumed_with_other_ranges_leaves_no_stray_part(
    tmp_path: Path,
) -> None:
    good, bad = tmp_path / "in" / "a.csv", tmp_path / "in" / "b.csv"
    good.parent.mkdir()
    write_sales(good, [f"{i},{i % 7}" for i in range(4000)])
    write_sales(bad, ["1,2", "3,4,5"])  # a ragged row: the run fails at the second file
    out = tmp_path / "out"
    with pytest.raises(CsvFormatError, match=r"b\.csv"):
        csv_to_parquet([good, bad], out, resume=True, chunk_bytes=2048, backend="sequential")
    kept = staging_journal(out)
    assert kept is not None and committed(kept) > 5  # the failure kept the parts and journal
    write_sales(bad, ["1,2", "3,4"])
    result = csv_to_parquet([good, bad], out, resume=True, chunk_bytes=1 << 20)
    assert result["parts"] == 2 and result["resumed"] == 0  # other ranges: all run again
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000.parquet", "part-00001.parquet"]
    assert len(rows_of(out)) == 4002


# --- images --------------------------------------------------------------------------------------

SAMPLES = ROOT / "data" / "images"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 photo-like JPEGs of 480x320: a run on 2 workers takes a second or two."""
    folder = tmp_path_factory.mktemp("photos")
    make = [sys.executable, str(ROOT / "data" / "make_images.py"), "--bench", "40"]
    subprocess.run([*make, "--size", "480x320", str(folder)], check=True, timeout=120)
    return folder


def outputs(folder: Path) -> dict[str, int]:
    """Every output under ``folder`` (not the journal) and its mtime."""
    return {
        str(path.relative_to(folder)): path.stat().st_mtime_ns
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["SIGKILL"])
def test_images_killed_resume_and_run_only_the_images_not_recorded(
    how: str, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    filters = ["-f", "grayscale", "-f", "blur:radius=3"]
    command = cli("images", str(photos), "-o", str(out), *filters, "--resume", "--json")
    command += ["--backend", "process", "--workers", "2"]
    done = interrupt(command, lambda: out / ".batchcore-resume.sqlite", how, dict(os.environ))
    before = outputs(out)
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["checkpoint"]["resumed_images"] == done
    assert f"{done:,} of 40 images came from" in again.stderr
    after = outputs(out)
    assert len(after) == 80
    kept = [name for name, mtime in before.items() if after[name] == mtime]
    assert len(kept) >= 2 * done  # a recorded image's outputs were not written again
    reference = tmp_path / "reference"
    run_images(photos, reference, ["grayscale", "blur:radius=3"], backend="thread")
    for name in after:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "all 40 images came from" in finished.stderr and "nothing was run" in finished.stderr


def test_images_resume_reruns_a_changed_source_a_deleted_output_and_a_failure(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(SAMPLES, src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    run = functools.partial(run_images, src, out, ["grayscale"], resume=True, backend="thread")
    first = run()
    assert len(first.failed) == 1 and first.resumed == 0
    images = len(first.results)  # one job per image
    (out / "gray_grayscale.png").unlink()  # a deleted output
    os.utime(src / "alpha.png", ns=(time.time_ns(), time.time_ns()))  # a touched source
    again = run()
    assert again.resumed == images - 3  # not: the deleted output's, alpha's, the failed one
    assert (out / "gray_grayscale.png").is_file() and len(again.failed) == 1
    assert run().resumed == images - 1  # now only the broken image runs again
    with pytest.raises(CheckpointError, match="quality"):
        run_images(src, out, ["grayscale"], resume=True, quality=50)
    with pytest.raises(ImagesUsageError, match="per-job"):
        run_images(src, out, ["grayscale"], resume=True, grouped=False)


# --- the split, kept ------------------------------------------------------------------------------


def count_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of the quote-count scan (phase 1 of the split), in this process."""
    from batchcore.processors.csv import node

    calls: list[int] = []
    real = node.scan_block

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(node, "scan_block", counting)
    return calls


def test_a_rerun_on_unchanged_files_reuses_the_split_and_a_changed_one_scans_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_scans(monkeypatch)
    data = tmp_path / "a.csv"
    write_sales(data, [f'{i},"{i % 7}"' for i in range(4000)])
    options: dict[str, Any] = {"chunk_bytes": 2048, "checkpoint": tmp_path / "j.sqlite"}
    first = csv_stats(data, ["qty"], backend="sequential", **options)
    assert calls and (tmp_path / "j.sqlite.split.json").is_file()
    calls.clear()
    again = csv_stats(data, ["qty"], backend="sequential", **options)
    assert not calls and again.resumed == again.ranges == first.ranges  # no byte scanned
    write_sales(data, [f'{i},"{i % 5}"' for i in range(4000)])  # same size, a new mtime
    changed = csv_stats(data, ["qty"], backend="sequential", **options)
    assert calls and changed.resumed == 0
    assert changed.columns == csv_stats(data, ["qty"], chunk_bytes=2048).columns


class Flaky(ParquetNode):
    """Fails at the range ``fail_at`` (not part of the fingerprint: the same job, a bad day)."""

    fail_at: int | None = None

    def exec(self, table: Any) -> tuple[str, int]:
        rng = self.current_range
        if rng is not None and rng.index == self.fail_at:
            raise RuntimeError("a bad day")
        return super().exec(table)


def flaky_run(inputs: list[Path], out: Path, fail_at: int | None = None) -> dict[str, Any]:
    node = Flaky(inputs, str(out), resume=True, chunk_bytes=2048, backend="sequential")
    node.fail_at = fail_at
    shared: dict[str, Any] = {}
    node.run(shared)
    return dict(shared["parquet"])


def failed_at_range_8(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A resumable to-parquet of 4,000 rows that failed at its range 8: the input, the output
    folder, and the journal its staging folder kept."""
    data = tmp_path / "a.csv"
    write_sales(data, [f"{i},{i % 7}" for i in range(4000)])
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a bad day"):
        flaky_run([data], out, fail_at=8)
    journal = staging_journal(out)
    assert journal is not None
    return data, out, journal


def test_a_resumed_to_parquet_reuses_the_killed_run_s_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, out, kept = failed_at_range_8(tmp_path)
    assert Path(f"{kept}.split.json").is_file()
    calls = count_scans(monkeypatch)
    result = flaky_run([data], out)
    assert not calls and result["resumed"] == 8  # no byte scanned, ranges 0-7 kept
    assert len(rows_of(out)) == 4000 and not list(out.glob("_checkpoint*"))


def test_a_file_given_in_another_place_is_written_again_under_its_new_part_names(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "x.csv", tmp_path / "y.csv"
    write_sales(first, [f"{i},{i % 7}" for i in range(3000)])
    write_sales(second, [f"{i},{i % 5}" for i in range(10_000, 13_000)])
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a bad day"):
        flaky_run([second, first], out, fail_at=20)
    result = flaky_run([first, second], out)  # the same files, the other way round
    ids = sorted(row[0] for row in rows_of(out))
    assert ids == [*range(3000), *range(10_000, 13_000)]  # each row once: no part overwritten
    assert result["resumed"] == 0


def test_parts_written_but_not_yet_journaled_are_kept_by_their_footer(tmp_path: Path) -> None:
    """A kill between a part's rename and the journal's commit: the part's Parquet footer names
    its range and job, so the rerun keeps it instead of writing it again. A torn part, or one
    written for another range, is written again."""
    data, out, journal = failed_at_range_8(tmp_path)
    assert committed(journal) == 8
    with closing(sqlite3.connect(journal)) as connection:
        connection.execute("delete from groups")  # as if the kill came before every commit
        connection.commit()
    parts = sorted(journal.parent.glob("part-*.parquet"))
    assert len(parts) == 8
    parts[3].write_bytes(parts[3].read_bytes()[:-100])  # its footer torn off
    parts[5].write_bytes(parts[6].read_bytes())  # another range's part under its name
    before = {part.name: part.stat().st_mtime_ns for part in parts}
    result = flaky_run([data], out)
    assert result["resumed"] == 6
    rewritten = [name for name, mtime in before.items() if (out / name).stat().st_mtime_ns != mtime]
    assert rewritten == [parts[3].name, parts[5].name]
    assert sorted(row[0] for row in rows_of(out)) == list(range(4000))
