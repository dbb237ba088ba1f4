"""Images, bad files and module-level filters and nodes for the batchcore.processors.images tests.

Everything is small and deterministic. Filters and nodes live at module level so worker
processes import them by reference; their behaviour is chosen by arguments, never by editing.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms

from batchcore.processors.images.filters import register_filter
from batchcore.processors.images.jobs import ImageGroup, ImageJobsNode, JobResult

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "images"
MAKE_IMAGES = ROOT / "data" / "make_images.py"
SAMPLE_NAMES = ["alpha.png", "gradient.jpg", "gray.png", "rotated.jpg", "nested/shapes.webp"]


def noise(mode: str = "RGB", size: tuple[int, int] = (48, 32), seed: int = 0) -> Image.Image:
    """A random image in ``mode`` (made as RGBA noise, then converted)."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]  # every alpha level
    return Image.fromarray(rgba).convert(mode)


def write(path: Path, image: Image.Image, **options: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def pixels(path: str | os.PathLike[str]) -> np.ndarray[Any, Any]:
    """The decoded pixels of an output file (as stored: no orientation, no conversion)."""
    with Image.open(path) as image:
        return np.asarray(image)


def mode_of(path: str | os.PathLike[str]) -> str:
    with Image.open(path) as image:
        return image.mode


def files_under(folder: Path) -> list[str]:
    """Every file or symlink under ``folder`` (hidden ones included), relative, sorted."""
    found = [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
    return sorted(str(p.relative_to(folder)) for p in found)


def copy_samples(folder: Path) -> Path:
    shutil.copytree(SAMPLES, folder)
    return folder


def srgb_profile() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return bytes(profile.tobytes())


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def flip_bytes(data: bytes, start: int, count: int = 20, step: int = 7) -> bytes:
    """``data`` with ``count`` bytes inverted, ``step`` apart from ``start``."""
    damaged = bytearray(data)
    for offset in range(start, start + count * step, step):
        damaged[offset] ^= 0xFF
    return bytes(damaged)


def write_bad_files(folder: Path) -> dict[str, Path]:
    """One file per way an input can be bad (all named like images), by kind.

    Each is checked to really fail to decode with Pillow (a JPEG with flipped bits often
    decodes into garbage silently, so the flip positions here are ones that do not).
    """
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = encoded(noise("RGB", (96, 64), seed=1), "JPEG", quality=90)
    png = encoded(noise("RGB", (96, 64), seed=2), "PNG")
    files = {
        "bit-flipped png": folder / "flipped.png",
        "bit-flipped jpeg": folder / "flipped.jpg",
        "truncated jpeg": folder / "truncated.jpg",
        "zero bytes": folder / "empty.jpg",
        "not an image": folder / "notes.jpg",
    }
    files["bit-flipped png"].write_bytes(flip_bytes(png, len(png) // 2))
    files["bit-flipped jpeg"].write_bytes(_flipped_in_scan(jpeg))
    files["truncated jpeg"].write_bytes(jpeg[: int(len(jpeg) * 0.9)])
    files["zero bytes"].write_bytes(b"")
    files["not an image"].write_bytes(b"these are my holiday notes, not a photo\n" * 20)
    return files


def _flipped_in_scan(jpeg: bytes) -> bytes:
    """``jpeg`` with bits flipped in its compressed data: it still opens (Pillow reads only the
    header) but fails in ``load()``. The first such position from the middle on is used."""
    for start in range(len(jpeg) // 2, len(jpeg) - 200, 37):
        damaged = flip_bytes(jpeg, start, count=60, step=3)
        with Image.open(io.BytesIO(damaged)) as image:
            try:
                image.load()
            except OSError:
                return damaged
    raise AssertionError("no bit flip made this JPEG undecodable")


# --- filters (module level, so worker processes find them) -------------------------------------


@register_filter("test_fails_on_wide")
def fails_on_wide(image: Image.Image, limit: int = 100) -> Image.Image:
    """Raises for images wider than ``limit`` (a filter bug that hits some images only)."""
    if image.width > limit:
        raise ValueError(f"width {image.width} > {limit}")
    return image.copy()


@register_filter("test_exits_on_wide")
def exits_on_wide(image: Image.Image, limit: int = 100) -> Image.Image:
    """Kills its process for images wider than ``limit`` (a crashing native decoder)."""
    if image.width > limit:
        os._exit(3)
    return image.copy()


@register_filter("test_quantize")
def quantize(image: Image.Image, colours: int = 8) -> Image.Image:
    """Returns a palette (P) image: what a user filter may hand to the next step or the saver."""
    return image.convert("RGB").quantize(colours)


@register_filter("test_to_i16")
def to_i16(image: Image.Image) -> Image.Image:
    """Returns a 16-bit image (values scaled 257 x 8-bit)."""
    grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return Image.fromarray(grey)


class DiesWhileSaving(ImageJobsNode):
    """In a worker process, writes half of the first output of ``victim`` to its temporary
    file, then kills the worker: what a power cut or an OOM kill mid-write leaves behind."""

    def __init__(self, *args: Any, victim: str = "", **options: Any) -> None:
        super().__init__(*args, **options)
        self.victim = victim

    def exec(self, group: ImageGroup) -> list[JobResult]:
        if os.path.basename(group.source) == self.victim:
            original = Image.Image.save

            def half_then_die(image: Image.Image, fp: Any, *args: Any, **params: Any) -> None:
                original(image, fp, *args, **params)  # fp: the open temporary file
                fp.truncate(fp.tell() // 2)
                fp.flush()
                os._exit(9)

            Image.Image.save = half_then_die  # type: ignore[method-assign]  # this worker only
        return super().exec(group)


# --- animations and multi-page files ------------------------------------------------------------

DURATIONS = [100, 200, 300, 400]  # ms: distinct, so a frame put in the wrong place shows


def animation_frames(count: int = 4, size: tuple[int, int] = (24, 16)) -> list[Image.Image]:
    """``count`` RGB frames, each a different flat colour with a white bar at a different row
    (few colours: GIF's palette holds them exactly; distinct: no encoder merges two)."""
    frames = []
    for index in range(count):
        pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        pixels[:, :] = (40 * index, 255 - 40 * index, 100)
        pixels[3 * index : 3 * index + 4, :] = 255
        frames.append(Image.fromarray(pixels))
    return frames


def write_animation(path: Path, frames: list[Image.Image], *, loop: int = 0) -> Path:
    """``frames`` in one file of the format ``path``'s extension names: an animation (GIF,
    WebP losslessly, PNG as APNG) with ``DURATIONS`` and ``loop``, or a multi-page TIFF."""
    options: dict[str, Any] = {"save_all": True, "append_images": frames[1:]}
    if path.suffix != ".tif":
        options.update(duration=DURATIONS[: len(frames)], loop=loop)
    if path.suffix == ".webp":
        options["lossless"] = True
    return write(path, frames[0], **options)


def read_frames(path: str | os.PathLike[str]) -> tuple[list[np.ndarray[Any, Any]], list[Any], Any]:
    """The frames of an output file as RGB arrays, with their durations and the loop count."""
    arrays, durations = [], []
    with Image.open(path) as image:
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            image.load()  # WebP sets a frame's duration when it loads
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.int16))
            durations.append(image.info.get("duration"))
        return arrays, durations, image.info.get("loop")


@register_filter("test_grow")
def grow(image: Image.Image, factor: int = 2) -> Image.Image:
    """A user filter that enlarges without declaring its output size (checked on its result)."""
    return image.resize((image.width * factor, image.height * factor))
