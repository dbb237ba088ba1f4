"""Hostile sizes are bounded: ``max_pixels`` caps every filter's output (before it allocates,
where the filter says its size) and the sum of an animation's frames, and is applied per
decode without touching Pillow's process-wide ``Image.MAX_IMAGE_PIXELS``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from image_helpers import animation_frames, noise, write, write_animation
from PIL import Image

from batchcore.processors.errors import ImageDecodeError
from batchcore.processors.images.io import DEFAULT_MAX_PIXELS, load_frames, load_image
from batchcore.processors.images.jobs import run_images

# spec, max_pixels, the output size the error names (the source is 40x30, 1,200 pixels)
OVERSIZED = [
    ("resize:size=65535x65535", DEFAULT_MAX_PIXELS, "65535x65535 (4,294,836,225 pixels)"),
    ("resize:scale=16", 100_000, "640x480 (307,200 pixels)"),
    ("resize:size=0x2000", 100_000, "2667x2000 (5,334,000 pixels)"),
    ("rotate:angle=45", 2_000, "51x51 (2,601 pixels)"),
    ("invert|test_grow:factor=3", 5_000, "120x90 (10,800 pixels)"),  # checked on its result
]


@pytest.mark.parametrize(("spec", "max_pixels", "size"), OVERSIZED, ids=[o[0] for o in OVERSIZED])
def test_a_filter_output_over_max_pixels_fails_its_job_only(
    tmp_path: Path, spec: str, max_pixels: int, size: str
) -> None:
    source = write(tmp_path / "src" / "a.png", noise("RGB", (40, 30)))
    summary = run_images(
        tmp_path / "src", tmp_path / "out", [spec, "invert"], max_pixels=max_pixels
    )
    too_big, inverted = summary.results
    step = spec.split("|")[-1]
    assert not too_big.ok and inverted.ok  # the batch goes on
    assert too_big.reason == (
        f"{source}: filter {step!r} failed: its output would be {size}, over the limit of "
        f"{max_pixels:,} (max_pixels / --max-pixels)"
    )
    assert not Path(too_big.output).exists()


@pytest.mark.parametrize("spec", ["resize:size=65535x65535", "resize:scale=16"])
def test_an_oversized_resize_is_refused_before_it_allocates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    write(tmp_path / "src" / "a.png", noise("RGB", (4000, 30)))
    asked: list[Any] = []

    def spy(image: Image.Image, size: Any, *args: Any, **kwargs: Any) -> Image.Image:
        asked.append(size)  # never the real thing: up to 13 GB
        return image.copy()

    monkeypatch.setattr(Image.Image, "resize", spy)
    summary = run_images(tmp_path / "src", tmp_path / "out", [spec], max_pixels=1_000_000)
    assert asked == []
    assert "over the limit of 1,000,000" in summary.results[0].reason


def test_the_frames_of_an_output_count_together(tmp_path: Path) -> None:
    source = write_animation(tmp_path / "src" / "a.gif", animation_frames())  # 4 of 24x16
    summary = run_images(tmp_path / "src", tmp_path / "out", ["resize:scale=2"], max_pixels=4_000)
    assert summary.results[0].reason == (
        f"{source}: filter 'resize:scale=2' failed: its output would be 4 frames of 48x32 "
        "(6,144 pixels), over the limit of 4,000 (max_pixels / --max-pixels)"
    )
    one_frame_each = run_images(
        tmp_path / "src", tmp_path / "ok", ["resize:scale=2"], max_pixels=6_144
    )
    assert one_frame_each.results[0].ok


def test_the_frames_of_an_input_count_together(tmp_path: Path) -> None:
    source = write_animation(tmp_path / "a.gif", animation_frames())  # 4 x 384 pixels
    assert len(load_frames(source, max_pixels=1_536)) == 4
    with pytest.raises(ImageDecodeError) as caught:
        load_frames(source, max_pixels=1_000)
    assert str(caught.value) == (
        f"{source}: its first 3 of 4 frames have 1,152 pixels, over the limit of 1,000 "
        "(raise max_pixels / --max-pixels if it is genuine)"
    )
    assert load_image(source, max_pixels=1_000).size == (24, 16)  # the first frame alone fits


def test_the_limit_never_touches_pillows_global(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """The host program keeps its own Pillow limit (1,000 here, so that images over it are
    small) while a run with a higher max_pixels loads images above it, on every backend."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    for index in range(24):
        write(tmp_path / "src" / f"ok{index:02}.png", noise("RGB", (60, 60), seed=index))
    big = write(tmp_path / "src" / "big.png", noise("RGB", (80, 80)))
    seen: set[Any] = set()
    stop = threading.Event()

    def host_thread() -> None:
        # A read every millisecond: as often as a spinning reader gets the GIL from the run
        # (every switch interval, 5 ms), without taking half the CPU from it.
        while not stop.wait(0.001):
            value = Image.MAX_IMAGE_PIXELS
            if value != 1_000:
                seen.add(value)

    reader = threading.Thread(target=host_thread)
    reader.start()
    try:
        summary = run_images(
            tmp_path / "src",
            tmp_path / "out",
            ["invert", "mirror"],
            max_pixels=5_000,
            backend=backend,
            workers=2,
        )
    finally:
        stop.set()
        reader.join()
    assert seen == set()
    failed = {result.reason for result in summary.failed}
    assert failed == {
        f"{big}: image has 6,400 pixels, over the limit of 5,000 (decompression bomb "
        "protection; raise max_pixels / --max-pixels if it is genuine)"
    }
    assert summary.ok == 48  # 3,600 pixels each: over the host's limit, under max_pixels
    with pytest.raises(Image.DecompressionBombError):  # outside a run, Pillow's own check
        Image.open(tmp_path / "src" / "ok00.png")
