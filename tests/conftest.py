"""Shared fixtures: the backend parameter (from the registry), a leak check, hypothesis profiles."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, settings

import batchcore
from batchcore.backends import base

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


def pool_worker_pids() -> set[int]:
    """Pids of the warm workers that live backends keep on purpose (process pools and their
    zygotes, and the processes of a Dask LocalCluster a Dask backend started)."""
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
            for child in psutil.Process().children(recursive=True):
                try:
                    if "multiprocessing" in " ".join(child.cmdline()):
                        pids.add(child.pid)
                except psutil.Error:
                    continue
    return pids


def _stray_children(before: set[int]) -> list[psutil.Process]:
    allowed = before | pool_worker_pids()
    strays = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid in allowed or child.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(child.cmdline()):
                continue  # multiprocessing's (Dask starts it): one per program, lives until exit
            strays.append(child)
        except psutil.NoSuchProcess:
            continue
    return strays


@pytest.fixture(autouse=True, scope="session")
def close_backends_at_the_end() -> Iterator[None]:
    """Close warm pools and clusters while pytest's output streams are still open (at interpreter
    exit, a closing Dask scheduler would log into streams pytest has already closed)."""
    yield
    batchcore.shutdown()


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves a child process behind (other than warm pool workers)."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5
    strays = _stray_children(before)
    while strays and time.monotonic() < deadline:
        time.sleep(0.1)
        strays = _stray_children(before)
    if strays:
        described = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in strays]
        for proc in strays:  # so one failure does not cascade into the next tests
            proc.kill()
        pytest.fail(f"test left child processes behind: {described}")
