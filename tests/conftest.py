"""Shared fixtures: the backend parameter (from the registry), a leak check, hypothesis profiles."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psutil
import pytest
from hypothesis import HealthCheck, settings

import batchcore
from batchcore.backends import process as process_backend

settings.register_profile(
    "default",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

BACKENDS = batchcore.available_backends()
PARALLEL_BACKENDS = [name for name in BACKENDS if name != "sequential"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every registered backend, by name: a new backend is tested without editing tests."""
    return str(request.param)


@pytest.fixture(params=PARALLEL_BACKENDS)
def parallel_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pool_worker_pids() -> set[int]:
    """Pids of the warm workers that live process backends keep on purpose."""
    pids: set[int] = set()
    for backend in list(process_backend._LIVE):
        for pool in backend._idle:
            pids.update(worker.proc.pid for worker in pool.workers)
    return pids


def _stray_children(before: set[int]) -> list[psutil.Process]:
    allowed = before | pool_worker_pids()
    strays = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid in allowed or child.status() == psutil.STATUS_ZOMBIE:
                continue
            strays.append(child)
        except psutil.NoSuchProcess:
            continue
    return strays


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
