"""Outputs are written without following symlinks and re-checked at write time: a folder swapped
for a symlink, or a symlink planted at an output's name, after planning, fails that job and
writes nothing outside OUT."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from image_helpers import files_under, noise, write

from batchcore.processors.errors import ImageWriteError
from batchcore.processors.images.io import save_image
from batchcore.processors.images.jobs import (
    ImageBatchFlow,
    ImageJobsNode,
    JobResult,
    plan_images,
    prepare_outputs,
)


def run_plan(jobs: Any, backend: str, grouped: bool) -> list[JobResult]:
    runner = (
        ImageJobsNode(jobs, backend=backend)
        if grouped
        else ImageBatchFlow(jobs=jobs, backend=backend)
    )
    shared: dict[str, Any] = {}
    runner.run(shared)
    return list(shared["image_results"])


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "per-job"])
def test_a_folder_swapped_for_a_symlink_after_planning(
    tmp_path: Path, backend: str, grouped: bool
) -> None:
    write(tmp_path / "src" / "top.png", noise("RGB", (8, 8)))
    write(tmp_path / "src" / "nested" / "deep.png", noise("RGB", (8, 8)))
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    plan = plan_images(tmp_path / "src", out, ["invert"])
    prepare_outputs(plan)
    shutil.rmtree(out / "nested")
    (out / "nested").symlink_to(elsewhere)  # between the plan's check and the write
    results = {Path(r.source).name: r for r in run_plan(plan.jobs, backend, grouped)}
    assert results["top.png"].ok
    assert results["deep.png"].reason == (
        f"{out / 'nested' / 'deep_invert.png'}: cannot write: OSError: "
        f"[Errno 40] is a symlink; refusing to write through it: '{out / 'nested'}'"
    )
    assert files_under(elsewhere) == []
    assert files_under(out) == ["nested", "top_invert.png"]


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "per-job"])
def test_a_symlink_planted_at_an_output_name_after_planning(tmp_path: Path, grouped: bool) -> None:
    write(tmp_path / "src" / "a.png", noise("RGB", (8, 8)))
    target = tmp_path / "precious.png"
    target.write_bytes(b"not to be touched")
    out = tmp_path / "out"
    plan = plan_images(tmp_path / "src", out, ["invert"])
    prepare_outputs(plan)
    (out / "a_invert.png").symlink_to(target)
    (result,) = run_plan(plan.jobs, "sequential", grouped)
    assert result.reason == (
        f"{out / 'a_invert.png'}: cannot write: OSError: [Errno 40] is a symlink; "
        f"refusing to write over it: '{out / 'a_invert.png'}'"
    )
    assert target.read_bytes() == b"not to be touched"
    assert (out / "a_invert.png").is_symlink()
    assert files_under(out) == ["a_invert.png"]  # no temporary file left either


def test_save_image_follows_no_symlink_below_its_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ImageWriteError, match=r"is a symlink; refusing to write through it"):
        save_image(
            noise("RGB", (4, 4)), tmp_path / "root" / "sub" / "a.png", root=tmp_path / "root"
        )
    assert files_under(tmp_path / "elsewhere") == []
    save_image(noise("RGB", (4, 4)), tmp_path / "root" / "new" / "a.png", root=tmp_path / "root")
    assert files_under(tmp_path / "root" / "new") == ["a.png"]  # missing folders are made


def test_save_image_without_a_root_refuses_a_symlink_at_its_path(tmp_path: Path) -> None:
    (tmp_path / "link.png").symlink_to(tmp_path / "target.png")
    with pytest.raises(ImageWriteError, match=r"is a symlink; refusing to write over it"):
        save_image(noise("RGB", (4, 4)), tmp_path / "link.png")
    assert not (tmp_path / "target.png").exists()
