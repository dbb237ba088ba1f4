"""``max_memory=``: a process worker that grows past the cap is stopped and replaced, its item
fails with ``ItemMemoryError`` (retried per ``max_retries``) and the batch goes on.

The hogs allocate for real but stop at ``HOG_BOUND`` and then wait: if the cap failed, the item
would end (and the test fail) without taking the machine down.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, backend_params
from csv_helpers import SALES

import batchcore
from batchcore import BatchNode, ItemMemoryError
from batchcore.backends import get_backend, process
from batchcore.options import parse_size
from batchcore.processors.cli import main

CAP = "200MiB"
HOG_BOUND = 600 << 20  # bytes a hog allocates at most before it waits for the watchdog
HOG_WAIT = 20.0  # seconds it then waits: far longer than the 50 ms poll under any load
ITEMS = list(range(6))
BAD = 3


def hog(kind: str) -> None:
    """Allocate (and touch) memory in 8 MiB steps up to ``HOG_BOUND``, then wait."""
    keep: list[Any] = []
    for _ in range(HOG_BOUND // (8 << 20)):
        if kind == "numpy":
            import numpy as np

            keep.append(np.ones(1 << 20))  # 8 MiB of float64, written by C code
        else:
            keep.append(b"x" * (8 << 20))
    time.sleep(HOG_WAIT)


class HogNode(BatchNode):
    """Item ``BAD`` allocates without bound (``params["kind"]``); the others return ``x * 10``.
    Each attempt at ``BAD`` leaves a file in ``params["marker_dir"]``."""

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return list(shared["items"])

    def exec(self, item: int) -> int:
        if item == BAD and self.params.get("bad", True):
            folder = Path(self.params["marker_dir"])
            (folder / f"attempt-{len(list(folder.iterdir()))}").touch()
            hog(self.params.get("kind", "python"))
        return item * 10

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["out"] = exec_res


def run_hog(tmp_path: Path, bad: bool = True, **options: Any) -> tuple[HogNode, dict[str, Any]]:
    node = HogNode(backend="process", workers=2, max_memory=CAP, **options)
    node.set_params({"marker_dir": str(tmp_path), "bad": bad})
    shared: dict[str, Any] = {"items": ITEMS}
    node.run(shared)
    return node, shared


def attempts(tmp_path: Path) -> int:
    return len(list(tmp_path.iterdir()))


@pytest.mark.crash
@pytest.mark.parametrize("kind", ["python", "numpy"])
def test_hog_fails_naming_item_and_cap_and_worker_is_replaced(kind: str, tmp_path: Path) -> None:
    node = HogNode(backend="process", workers=2, max_memory=CAP)
    node.set_params({"marker_dir": str(tmp_path), "kind": kind})
    began = time.monotonic()
    with pytest.raises(ItemMemoryError, match=r"item 3 \(3\) used .* over max_memory=200 MiB"):
        node.run({"items": ITEMS})
    assert time.monotonic() - began < HOG_WAIT  # the watchdog, not the hog's own end
    assert attempts(tmp_path) == 1
    pool = get_backend("process", 2)._idle[0]  # type: ignore[attr-defined]
    assert len(pool.workers) == 2
    # The worker is replaced: the next batch on the same pool succeeds, on fresh workers.
    _, shared = run_hog(tmp_path, bad=False)
    assert shared["out"] == [x * 10 for x in ITEMS]


@pytest.mark.crash
def test_error_carries_item_cap_usage_and_worker(tmp_path: Path) -> None:
    node = HogNode(backend="process", workers=2, max_memory=CAP)
    node.set_params({"marker_dir": str(tmp_path)})
    with pytest.raises(ItemMemoryError) as caught:
        node.run({"items": ITEMS})
    error = caught.value
    assert isinstance(error, MemoryError)  # a plain ``except MemoryError`` catches it
    assert (error.index, error.item_repr, error.limit) == (BAD, "3", 200 << 20)
    assert error.used > error.limit
    pool = get_backend("process", 2)._idle[0]  # type: ignore[attr-defined]
    assert error.pid not in {worker.ident for worker in pool.workers}
    assert any("item 3 (3)" in note for note in getattr(error, "__notes__", []))


@pytest.mark.crash
def test_collect_keeps_every_other_item(tmp_path: Path) -> None:
    node, shared = run_hog(tmp_path, on_error="collect")
    assert shared["out"] == [x * 10 for x in ITEMS if x != BAD]
    [failure] = node.batch_stats.failures
    assert failure.index == BAD
    assert isinstance(failure.exception, ItemMemoryError)
    assert node.batch_stats.failed == 1


@pytest.mark.crash
def test_max_retries_retries_on_fresh_workers(tmp_path: Path) -> None:
    node = HogNode(backend="process", workers=2, max_memory=CAP, max_retries=3)
    node.set_params({"marker_dir": str(tmp_path)})
    with pytest.raises(ItemMemoryError, match="gave up after 3 attempts"):
        node.run({"items": ITEMS})
    assert attempts(tmp_path) == 3


class KeepsMemory(BatchNode):
    """Item 0 leaves 300 MiB in a module-level list when it returns; each item returns its pid."""

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return list(range(4))

    def exec(self, item: int) -> int:
        if item == 0:
            KEPT.append(b"x" * (300 << 20))
        return os.getpid()

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["pids"] = exec_res


KEPT: list[bytes] = []


@pytest.mark.crash
def test_worker_over_the_cap_after_its_job_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an item leaves behind is not charged to the worker's next item: the worker is
    replaced when it delivers its job (the periodic check, which would blame item 0, is off)."""
    monkeypatch.setattr(process, "MEMORY_POLL", 3600.0)
    node = KeepsMemory(backend="process", workers=1, chunksize=1, max_memory=CAP)
    shared: dict[str, Any] = {}
    node.run(shared)
    first, *rest = shared["pids"]
    assert first not in rest


