"""The Dask backend against a real LocalCluster of worker processes on loopback.

Most behaviour is covered by the backend-parametrized tests (the ``backend`` fixture includes
``dask``); here: where it connects, worker loss, crashes, the node travelling once per worker,
and the error without the extra.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed", reason='needs pip install "batchcore[dask]"')

from faulty import FaultyNode, Square, Tracked  # noqa: E402

import batchcore  # noqa: E402
from batchcore import WorkerCrashedError, use_backend  # noqa: E402
from batchcore.backends.dask import DaskBackend  # noqa: E402

pytestmark = pytest.mark.dask


def local_cluster(workers: int) -> Any:
    """A LocalCluster of ``workers`` single-threaded worker processes, quiet, no dashboard."""
    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A cluster of our own (not the shared backend's), for the connection tests."""
    with local_cluster(2) as local:
        yield local


def test_an_explicit_address_is_used(cluster: Any) -> None:
    with DaskBackend(address=cluster.scheduler_address) as backend:
        shared: dict[str, Any] = {"items": list(range(20))}
        Square(backend=backend).run(shared)
        assert shared["out"] == [x * x for x in range(20)]
        assert backend.client().scheduler.address == cluster.scheduler_address


def test_use_backend_takes_the_address(cluster: Any) -> None:
    shared: dict[str, Any] = {"items": [1, 2]}
    with use_backend("dask", address=cluster.scheduler_address) as settings:
        Square().run(shared)
    assert shared["out"] == [1, 4]
    backend = settings.backend
    assert isinstance(backend, DaskBackend)
    assert backend.client().scheduler.address == cluster.scheduler_address
    backend.close()


def test_the_dask_setting_names_the_scheduler(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask

    with dask.config.set({"scheduler-address": cluster.scheduler_address}):
        with DaskBackend() as backend:
            assert backend.client().scheduler.address == cluster.scheduler_address


def test_the_callers_active_client_is_used(cluster: Any) -> None:
    with distributed.Client(cluster) as client, DaskBackend() as backend:
        assert backend.client() is client
        shared: dict[str, Any] = {"items": [1, 2, 3]}
        with use_backend(backend):
            Square().run(shared)
        assert shared["out"] == [1, 4, 9]
    assert client.status == "closed"  # the user's client stays theirs: closed by them, above


def test_a_local_cluster_is_started_once_and_reused() -> None:
    backend = batchcore.get_backend("dask", 2)
    Square(backend="dask", workers=2).run({"items": [1]})
    first = backend.client()  # type: ignore[attr-defined]
    Square(backend="dask", workers=2).run({"items": [2]})
    assert backend.client() is first  # type: ignore[attr-defined]
    assert len(first.scheduler_info()["workers"]) == 2


def test_the_node_travels_once_per_worker(tmp_path: Path) -> None:
    log = tmp_path / "unpickled"
    node = Tracked(str(log), backend="dask", workers=2, chunksize=1)
    shared: dict[str, Any] = {"items": list(range(60))}
    node.run(shared)
    assert shared["out"] == [x * x for x in range(60)]
    assert 1 <= len(log.read_text().split()) <= 2


def test_a_worker_killed_mid_batch_does_not_fail_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A killed worker's tasks are rescheduled by Dask on the others; every item still arrives."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as local,
        DaskBackend(address=local.scheduler_address) as backend,
    ):
        node = FaultyNode(backend=backend, chunksize=1)
        node.set_params({"kind": "raise", "bad": (), "delay": 0.1})
        client = backend.client()
        pids = client.run(os.getpid)  # {worker address: pid}

        def kill_one() -> None:
            time.sleep(0.5)
            os.kill(next(iter(pids.values())), 9)

        import threading

        killer = threading.Thread(target=kill_one)
        killer.start()
        shared: dict[str, Any] = {"items": list(range(30))}
        with caplog.at_level(logging.WARNING, logger="batchcore"):
            node.run(shared)
        killer.join()
        assert shared["out"] == [x * 10 for x in range(30)]
        assert "left during the batch" in caplog.text


@pytest.mark.slow
def test_an_item_that_keeps_killing_workers_is_named() -> None:
    """Dask gives up after its allowed failures; only that item fails, the others arrive."""
    node = FaultyNode(backend="dask", workers=2, chunksize=4, on_error="collect")
    node.set_params({"kind": "exit", "bad": (5,)})
    shared: dict[str, Any] = {"items": list(range(10))}
    began = time.monotonic()
    node.run(shared)
    assert time.monotonic() - began < 90
    assert shared["out"] == [x * 10 for x in range(10) if x != 5]
    [failure] = node.batch_stats.failures
    assert failure.index == 5
    assert isinstance(failure.exception, WorkerCrashedError)


def test_without_the_extra_the_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "import batchcore\n"
        "try:\n"
        "    batchcore.get_backend('dask')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert 'pip install "batchcore[dask]"' in result.stdout


@pytest.fixture()
def cluster_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A scheduler and a worker started in another folder than the client's, as on a real
    cluster; yields the scheduler's address, with the test in a folder holding ``data/``."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with local_cluster(1) as local:
        home = tmp_path / "home"
        (home / "data").mkdir(parents=True)
        root = Path(__file__).resolve().parents[1]
        (home / "data" / "sales.csv").write_bytes((root / "data" / "sales.csv").read_bytes())
        monkeypatch.chdir(home)
        yield local.scheduler_address


def run_cli_on(address: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": address}
    return subprocess.run(
        [sys.executable, "-m", "batchcore", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_relative_paths_reach_workers_started_in_another_folder(cluster_elsewhere: str) -> None:
    """Issue 15.1: a relative input and a relative output folder are the client's, not the
    workers': both are made absolute before anything is sent to a worker."""
    stats = run_cli_on(
        cluster_elsewhere,
        ["csv", "stats", "data/sales.csv", "--sum", "amount", "--backend", "dask", "--json"],
    )
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["rows"] == 5000

    images = Path(__file__).resolve().parents[1] / "data" / "images"
    argv = ["images", str(images), "-o", "out_rel", "-f", "grayscale", "--backend", "dask"]
    result = run_cli_on(cluster_elsewhere, argv)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in Path("out_rel").rglob("*") if p.is_file())
    assert len(written) >= 4, result.stdout
    assert not (Path("..") / "elsewhere" / "out_rel").exists()

    shutil.copytree(images, "data/images")  # a relative source folder too
    argv = ["images", "data/images", "-o", "out_rel2", "-f", "grayscale", "--backend", "dask"]
    result = run_cli_on(cluster_elsewhere, argv)
    assert result.returncode == 0, result.stderr
    assert "0 failed" in result.stdout
    assert len([p for p in Path("out_rel2").rglob("*") if p.is_file()]) == len(written)

    parquet = run_cli_on(
        cluster_elsewhere,
        ["csv", "to-parquet", "data/sales.csv", "pq_rel", "--backend", "dask"],
    )
    assert parquet.returncode == 0, parquet.stderr
    assert any(Path("pq_rel").glob("*.parquet"))
