"""The core's layering: import-linter's contracts (``pyproject.toml``) hold, so a new import cycle
fails CI, and a worker process imports only what it runs."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from batchcore import BatchNode

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports")
    assert lint_imports is not None, (
        'import-linter is part of the test extra: pip install ".[test]"'
    )
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


def imported_modules(path: Path, package: str) -> set[str]:
    """The absolute names of every module ``path`` (a module of ``package``) imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_core_never_imports_the_jobs_built_on_it() -> None:
    """``batchcore.processors`` lives in another folder (``processors/``), where import-linter
    does not see it as part of ``batchcore``: this check reads the core's imports itself."""
    core = ROOT / "batchcore"
    offenders = []
    for path in sorted(core.rglob("*.py")):
        if path == core / "__main__.py":
            continue  # the CLI's entry point: `python -m batchcore`
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for name in imported_modules(path, package):
            if name == "batchcore.processors" or name.startswith("batchcore.processors."):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []
