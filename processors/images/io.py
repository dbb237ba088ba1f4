"""Reading and writing images for the batch jobs: discovery, checked decoding, mode rules, and
atomic saves.

    load_image:  stat (empty?) -> open under the pixel limit -> [JPEG draft] -> load() (forced
                 here: Pillow opens lazily) -> EXIF orientation -> working mode (L/LA/RGB/RGBA)
    save_image:  working mode -> mode the format can hold (alpha on white for JPEG/BMP) -> ICC
                 profile if it fits -> hidden temporary file in the target folder -> os.replace

Mode rules: 1 -> L; P/PA -> RGBA when transparent, else RGB; L or RGB with a transparent colour
-> LA/RGBA; CMYK -> RGB through its ICC profile (naive formula without one); 16- and 32-bit
integer (I;16, I) -> L, scaled by 1/257; float (F) -> L, clipped; anything else -> RGB. Only the
ICC profile is copied to outputs (not EXIF), and only where the format and mode can use it.
Animated images give their first frame.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import warnings
from collections.abc import Iterator
from functools import cache, lru_cache
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ..errors import ImageDecodeError, ImageWriteError
from ..files import write_atomically

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_QUALITY",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "decode_image",
    "discover_images",
    "load_image",
    "output_format",
    "save_image",
    "to_working_mode",
]

# Output format by file extension (also the input extensions discovery accepts).
FORMATS = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "bmp": "BMP",
    "gif": "GIF",
}
IMAGE_EXTENSIONS = frozenset(f".{ext}" for ext in FORMATS)
IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini"})  # hidden (.DS_Store, ...) are skipped too
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default: 1024 * 1024 * 1024 // 4 // 3
DEFAULT_QUALITY = 90
WORKING_MODES = ("L", "LA", "RGB", "RGBA")
ICC_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})
NO_ALPHA_FORMATS = frozenset({"JPEG", "BMP"})
ORIENTATION = 0x0112

# Pillow reads its pixel limit from a module global at open time. We set it for the duration of
# an open (a header read), under a lock so concurrent opens on the thread backend never mix limits,
# and restore it after: the caller's process keeps its own setting.
_OPEN_LOCK = threading.Lock()


# --- discovery ---------------------------------------------------------------------------------


def is_image_name(name: str) -> bool:
    """An image extension, not hidden, not a system file such as ``Thumbs.db``."""
    if name.startswith(".") or name in IGNORED_NAMES:
        return False
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def discover_images(src: Path, exclude: Path | None = None) -> list[tuple[Path, PurePath]]:
    """``(file, folder relative to src)`` for every image under ``src``, sorted, recursively.

    Hidden files and folders are skipped, symlinked folders are not followed, and ``exclude``
    (the output folder when it lies inside ``src``) is left out. ``src`` may be one file.
    """
    if src.is_file():
        return [(src, PurePath("."))] if is_image_name(src.name) else []
    excluded = os.path.realpath(exclude) if exclude is not None else None
    found: list[tuple[Path, PurePath]] = []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(
            name
            for name in dirs
            if not name.startswith(".") and os.path.realpath(os.path.join(folder, name)) != excluded
        )
        relative = PurePath(os.path.relpath(folder, src))
        for name in sorted(files):
            if is_image_name(name):
                found.append((Path(folder, name), relative))
    return found


def output_format(ext: str) -> str:
    """The Pillow format for an extension (``jpg``, ``.PNG``...); ``ValueError`` if unknown."""
    fmt = FORMATS.get(ext.lower().lstrip("."))
    if fmt is None:
        raise ValueError(
            f"unknown image format {ext!r}; expected one of {', '.join(sorted(FORMATS))}"
        )
    return fmt


# --- decoding ----------------------------------------------------------------------------------


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``path`` fully, upright (EXIF orientation applied), in a working mode.

    ``max_pixels`` (``None``: no limit) rejects larger images before decoding them. With
    ``draft_size``, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, no smaller than it.
    ``ImageDecodeError`` names the file for every way a file can be bad.
    """
    return decode_image(path, max_pixels=max_pixels, draft_size=draft_size)[0]


