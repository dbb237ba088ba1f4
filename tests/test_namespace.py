"""One top-level import package: ``processors/`` installs as ``batchcore.processors``, and the
command runs the same as ``batchcore`` and as ``python -m batchcore``."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packages_in(folder: Path, name: str) -> set[str]:
    """``name`` and the dotted names of the packages (folders with ``__init__.py``) under it."""
    return {
        ".".join([name, *init.parent.relative_to(folder).parts])
        for init in folder.rglob("__init__.py")
    }


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in ``cwd``, seeing only what is installed (no PYTHONPATH)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_processors_installs_only_under_batchcore(tmp_path: Path) -> None:
    code = (
        "import importlib.util, batchcore.processors.cli\n"
        "print(importlib.util.find_spec('processors'))\n"
        "print(batchcore.processors.cli.main.__module__)\n"
    )
    result = run_python(code, cwd=tmp_path)  # not the repo root, whose processors/ is on sys.path
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["None", "batchcore.processors.cli"]


def test_python_m_batchcore_prints_what_the_batchcore_command_prints() -> None:
    (script,) = [
        entry
        for entry in importlib.metadata.entry_points(group="console_scripts")
        if entry.name == "batchcore"
    ]
    assert script.value == "batchcore.processors.cli:main"
    command = shutil.which("batchcore", path=sysconfig.get_path("scripts"))
    assert command is not None, "the batchcore console script is not installed"
    outputs = []
    for argv in ([command, "--help"], [sys.executable, "-m", "batchcore", "--help"]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert (result.returncode, result.stderr) == (0, ""), argv
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith("usage: batchcore ")


def test_every_package_is_listed_for_installation() -> None:
    """pyproject names its packages one by one (for the processors/ mapping): a new subpackage
    of batchcore/ or processors/ must be added there, or installs would silently lack it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"batchcore.processors": "processors"}
    on_disk = packages_in(ROOT / "batchcore", "batchcore")
    on_disk |= packages_in(ROOT / "processors", "batchcore.processors")
    assert sorted(setuptools["packages"]) == sorted(on_disk)
