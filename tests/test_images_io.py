"""Reading and writing images: discovery, bad files, the pixel limit, orientation, mode rules,
ICC profiles and atomic saves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePath
from typing import BinaryIO

import numpy as np
import pytest
from image_helpers import (
    SAMPLES,
    encoded,
    files_under,
    mode_of,
    noise,
    pixels,
    srgb_profile,
    write,
    write_bad_files,
)
from PIL import Image

from batchcore.processors.errors import ImageDecodeError, ImageWriteError
from batchcore.processors.files import is_temp_name, remove_stale_temps, temp_path
from batchcore.processors.images import io as images_io
from batchcore.processors.images.io import (
    DEFAULT_MAX_PIXELS,
    decode_image,
    discover_images,
    load_image,
    output_format,
    save_image,
    to_working_mode,
)

# --- discovery ---------------------------------------------------------------------------------


def test_discovery_is_recursive_sorted_and_skips_what_is_not_an_image(tmp_path: Path) -> None:
    for name in [
        "b.jpg",
        "a.PNG",
        "sub/c.webp",
        "sub/deeper/d.tiff",
        "e.TIF",
        "f.bmp",
        "g.gif",
        "h.jpeg",
    ]:
        write(tmp_path / name, Image.new("RGB", (2, 2)))
    for name in ["notes.txt", "raw.cr2", ".hidden.jpg", ".DS_Store", "Thumbs.db", "noext"]:
        (tmp_path / name).write_bytes(b"x")
    write(tmp_path / ".cache" / "thumb.jpg", Image.new("RGB", (2, 2)))
    found = [
        (str(path.relative_to(tmp_path)), str(folder)) for path, folder in discover_images(tmp_path)
    ]
    assert found == [
        ("a.PNG", "."),
        ("b.jpg", "."),
        ("e.TIF", "."),
        ("f.bmp", "."),
        ("g.gif", "."),
        ("h.jpeg", "."),
        ("sub/c.webp", "sub"),
        ("sub/deeper/d.tiff", "sub/deeper"),
    ]


def test_discovery_of_one_file_and_of_an_excluded_output_folder(tmp_path: Path) -> None:
    write(tmp_path / "a.jpg", Image.new("RGB", (2, 2)))
    write(tmp_path / "out" / "a_blur.jpg", Image.new("RGB", (2, 2)))
    assert discover_images(tmp_path / "a.jpg") == [(tmp_path / "a.jpg", PurePath("."))]
    assert discover_images(tmp_path / "out" / "missing.txt") == []
    found = discover_images(tmp_path, exclude=tmp_path / "out")
    assert [path.name for path, _ in found] == ["a.jpg"]


def test_discovery_does_not_follow_symlinked_folders(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a.jpg", Image.new("RGB", (2, 2)))
    (tmp_path / "src" / "loop").symlink_to(tmp_path / "src")
    assert [p.name for p, _ in discover_images(tmp_path / "src")] == ["a.jpg"]


@pytest.mark.parametrize(
    ("ext", "fmt"),
    [
        ("jpg", "JPEG"),
        (".JPEG", "JPEG"),
        ("png", "PNG"),
        ("webp", "WEBP"),
        ("TIF", "TIFF"),
        ("bmp", "BMP"),
        ("gif", "GIF"),
    ],
)
def test_output_format_from_extension(ext: str, fmt: str) -> None:
    assert output_format(ext) == fmt


def test_unknown_output_format() -> None:
    with pytest.raises(ValueError, match=r"unknown image format 'xyz'; expected one of bmp, gif"):
        output_format("xyz")


def test_cli_format_choices_match_the_formats() -> None:
    from batchcore.processors.cli import images as images_cli

    assert sorted(images_cli.FORMAT_CHOICES) == sorted(images_io.FORMATS)
    assert images_cli.DEFAULT_QUALITY == images_io.DEFAULT_QUALITY
    assert images_cli.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS == 1024 * 1024 * 1024 // 4 // 3


def test_importing_the_cli_does_not_import_pillow() -> None:
    code = (
        "import sys, batchcore.processors.cli as c; c.build_parser(); print('PIL' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["bit-flipped png", "bit-flipped jpeg", "truncated jpeg", "zero bytes", "not an image"]
)
def test_bad_files_raise_an_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = write_bad_files(tmp_path)[kind]
    with pytest.raises(ImageDecodeError) as caught:
        load_image(path)
    assert str(caught.value).startswith(f"{path}: ")
    expected = {
        "bit-flipped png": "data stream",
        "bit-flipped jpeg": "broken data stream",
        "truncated jpeg": "image file is truncated",
        "zero bytes": "empty file (0 bytes)",
        "not an image": "not an image Pillow can read",
    }[kind]
    assert expected in caught.value.reason
    assert caught.value.path == str(path)


def test_a_missing_file_is_a_decode_error_too(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="No such file"):
        load_image(tmp_path / "gone.jpg")


def test_decode_errors_round_trip_through_pickle() -> None:
    import pickle

    for error in [ImageDecodeError("a.jpg", "truncated"), ImageWriteError("b.png", "disk full")]:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error)
        assert str(again) == str(error)


@pytest.mark.parametrize(
    ("max_pixels", "band"), [(20_000, "error band"), (50_000, "warning band"), (90_000, "at")]
)
def test_pixel_limit(tmp_path: Path, max_pixels: int, band: str) -> None:
    """300x300 = 90,000 pixels: Pillow raises above 2x its limit and only warns between 1x and
    2x; both are errors here, and the limit itself is allowed."""
    path = write(tmp_path / "big.png", Image.new("RGB", (300, 300)))
    if band == "at":
        assert load_image(path, max_pixels=max_pixels).size == (300, 300)
        return
    with pytest.raises(ImageDecodeError) as caught:
        load_image(path, max_pixels=max_pixels)
    assert f"image has 90,000 pixels, over the limit of {max_pixels:,}" in str(caught.value)
    assert "decompression bomb" in str(caught.value)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # the process's own setting is kept


def test_no_pixel_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "big.png", Image.new("L", (300, 300)))
    assert load_image(path, max_pixels=None).size == (300, 300)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_exif_orientation_is_applied() -> None:
    image = load_image(SAMPLES / "rotated.jpg")
    assert image.size == (128, 192)  # stored 192x128 with orientation 6
    marker = np.asarray(image)[2:20, -20:-2].astype(int)  # top-right corner once upright
    assert (marker[..., 0] > 200).all() and (marker[..., 1:] < 60).all()
    with Image.open(SAMPLES / "rotated.jpg") as stored:
        assert stored.size == (192, 128)
        assert stored.getexif()[0x0112] == 6


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation(tmp_path: Path, orientation: int) -> None:
    upright = noise("RGB", (24, 16), seed=7)
    inverse = {
        1: [],
        2: [Image.Transpose.FLIP_LEFT_RIGHT],
        3: [Image.Transpose.ROTATE_180],
        4: [Image.Transpose.FLIP_TOP_BOTTOM],
        5: [Image.Transpose.TRANSPOSE],
        6: [Image.Transpose.ROTATE_90],
        7: [Image.Transpose.TRANSVERSE],
        8: [Image.Transpose.ROTATE_270],
    }[orientation]
    stored = upright
    for method in inverse:
        stored = stored.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = write(tmp_path / "o.png", stored, exif=exif.tobytes())
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(upright))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("1", "L"),
        ("L", "L"),
        ("LA", "LA"),
        ("RGB", "RGB"),
        ("RGBA", "RGBA"),
        ("P", "RGB"),
        ("PA", "RGBA"),
        ("CMYK", "RGB"),
        ("I;16", "L"),
        ("I", "L"),
        ("F", "L"),
        ("YCbCr", "RGB"),
        ("La", "LA"),
        ("RGBa", "RGBA"),
    ],
)
def test_working_modes(mode: str, expected: str) -> None:
    source = noise("RGBA" if expected.endswith("A") else "RGB", (8, 8))
    assert to_working_mode(source.convert(mode)).mode == expected


def test_transparency_in_info_becomes_alpha() -> None:
    palette = Image.new("P", (4, 4), 3)
    palette.info["transparency"] = 3
    assert to_working_mode(palette).mode == "RGBA"
    grey = Image.new("L", (4, 4), 9)
    grey.info["transparency"] = 9
    out = to_working_mode(grey)
    assert out.mode == "LA" and np.asarray(out)[..., 1].max() == 0


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    path = write(tmp_path / "deep.png", Image.fromarray(values))
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    loaded = load_image(path)
    assert loaded.mode == "L"
    assert np.asarray(loaded).tolist() == [[0, 1, 4, 128, 255]]


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    path = write(tmp_path / "print.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)))
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert tuple(np.asarray(loaded)[0, 0]) == pytest.approx((255, 0, 0), abs=3)


def test_cmyk_with_a_profile_that_does_not_fit_falls_back_and_drops_it() -> None:
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    image.info["icc_profile"] = srgb_profile()  # an RGB profile on CMYK data: unusable
    out = to_working_mode(image)
    assert out.mode == "RGB" and "icc_profile" not in out.info
    assert tuple(np.asarray(out)[0, 0]) == (255, 0, 0)


def test_draft_decodes_jpeg_smaller_but_not_other_formats(tmp_path: Path) -> None:
    jpeg = write(tmp_path / "big.jpg", noise("RGB", (800, 600)), quality=90)
    png = write(tmp_path / "big.png", noise("RGB", (800, 600)))
    image, is_jpeg = decode_image(jpeg, draft_size=(200, 200))
    assert is_jpeg and image.size == (400, 300)  # 1/2 scale: 1/4 would be under 200 high
    image, is_jpeg = decode_image(png, draft_size=(200, 200))
    assert not is_jpeg and image.size == (800, 600)
    assert load_image(jpeg).size == (800, 600)


# --- saving ------------------------------------------------------------------------------------


def test_rgba_to_jpeg_is_flattened_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    image.paste((200, 10, 10, 255), (0, 0, 8, 16))
    target = tmp_path / "flat.jpg"
    save_image(image, target, quality=95)
    out = pixels(target).astype(int)
    assert mode_of(target) == "RGB"
    assert (out[:, 12:] >= 250).all()  # transparent -> white, not black
    assert abs(out[4, 2, 0] - 200) < 8 and out[4, 2, 1] < 25


@pytest.mark.parametrize(
    ("mode", "fmt", "expected"),
    [
        ("LA", "jpg", "L"),
        ("RGBA", "bmp", "RGB"),
        ("LA", "png", "LA"),
        ("RGBA", "png", "RGBA"),
        ("RGBA", "webp", "RGBA"),
        ("L", "webp", "RGB"),
        ("RGBA", "tiff", "RGBA"),
        ("RGB", "gif", "P"),
        ("P", "jpg", "RGB"),
        ("I;16", "jpg", "L"),
        ("CMYK", "png", "RGB"),
        ("1", "webp", "RGB"),
    ],
)
def test_modes_are_converted_for_the_format(
    tmp_path: Path, mode: str, fmt: str, expected: str
) -> None:
    target = tmp_path / f"out.{fmt}"
    save_image(noise("RGBA", (16, 12)).convert(mode), target)
    assert mode_of(target) == expected


def test_icc_profile_kept_where_it_fits(tmp_path: Path) -> None:
    profile = srgb_profile()
    image = noise("RGB", (16, 16))
    for fmt in ["jpg", "png", "webp", "tiff"]:
        target = tmp_path / f"tagged.{fmt}"
        save_image(image, target, icc_profile=profile)
        with Image.open(target) as saved:
            assert saved.info.get("icc_profile") == profile, fmt
    save_image(image.convert("L"), tmp_path / "grey.jpg", icc_profile=profile)  # RGB profile
    save_image(image, tmp_path / "plain.png")
    tagged = image.copy()
    tagged.info["icc_profile"] = profile  # never picked up from info: only what is passed
    save_image(tagged, tmp_path / "untagged.png")
    for name in ["grey.jpg", "plain.png", "untagged.png"]:
        with Image.open(tmp_path / name) as saved:
            assert "icc_profile" not in saved.info or not saved.info["icc_profile"], name


def test_icc_profile_survives_load_then_save(tmp_path: Path) -> None:
    profile = srgb_profile()
    source = write(tmp_path / "in.jpg", noise("RGB", (16, 16)), icc_profile=profile)
    loaded = load_image(source)
    assert loaded.info["icc_profile"] == profile
    save_image(loaded, tmp_path / "out.png", icc_profile=loaded.info["icc_profile"])
    with Image.open(tmp_path / "out.png") as saved:
        assert saved.info["icc_profile"] == profile


def test_quality_applies_to_jpeg_and_webp(tmp_path: Path) -> None:
    image = noise("RGB", (64, 64))
    for fmt in ["jpg", "webp"]:
        save_image(image, tmp_path / f"low.{fmt}", quality=10)
        save_image(image, tmp_path / f"high.{fmt}", quality=95)
        assert (tmp_path / f"low.{fmt}").stat().st_size < (tmp_path / f"high.{fmt}").stat().st_size


def test_format_can_differ_from_the_extension(tmp_path: Path) -> None:
    save_image(noise("RGB", (8, 8)), tmp_path / "odd.dat", fmt="PNG")
    with Image.open(tmp_path / "odd.dat") as saved:
        assert saved.format == "PNG"


def test_a_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder writes part of the file, then fails: no output and no temporary file."""
    target = tmp_path / "out" / "a_blur.jpg"
    original = Image.Image.save

    def half_then_fail(image: Image.Image, fp: BinaryIO, *args: object, **params: object) -> None:
        original(image, fp, *args, **params)  # type: ignore[arg-type]
        fp.truncate(fp.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(ImageWriteError) as caught:
        save_image(noise("RGB", (32, 32)), target)
    assert str(caught.value).startswith(f"{target}: cannot write: OSError: ")
    assert "No space left" in str(caught.value)
    assert files_under(tmp_path / "out") == []


def test_a_save_replaces_an_old_output_only_when_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.png"
    save_image(noise("RGB", (8, 8), seed=1), target)
    before = target.read_bytes()

    def fail(*args: object, **params: object) -> None:
        raise KeyboardInterrupt  # even Ctrl-C mid-save leaves the old file whole

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(KeyboardInterrupt):
        save_image(noise("RGB", (8, 8), seed=2), target)
    assert target.read_bytes() == before
    assert files_under(tmp_path) == ["a.png"]


def test_an_unwritable_target_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(ImageWriteError, match=r"blocker/x\.png: cannot write"):
        save_image(noise("RGB", (4, 4)), tmp_path / "blocker" / "x.png")


def test_temporary_names(tmp_path: Path) -> None:
    temp = temp_path(tmp_path / "a_blur.jpg")
    assert temp.parent == tmp_path
    assert temp.name.startswith(".a_blur.jpg.") and temp.name.endswith(".tmp")
    assert is_temp_name(temp.name)
    assert not is_temp_name("a_blur.jpg") and not is_temp_name(".a_blur.jpg")
    assert temp != temp_path(tmp_path / "a_blur.jpg")  # unique per call


def test_stale_temporary_files_are_removed_live_ones_kept(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(done.stdout)
    stale = tmp_path / f".a_blur.jpg.{dead}-0123abcd.tmp"
    live = tmp_path / f".b_blur.jpg.{os.getpid()}-0123abcd.tmp"
    other = tmp_path / ".notes.tmp"
    for path in [stale, live, other]:
        path.write_bytes(b"half an image")
    assert remove_stale_temps(tmp_path) == 1
    assert files_under(tmp_path) == sorted([live.name, other.name])
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_samples_are_as_documented() -> None:
    expected = {
        "alpha.png": ("PNG", "RGBA", (160, 120)),
        "gradient.jpg": ("JPEG", "RGB", (256, 192)),
        "gray.png": ("PNG", "L", (128, 96)),
        "nested/shapes.webp": ("WEBP", "RGB", (200, 150)),
        "rotated.jpg": ("JPEG", "RGB", (192, 128)),
    }
    for name, (fmt, mode, size) in expected.items():
        with Image.open(SAMPLES / name) as image:
            assert (image.format, image.mode, image.size) == (fmt, mode, size), name
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 200_000


def test_sample_generator_is_deterministic(tmp_path: Path) -> None:
    from image_helpers import MAKE_IMAGES

    subprocess.run(
        [sys.executable, str(MAKE_IMAGES), str(tmp_path / "a")], check=True, capture_output=True
    )
    for path in SAMPLES.rglob("*.*"):
        made = tmp_path / "a" / path.relative_to(SAMPLES)
        assert np.array_equal(pixels(made), pixels(path)), path.name
    subprocess.run(
        [sys.executable, str(MAKE_IMAGES), "--bench", "2", "--size", "64x48", str(tmp_path / "b")],
        check=True,
        capture_output=True,
    )
    assert files_under(tmp_path / "b") == ["photo_0000.jpg", "photo_0001.jpg"]
    with Image.open(tmp_path / "b" / "photo_0001.jpg") as photo:
        assert photo.size == (64, 48)


def test_encoded_helper_round_trips() -> None:
    assert encoded(Image.new("L", (2, 2)), "PNG").startswith(b"\x89PNG")