def decode_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> tuple[Image.Image, bool]:
    """``load_image``, also saying whether the file is a JPEG (whose decode ``draft_size`` can
    change; any other file decodes the same whatever ``draft_size`` is)."""
    name = os.fspath(path)
    try:
        if os.stat(name).st_size == 0:
            raise ImageDecodeError(name, "empty file (0 bytes)")
        with _open_limited(name, max_pixels) as file:
            jpeg = isinstance(file, JpegImagePlugin.JpegImageFile)
            if draft_size is not None and jpeg:
                width, height = draft_size
                if file.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # stored on its side
                    width, height = height, width
                file.draft(None, (width, height))
            file.load()
            image = ImageOps.exif_transpose(file)  # a copy: the file can close now
        return to_working_mode(image), jpeg
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, _bomb_reason(str(exc), max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image Pillow can read (cannot identify it)") from None
    except (OSError, SyntaxError) as exc:
        raise ImageDecodeError(name, str(exc) or type(exc).__name__) from None
    except Exception as exc:  # a corrupt file can make a decoder raise almost anything
        raise ImageDecodeError(name, f"{type(exc).__name__}: {exc}") from None


@contextlib.contextmanager
def _open_limited(name: str, max_pixels: int | None) -> Iterator[ImageFile.ImageFile]:
    """``Image.open`` (a header read) under our pixel limit, closed on exit (see ``_OPEN_LOCK``)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        # Between the limit and twice the limit Pillow only warns; here that is an error too, the
        # same on every backend whatever the process's warning filters say.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            file = Image.open(name)
        except Image.DecompressionBombWarning as exc:
            raise Image.DecompressionBombError(str(exc)) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with file:
        yield file


def _bomb_reason(message: str, max_pixels: int | None) -> str:
    found = re.search(r"\((\d+) pixels\)", message)
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"image has {pixels}, over the limit of {max_pixels or 0:,} "
        "(decompression bomb protection; raise max_pixels / --max-pixels if it is genuine)"
    )


def to_working_mode(image: Image.Image) -> Image.Image:
    """``image`` in L, LA, RGB or RGBA, converted by the rules in this module's docstring."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" in image.info:
        return image.convert(f"{mode}A")
    if mode in WORKING_MODES:
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if mode in ("La", "RGBa"):
        return image.convert(mode.upper())
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode.startswith("I") or mode == "F":
        return _to_8_bit(image)
    return image.convert("RGB")  # YCbCr, LAB, HSV, RGBX


@cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    result: Image.Image | None = None
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            result = ImageCms.profileToProfile(image, source, _srgb(), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            result = None  # a broken profile: the naive formula below
    if result is None:
        result = image.convert("RGB")
    result.info = {key: value for key, value in image.info.items() if key != "icc_profile"}
    return result  # now sRGB, which untagged RGB means


def _to_8_bit(image: Image.Image) -> Image.Image:
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    else:  # I;16, I;16B, I;16L, I: the 16-bit range 0..65535 onto 0..255
        values = np.asarray(image.convert("I"), dtype=np.int64)
        pixels = np.clip((values + 128) // 257, 0, 255).astype(np.uint8)
    result = Image.fromarray(pixels)
    result.info = dict(image.info)
    return result


# --- saving ------------------------------------------------------------------------------------


def for_format(image: Image.Image, fmt: str) -> Image.Image:
    """``image`` in a mode ``fmt`` can hold: working mode, alpha flattened on white for JPEG/BMP."""
    image = to_working_mode(image)  # a user filter may return any mode
    if fmt in NO_ALPHA_FORMATS and image.mode in ("LA", "RGBA"):
        base = image.mode[:-1]
        flat = Image.new(base, image.size, 255 if base == "L" else (255, 255, 255))
        flat.paste(image.convert(base), mask=image.getchannel("A"))
        return flat
    return image  # PNG, TIFF hold every working mode; WebP and GIF convert L/LA themselves


def profile_fits(profile: bytes, mode: str) -> bool:
    """Whether an ICC profile describes ``mode``'s colours (an RGB profile on a grey image
    misleads viewers, so it is dropped)."""
    return _colour_space(profile) == {"L": "GRAY", "LA": "GRAY"}.get(mode, "RGB")


@lru_cache(maxsize=16)
def _colour_space(profile: bytes) -> str:
    try:
        return str(ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.xcolor_space).strip()
    except (ImageCms.PyCMSError, OSError, ValueError):
        return "unreadable"


def save_image(
    image: Image.Image,
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    quality: int = DEFAULT_QUALITY,
    icc_profile: bytes | None = None,
) -> None:
    """Write ``image`` to ``path`` atomically: a hidden temporary file in the same folder,
    renamed over ``path`` when complete, removed on any failure (``ImageWriteError``).

    ``fmt`` defaults to the one ``path``'s extension names; ``quality`` applies to JPEG and
    WebP; ``icc_profile`` is embedded where the format and the saved mode can use it.
    """
    final = Path(path)
    fmt = fmt or output_format(final.suffix)
    image = for_format(image, fmt)
    options: dict[str, Any] = {"icc_profile": None}  # never Pillow's fallback to image.info
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    if icc_profile and fmt in ICC_FORMATS and profile_fits(icc_profile, image.mode):
        options["icc_profile"] = icc_profile
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(final, lambda temporary: image.save(temporary, format=fmt, **options))
    except Exception as exc:
        raise ImageWriteError(str(final), f"{type(exc).__name__}: {exc}") from exc
