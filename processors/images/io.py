"""Reading and writing images for the batch jobs: discovery, checked decoding, mode rules, and
atomic saves.

    load_frames: stat (empty?) -> open under the pixel limit -> [JPEG draft] -> for each frame
                 or page: load() (forced here: Pillow opens lazily) -> EXIF orientation ->
                 working mode (L/LA/RGB/RGBA); with durations, loop count and disposal
    save_image:  working mode -> mode the format can hold (alpha on white for JPEG/BMP) -> ICC
                 profile if it fits -> every frame if the format holds them, else the first
                 and a note of what was dropped -> hidden temporary file in the target folder,
                 opened without following symlinks -> os.replace; to a URL: encoded in memory
                 -> one PUT (an object store has no rename; a PUT appears whole)

Images may also be read from URLs (a ``storage.Source``: ranged GETs of 8 MiB through fsspec,
one for most images) and listed under a URL prefix (``discover_remote_images``: listing only).

Mode rules: 1 -> L; P/PA -> RGBA when transparent, else RGB; L or RGB with a transparent colour
-> LA/RGBA; CMYK -> RGB through its ICC profile (naive formula without one); 16- and 32-bit
integer (I;16, I) -> L, scaled by 1/257; float (F) -> L, clipped; anything else -> RGB. Only the
ICC profile is copied to outputs (not EXIF), and only where the format and mode can use it.
Animated GIF, WebP and APNG files and multi-page TIFFs decode to every frame (``Frames``);
``load_image`` gives the first.

The pixel limit (``max_pixels``) is applied per call without touching Pillow's process-wide
``Image.MAX_IMAGE_PIXELS``, which other threads of a host program may read or set: Pillow looks
its check function up by name at every use (``Image.open``, TIFF tiles, GIF frames, crops), so
it is replaced once by one that reads a ``ContextVar`` set for the duration of our decode only
and defers to Pillow's own check everywhere else. The limit covers the sum over all frames.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ..errors import ImageDecodeError, ImageWriteError
from ..files import write_atomically_in
from ..outputs import is_remote, local_part, put_object, scrub
from ..storage import Source, StorageOptions, expand, protocol_of

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_QUALITY",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "Frames",
    "ImageInput",
    "decode_frames",
    "decode_image",
    "discover_images",
    "discover_remote_images",
    "load_frames",
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
MULTI_FRAME_FORMATS = frozenset({"GIF", "PNG", "WEBP", "TIFF"})  # PNG as APNG
TIMED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})  # TIFF pages have no durations or loop count
# Disposal by format: GIF's 0-3 (unspecified, keep, background, previous), APNG's 0-2 (keep,
# background, previous); WebP's encoder takes none. Converted when the format changes.
_GIF_TO_APNG = {0: 0, 1: 0, 2: 1, 3: 2}
_APNG_TO_GIF = {0: 1, 1: 2, 2: 3}

# Where an image is read from: a local path, or a ``Source`` (a URL, its size and its options).
ImageInput = str | os.PathLike[str] | Source
READ_BLOCK = 8 << 20  # bytes per ranged GET of a remote image

# The limit of the decode running in this context; None: not ours, Pillow's own check applies.
_LIMIT: ContextVar[tuple[int | None] | None] = ContextVar("max_pixels", default=None)
_INSTALL_LOCK = threading.Lock()


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


def discover_remote_images(
    src: str, options: StorageOptions, exclude: str | None = None
) -> list[tuple[Source, str]]:
    """``(object, key folder relative to src)`` for every image under the URL ``src`` (a prefix,
    listed recursively; one object; or a glob), sorted; ``exclude`` (the output prefix when it
    lies inside ``src``) is left out. Listing only: no image byte is read here."""
    sources = expand(src, options)  # FileNotFoundError naming src when nothing is there
    scheme = f"{protocol_of(src)}://"
    body = src.split("://", 1)[1]
    glob_at = min((body.find(c) for c in "*?[" if c in body), default=-1)
    base = body[:glob_at].rsplit("/", 1)[0] if glob_at >= 0 else body
    base_key = _key(scheme + base)
    excluded = _key(exclude) + "/" if exclude is not None else None
    found: list[tuple[Source, str]] = []
    for source in sources:
        key = _key(source.url)
        if excluded is not None and key.startswith(excluded):
            continue
        name = key.rsplit("/", 1)[-1]
        if not is_image_name(name):
            continue
        below = key[len(base_key) + 1 :] if key.startswith(base_key + "/") else name
        found.append((source, below.rpartition("/")[0] or "."))
    return found


def _key(url: str) -> str:
    """``url``'s bucket and key without the scheme or a trailing ``/`` (``memory://`` keys start
    with ``/`` in fsspec: stripped too, so that listed and given URLs compare)."""
    return url.split("://", 1)[-1].strip("/")


def output_format(ext: str) -> str:
    """The Pillow format for an extension (``jpg``, ``.PNG``...); ``ValueError`` if unknown."""
    fmt = FORMATS.get(ext.lower().lstrip("."))
    if fmt is None:
        raise ValueError(
            f"unknown image format {ext!r}; expected one of {', '.join(sorted(FORMATS))}"
        )
    return fmt


# --- decoding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    """A decoded image: its frames (one for a still; every frame of an animation, every page of
    a multi-page TIFF) with the timing the source gave them.

    ``durations`` are milliseconds per frame and ``loop`` the loop count (0: forever), ``None``
    when the source has none; ``disposal`` is per frame in ``source_format``'s numbering.
    """

    images: tuple[Image.Image, ...]
    durations: tuple[float, ...] | None = None
    loop: int | None = None
    disposal: tuple[int, ...] | None = None
    source_format: str = ""

    @property
    def first(self) -> Image.Image:
        return self.images[0]

    def __len__(self) -> int:
        return len(self.images)


def load_image(
    path: ImageInput,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode the first frame of ``path`` fully, upright (EXIF orientation applied), in a
    working mode.

    ``max_pixels`` (``None``: no limit) rejects larger images before decoding them. With
    ``draft_size``, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, no smaller than it.
    ``ImageDecodeError`` names the file for every way a file can be bad.
    """
    return _decode(_input(path), max_pixels, draft_size, all_frames=False)[0].first


