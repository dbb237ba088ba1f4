"""Animations and multi-page files: every frame is filtered and saved with its timing, or what
the output format cannot hold is reported (per job, in the summary, on the CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from image_helpers import DURATIONS, animation_frames, read_frames, write, write_animation
from PIL import features

from batchcore.processors.cli import main
from batchcore.processors.images.io import load_frames, load_image
from batchcore.processors.images.jobs import run_images

HAS_WEBP = features.check("webp")
KINDS = ["a.gif", "c.png", "d.tif"] + (["b.webp"] if HAS_WEBP else [])
LOOPS = {"a.gif": 0, "b.webp": 3, "c.png": 2}  # loop counts as written (TIFF has none)


def make_sources(folder: Path) -> Path:
    """One 4-frame animation per format (a 2-page TIFF), loop counts from ``LOOPS``."""
    frames = animation_frames()
    for name in KINDS:
        count = 2 if name.endswith(".tif") else 4
        write_animation(folder / name, frames[:count], loop=LOOPS.get(name, 0))
    return folder


def expected_inverted(count: int) -> list[np.ndarray[Any, Any]]:
    return [255 - np.asarray(frame, dtype=np.int16) for frame in animation_frames()[:count]]


def assert_same_pixels(name: str, got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    if name.endswith(".webp"):  # saved lossy at --quality; frames differ by 40 levels
        assert np.abs(got - want).mean() < 10, name
    else:
        assert np.array_equal(got, want), name


def test_the_sources_hold_what_the_tests_expect(tmp_path: Path) -> None:
    make_sources(tmp_path)
    for name in KINDS:
        frames, durations, loop = read_frames(tmp_path / name)
        count = 2 if name.endswith(".tif") else 4
        assert len(frames) == count, name
        if name != "d.tif":
            assert durations == pytest.approx(DURATIONS) and loop == LOOPS[name], name


def test_load_frames_reads_every_frame_and_its_timing(tmp_path: Path) -> None:
    make_sources(tmp_path)
    gif = load_frames(tmp_path / "a.gif")
    assert len(gif) == 4 and gif.durations == tuple(DURATIONS) and gif.loop == 0
    assert gif.disposal is not None and len(gif.disposal) == 4
    tiff = load_frames(tmp_path / "d.tif")
    assert len(tiff) == 2 and tiff.durations is None and tiff.loop is None
    assert load_image(tmp_path / "a.gif").size == (24, 16)  # the first frame


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "per-job"])
def test_every_frame_is_filtered_and_kept_with_its_timing(
    tmp_path: Path, backend: str, grouped: bool
) -> None:
    src = make_sources(tmp_path / "src")
    summary = run_images(
        src, tmp_path / "out", ["invert"], backend=backend, workers=2, grouped=grouped
    )
    assert [(r.ok, r.reason, r.dropped) for r in summary.results] == [(True, "", "")] * len(KINDS)
    for name in KINDS:
        stem, ext = name.split(".")
        frames, durations, loop = read_frames(tmp_path / "out" / f"{stem}_invert.{ext}")
        want = expected_inverted(2 if ext == "tif" else 4)
        assert len(frames) == len(want), name
        for got, expected in zip(frames, want, strict=True):
            assert_same_pixels(name, got, expected)
        if ext != "tif":
            assert durations == pytest.approx(DURATIONS) and loop == LOOPS[name], name


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "per-job"])
def test_what_a_format_cannot_hold_is_reported(tmp_path: Path, backend: str, grouped: bool) -> None:
    src = make_sources(tmp_path / "src")
    to_jpeg = run_images(
        src, tmp_path / "jpg", ["invert"], fmt="jpg", backend=backend, workers=2, grouped=grouped
    )
    dropped = {Path(r.source).name: r.dropped for r in to_jpeg.results if r.ok}
    assert dropped == {
        name: "page 2 (1 of 2; JPEG holds one image)"
        if name == "d.tif"
        else "frames 2-4 (3 of 4; JPEG holds one image)"
        for name in KINDS
    }
    assert len(to_jpeg.dropped) == len(KINDS)
    assert to_jpeg.as_json()["dropped"][0]["dropped"].endswith("JPEG holds one image)")
    first, _, _ = read_frames(tmp_path / "jpg" / "a_invert.jpg")
    assert np.abs(first[0] - expected_inverted(1)[0]).mean() < 10  # the first frame, filtered

    to_tiff = run_images(
        src, tmp_path / "tif", ["invert"], fmt="tif", backend=backend, workers=2, grouped=grouped
    )
    notes = {Path(r.source).name: r.dropped for r in to_tiff.results}
    timing = "frame durations and loop count (TIFF pages have no timing)"
    assert notes == {name: "" if name == "d.tif" else timing for name in KINDS}
    frames, _, _ = read_frames(tmp_path / "tif" / "a_invert.tif")
    assert len(frames) == 4  # the frames themselves are kept, as pages


def test_a_still_image_reports_nothing(tmp_path: Path) -> None:
    write(tmp_path / "src" / "still.gif", animation_frames(1)[0])
    summary = run_images(tmp_path / "src", tmp_path / "out", ["invert"], fmt="jpg")
    assert [(r.ok, r.dropped) for r in summary.results] == [(True, "")]


def test_the_cli_keeps_frames_and_reports_drops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_sources(tmp_path / "src")
    assert main(["images", str(src), "-o", str(tmp_path / "same"), "-f", "invert"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "dropped" not in out
    frames, durations, _ = read_frames(tmp_path / "same" / "a_invert.gif")
    assert len(frames) == 4 and durations == DURATIONS

    argv = ["images", str(src), "-o", str(tmp_path / "jpg"), "-f", "invert", "--format", "jpg"]
    assert main(argv) == 0  # every output was written: dropping frames is not a failure
    out, err = capsys.readouterr()
    gif_line = (
        f"batchcore: dropped [invert]: {tmp_path / 'jpg' / 'a_invert.jpg'} "
        f"(from {src / 'a.gif'}) lacks frames 2-4 (3 of 4; JPEG holds one image)"
    )
    assert gif_line in err.splitlines()
    assert len(err.splitlines()) == len(KINDS)
    assert f"{len(KINDS)} ok, {len(KINDS)} with frames dropped, 0 failed" in out

    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert err == ""
    assert {Path(entry["source"]).name for entry in report["dropped"]} == set(KINDS)
    assert report["dropped"][0] == {
        "source": str(src / "a.gif"),
        "filter": "invert",
        "output": str(tmp_path / "jpg" / "a_invert.jpg"),
        "dropped": "frames 2-4 (3 of 4; JPEG holds one image)",
    }
