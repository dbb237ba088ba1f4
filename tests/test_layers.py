"""The core's layering: import-linter's contracts (``pyproject.toml``) hold, so a new import cycle
fails CI, and a worker process imports only what it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchcore import BatchNode

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports")
    if lint_imports is None:
        pytest.skip("needs import-linter (pip install import-linter)")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")  # this checkout first
    result = subprocess.run(
        [lint_imports, "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class LoadedModules(BatchNode):
    """Reports the batchcore modules loaded where its one item runs."""

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return [0]

    def exec(self, item: int) -> list[str]:
        return sorted(name for name in sys.modules if name.startswith("batchcore"))

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["loaded"] = exec_res[0]


def test_a_worker_process_imports_only_what_it_runs() -> None:
    shared: dict[str, Any] = {}
    LoadedModules(backend="process", workers=1).run(shared)
    loaded = shared["loaded"]
    for parent_side in ("thread", "process", "ordered", "dask", "sequential"):
        assert f"batchcore.backends.{parent_side}" not in loaded
    assert "batchcore.backends._worker" in loaded