def load_frames(
    path: ImageInput,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Frames:
    """``load_image`` for every frame or page; ``max_pixels`` bounds their sum."""
    return _decode(_input(path), max_pixels, draft_size, all_frames=True)[0]


def decode_image(
    path: ImageInput,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> tuple[Image.Image, bool]:
    """``load_image``, also saying whether the file is a JPEG (whose decode ``draft_size`` can
    change; any other file decodes the same whatever ``draft_size`` is)."""
    frames, jpeg = _decode(_input(path), max_pixels, draft_size, all_frames=False)
    return frames.first, jpeg


def decode_frames(
    path: ImageInput,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> tuple[Frames, bool]:
    """``load_frames``, also saying whether the file is a JPEG (as ``decode_image``)."""
    return _decode(_input(path), max_pixels, draft_size, all_frames=True)


def _input(path: ImageInput) -> str | Source:
    """A local path as text, or a remote ``Source`` (``file://`` sources are local paths)."""
    if isinstance(path, Source):
        return path if is_remote(path.url) else local_part(path.url)
    return os.fspath(path)


def _decode(
    path: str | Source,
    max_pixels: int | None,
    draft_size: tuple[int, int] | None,
    *,
    all_frames: bool,
) -> tuple[Frames, bool]:
    name = path if isinstance(path, str) else path.url
    try:
        size = os.stat(path).st_size if isinstance(path, str) else path.size
        if size == 0:
            raise ImageDecodeError(name, "empty file (0 bytes)")
        with contextlib.ExitStack() as stack:
            # a remote object is read by ranged GETs of READ_BLOCK: one for most images
            opened = (
                path
                if isinstance(path, str)
                else stack.enter_context(path.open(READ_BLOCK, readahead=True))
            )
            stack.enter_context(_pixel_limit(max_pixels))
            file = stack.enter_context(Image.open(opened))
            jpeg = isinstance(file, JpegImagePlugin.JpegImageFile)
            if draft_size is not None and jpeg:
                width, height = draft_size
                if file.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # stored on its side
                    width, height = height, width
                file.draft(None, (width, height))
            frames = _read_frames(name, file, max_pixels, all_frames)
        return frames, jpeg
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


def _read_frames(
    name: str, file: ImageFile.ImageFile, max_pixels: int | None, all_frames: bool
) -> Frames:
    """Every frame of an open ``file`` (or its first), loaded, upright, in a working mode."""
    count = getattr(file, "n_frames", 1) if all_frames else 1
    fmt = file.format or ""
    timed = fmt in TIMED_FORMATS and count > 1
    images: list[Image.Image] = []
    durations: list[float] = []
    disposal: list[int] = []
    total = 0
    for index in range(count):
        file.seek(index)
        total += file.width * file.height
        if max_pixels is not None and total > max_pixels:  # checked before this frame decodes
            raise ImageDecodeError(
                name,
                f"its first {index + 1} of {count} frames have {total:,} pixels, over the "
                f"limit of {max_pixels:,} (raise max_pixels / --max-pixels if it is genuine)",
            )
        file.load()
        images.append(to_working_mode(ImageOps.exif_transpose(file)))  # a copy, kept after close
        durations.append(float(file.info.get("duration", 0) or 0))
        frame_disposal = file.info.get("disposal", getattr(file, "disposal_method", None))
        if isinstance(frame_disposal, int):
            disposal.append(frame_disposal)
    loop = file.info.get("loop")
    return Frames(
        images=tuple(images),
        durations=tuple(durations) if timed else None,
        loop=loop if timed and isinstance(loop, int) else None,
        disposal=tuple(disposal) if timed and len(disposal) == count else None,
        source_format=fmt,
    )


def _limited_check(*args: Any, **kwargs: Any) -> None:
    """Pillow's ``_decompression_bomb_check`` with the limit of the decode running in this
    context, if any: strict (Pillow only warns up to twice its limit), and process-global
    state untouched."""
    limit = _LIMIT.get()
    if limit is None:
        _pillow_check(*args, **kwargs)
        return
    max_pixels = limit[0]
    width, height = args[0]
    pixels = max(1, width) * max(1, height)
    if max_pixels is not None and pixels > max_pixels:
        raise Image.DecompressionBombError(
            f"Image size ({pixels} pixels) exceeds limit of {max_pixels} pixels"
        )


_pillow_check: Callable[..., None] = Image._decompression_bomb_check


def _install_check() -> None:
    """Put ``_limited_check`` in Pillow's place, once per process."""
    global _pillow_check
    with _INSTALL_LOCK:
        current = Image._decompression_bomb_check
        if current is not _limited_check:
            _pillow_check = current
            Image._decompression_bomb_check = _limited_check


@contextlib.contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's size checks use ``max_pixels`` inside this block, in this context only."""
    _install_check()
    token = _LIMIT.set((max_pixels,))
    try:
        yield
    finally:
        _LIMIT.reset(token)


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
    image: Image.Image | Frames,
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    quality: int = DEFAULT_QUALITY,
    icc_profile: bytes | None = None,
    root: str | os.PathLike[str] | None = None,
    storage_options: StorageOptions | None = None,
) -> str:
    """Write ``image`` (one image, or ``Frames``) to ``path`` atomically: a hidden temporary file
    in the same folder, renamed over ``path`` when complete, removed on any failure
    (``ImageWriteError``). Returns what the format could not hold ("" when nothing was lost).

    ``fmt`` defaults to the one ``path``'s extension names; ``quality`` applies to JPEG and
    WebP; ``icc_profile`` is embedded where the format and the saved mode can use it. Folders
    from ``root`` (default: ``path``'s folder) down are opened without following symlinks, and
    a symlink at ``path`` is refused: nothing is ever written outside ``root``.

    A URL ``path`` (``storage_options`` reach its store) is encoded in memory and written in
    one PUT, which makes the object appear whole: no temporary name on a store without rename.
    """
    fmt = fmt or output_format(os.path.splitext(os.fspath(path))[1])
    frames = image if isinstance(image, Frames) else Frames((image,))
    kept, dropped = _what_fits(frames, fmt)
    images = [for_format(frame, fmt) for frame in kept.images]
    options: dict[str, Any] = {"icc_profile": None}  # never Pillow's fallback to image.info
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    if icc_profile and fmt in ICC_FORMATS and profile_fits(icc_profile, images[0].mode):
        options["icc_profile"] = icc_profile
    if len(images) > 1:
        options.update(_animation_options(kept, fmt), save_all=True, append_images=images[1:])

    def write(handle: Any) -> None:
        images[0].save(handle, format=fmt, **options)

    if isinstance(path, str) and is_remote(path):
        try:
            if root is not None and not path.startswith(os.fspath(root).rstrip("/") + "/"):
                raise ValueError(f"{path} is not an object below {root}")
            buffer = io.BytesIO()
            write(buffer)
            put_object(path, buffer.getvalue(), storage_options)
        except Exception as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            reason = scrub(f"{type(exc).__name__}: {text}", storage_options)
            raise ImageWriteError(path, reason) from None
        return dropped
    final = Path(local_part(os.fspath(path)))
    try:
        write_atomically_in(
            final.parent if root is None else local_part(os.fspath(root)), final, write
        )
    except Exception as exc:
        raise ImageWriteError(str(final), f"{type(exc).__name__}: {exc}") from exc
    return dropped


def _what_fits(frames: Frames, fmt: str) -> tuple[Frames, str]:
    """The part of ``frames`` that ``fmt`` can hold, and a note of the rest ("" if nothing)."""
    count = len(frames)
    if count > 1 and fmt not in MULTI_FRAME_FORMATS:
        kind = "page" if frames.durations is None else "frame"
        which = f"{kind} 2" if count == 2 else f"{kind}s 2-{count}"
        note = f"{which} ({count - 1} of {count}; {fmt} holds one image)"
        return replace(frames, images=frames.images[:1]), note
    if count > 1 and fmt not in TIMED_FORMATS and frames.durations is not None:
        return frames, f"frame durations and loop count ({fmt} pages have no timing)"
    return frames, ""


def _animation_options(frames: Frames, fmt: str) -> dict[str, Any]:
    """``save_all`` options keeping ``frames``' durations, loop count and disposal in ``fmt``."""
    options: dict[str, Any] = {}
    if fmt not in TIMED_FORMATS:
        return options
    if frames.durations is not None:
        options["duration"] = [round(duration) for duration in frames.durations]
    if frames.loop is not None:
        options["loop"] = frames.loop
    disposal = frames.disposal
    if disposal is not None and fmt in ("GIF", "PNG"):
        if frames.source_format == "GIF" and fmt == "PNG":
            disposal = tuple(_GIF_TO_APNG.get(value, 0) for value in disposal)
        elif frames.source_format == "PNG" and fmt == "GIF":
            disposal = tuple(_APNG_TO_GIF.get(value, 1) for value in disposal)
        options["disposal"] = list(disposal)
    return options
