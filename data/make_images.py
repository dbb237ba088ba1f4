"""Write small deterministic sample images (gradients, shapes and noise) for tests and examples.

The same seed always gives the same pixels (numpy's PCG64 and Pillow's drawing); the encoded
bytes are reproducible for a given Pillow and codec build.

    python data/make_images.py                        # data/images/: the five committed samples
    python data/make_images.py --bench 200 --size 1920x1080 /tmp/photos   # benchmark JPEGs

Samples: ``gradient.jpg`` (RGB), ``alpha.png`` (RGBA, soft transparent edges), ``gray.png`` (L),
``rotated.jpg`` (stored 192x128 landscape with EXIF orientation 6: upright it is 128x192
portrait, with a red marker in its top-right corner), ``nested/shapes.webp`` (in a subfolder).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEFAULT_OUT = Path(__file__).with_name("images")
DEFAULT_SEED = 42
ORIENTATION = 0x0112
QUALITY = 90
MARKER = (0, 0, 23, 23)  # in the stored image; orientation 6 shows it top-right


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: a smooth two-colour gradient, a few shapes, sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    mix = (x / max(width - 1, 1) * 0.7 + y / max(height - 1, 1) * 0.3)[..., None]
    pixels = start * (1 - mix) + end * mix
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1 + 2, y1 + 2), fill=colour)
        else:
            draw.rectangle((x0, y0, x1 + 2, y1 + 2), fill=colour)
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def with_alpha(width: int, height: int, seed: int) -> Image.Image:
    """RGBA: an opaque disc fading to fully transparent corners, over coloured stripes."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((height, width, 3), np.uint8)
    stripes = (np.arange(width) // 16) % 3
    for band in range(3):
        rgb[..., band] = np.where(stripes == band, 220, 40)[None, :] + rng.integers(0, 20, (1, 1))
    y, x = np.mgrid[0:height, 0:width]
    distance = np.hypot((x - width / 2) / (width / 2), (y - height / 2) / (height / 2))
    alpha = np.clip((1.2 - distance) * 255 / 0.6, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]))


def grey(width: int, height: int, seed: int) -> Image.Image:
    """L: a radial gradient with mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    radial = np.hypot(x - width / 3, y - height / 3) / np.hypot(width, height) * 400
    values = np.clip(radial + rng.normal(0, 3, (height, width)), 0, 255)
    return Image.fromarray(values.astype(np.uint8))


def sideways(width: int, height: int, seed: int) -> Image.Image:
    """A landscape photo with a red 24x24 marker in its top-left corner (``MARKER``)."""
    image = photo(width, height, seed)
    ImageDraw.Draw(image).rectangle(MARKER, fill=(255, 0, 0))
    return image


def write_samples(out: Path, seed: int = DEFAULT_SEED) -> list[Path]:
    """The committed samples; returns their paths."""
    (out / "nested").mkdir(parents=True, exist_ok=True)
    written = []
    target = out / "gradient.jpg"
    photo(256, 192, seed).save(target, quality=QUALITY)
    written.append(target)
    target = out / "alpha.png"
    with_alpha(160, 120, seed + 1).save(target)
    written.append(target)
    target = out / "gray.png"
    grey(128, 96, seed + 2).save(target)
    written.append(target)
    target = out / "rotated.jpg"
    stored = sideways(192, 128, seed + 3)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored.save(target, quality=QUALITY, exif=exif.tobytes())
    written.append(target)
    target = out / "nested" / "shapes.webp"
    photo(200, 150, seed + 4).save(target, quality=QUALITY)
    written.append(target)
    return written


def write_bench(out: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    """``count`` photo-like JPEGs of ``size`` named ``photo_0000.jpg``..., for benchmarks."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        target = out / f"photo_{index:04d}.jpg"
        photo(size[0], size[1], seed + index).save(target, quality=QUALITY)
        written.append(target)
    return written


def parse_size(text: str) -> tuple[int, int]:
    """``1920x1080`` -> (1920, 1080)."""
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 1920x1080, got {text!r}") from None
    if not sep or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected WxH such as 1920x1080, got {text!r}")
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help=f"folder (default: {DEFAULT_OUT})")
    parser.add_argument("--bench", type=int, metavar="N", help="write N benchmark JPEGs instead")
    parser.add_argument("--size", type=parse_size, default=(1920, 1080), metavar="WxH")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if args.bench is not None:
        if args.out is None:
            parser.error("--bench needs an output folder")
        written = write_bench(args.out, args.bench, args.size, args.seed)
    else:
        written = write_samples(args.out or DEFAULT_OUT, args.seed)
    total = sum(path.stat().st_size for path in written)
    seconds = time.perf_counter() - began
    print(f"wrote {len(written)} images, {total:,} bytes, in {seconds:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