class Tiny(BatchNode):
    releases_gil = True  # alone, this would make backend="auto" choose threads

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return [1, 2, 3]

    def exec(self, item: int) -> int:
        return item + 1

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["out"] = exec_res


def test_auto_runs_processes_under_max_memory() -> None:
    node = Tiny(backend="auto", workers=2, max_memory="1GiB")
    shared: dict[str, Any] = {}
    node.run(shared)
    assert shared["out"] == [2, 3, 4]
    assert node.batch_stats.backend == "process"
    assert "max_memory" in node.batch_stats.reason


def caps_memory(name: str) -> bool:
    try:
        return get_backend(name).caps_memory
    except ImportError:  # Dask's extra is not installed: its row is skipped anyway
        return False


REFUSING = [name for name in BACKENDS if not caps_memory(name)]


@pytest.mark.parametrize("backend", backend_params(REFUSING))
def test_backends_that_cannot_stop_a_worker_refuse(backend: str) -> None:
    node = Tiny(backend=backend, workers=2, max_memory="1GiB")
    with pytest.raises(ValueError, match=rf"max_memory=1 GiB .*backend {backend!r}") as caught:
        node.run({})
    assert "'process'" in str(caught.value)  # says which backend can


def test_use_backend_scope_reaches_the_batch() -> None:
    with batchcore.use_backend("thread", max_memory="1GiB"):
        with pytest.raises(ValueError, match="backend 'thread'"):
            Tiny().run({})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (64 << 20, 64 << 20),
        ("2GiB", 2 << 30),
        ("512M", 512 << 20),
        ("512m", 512 << 20),
        ("1.5 GB", 1_500_000_000),
        ("300MB", 300_000_000),
        ("2Gi", 2 << 30),
        ("20000000", 20_000_000),
        (2e9, 2_000_000_000),
    ],
)
def test_sizes(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [
        ("lots", ValueError, "max_memory must be a number of bytes or a size"),
        ("12Q", ValueError, "units: B, G, GB"),
        ("2 GiB GiB", ValueError, "got '2 GiB GiB'"),
        ("", ValueError, "got ''"),
        ("-1G", ValueError, "got '-1G'"),
        (512, ValueError, "at least 16 MiB"),
        ("1K", ValueError, "at least 16 MiB"),
        (float("nan"), ValueError, "finite"),
        (True, TypeError, "max_memory must be a number of bytes"),
        ([1], TypeError, "got \\[1\\]"),
    ],
)
def test_garbage_sizes_are_refused_when_the_node_is_made(
    value: object, error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        Tiny(max_memory=value)


# --- the command line -------------------------------------------------------------------------


def test_cli_help_lists_max_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["csv", "stats", "--help"]) == 0
    assert "--max-memory SIZE" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["lots", "12Q", "512", "-1G"])
def test_cli_garbage_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["csv", "stats", str(SALES), "--sum", "amount", f"--max-memory={value}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "argument --max-memory: must be" in err and repr(value) in err


def test_cli_runs_under_the_cap(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--workers", "2"]
    code = main([*argv, "--chunk-bytes", "64KiB", "--max-memory", "1GiB"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "process backend, auto: max_memory=" in out


def test_cli_cap_reaches_the_workers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pool running the command's batches watches its workers against the cap given."""
    limits: set[int] = set()
    check_memory = process.ProcessPool.check_memory

    def recording(pool: process.ProcessPool, limit: int, finished: list[Any]) -> list[Any]:
        limits.add(limit)
        return check_memory(pool, limit, finished)

    monkeypatch.setattr(process.ProcessPool, "check_memory", recording)
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--workers", "2"]
    code = main([*argv, "--chunk-bytes", "64KiB", "--max-memory", "1.5GiB"])
    assert (code, capsys.readouterr().err) == (0, "")
    assert limits == {3 << 29}


def test_cli_thread_backend_with_cap_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--backend", "thread"]
    code = main([*argv, "--max-memory", "1GiB"])
    err = capsys.readouterr().err
    assert code == 2
    assert "backend 'thread'" in err
