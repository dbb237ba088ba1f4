"""What every benchmark script reports the same way: the machine, package versions, leftovers."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
from collections.abc import Iterable
from pathlib import Path

import psutil


def package_versions(names: Iterable[str]) -> list[str]:
    """``"name version"`` per package (``"name (not installed)"`` when it is missing)."""
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return parts


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def is_resource_tracker(proc: psutil.Process) -> bool:
    """Resource trackers (multiprocessing's and loky's, started by joblib) exit with us."""
    with contextlib.suppress(psutil.Error):
        return any("resource_tracker" in part for part in proc.cmdline())
    return False


def leftover_processes(grace: float = 5.0) -> list[psutil.Process]:
    """Our descendants still alive after ``grace`` seconds, resource trackers aside (there
    should be none once every pool is shut down)."""
    alive = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=grace)[1]
    return [proc for proc in alive if not is_resource_tracker(proc)]
