"""The image job on every backend, in both shapes: identical pixels, bad inputs isolated, the
pixel limit in every worker, crashes, resumption, atomic outputs and safe output paths."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import pool_worker_pids
from image_helpers import (
    SAMPLE_NAMES,
    SAMPLES,
    DiesWhileSaving,
    copy_samples,
    files_under,
    mode_of,
    noise,
    pixels,
    write,
    write_bad_files,
)
from PIL import Image

import batchcore
from batchcore.processors.errors import FilterSpecError, ImagesUsageError
from batchcore.processors.files import is_temp_name
from batchcore.processors.images import jobs as images_jobs
from batchcore.processors.images.filters import parse_chain
from batchcore.processors.images.io import DEFAULT_MAX_PIXELS, load_image
from batchcore.processors.images.jobs import (
    ImageBatchFlow,
    ImageJobsNode,
    ImagesSummary,
    JobResult,
    plan_images,
    prepare_outputs,
    run_images,
)

CHAINS = [
    "grayscale",
    "sepia",
    "blur:radius=2",
    "thumbnail:size=64",
    "rotate:angle=30|edge",
    "autocontrast|posterize:bits=3",
]
SHAPES = {"grouped": True, "per-job": False}


def decoded_outputs(folder: Path) -> dict[str, np.ndarray[Any, Any]]:
    return {name: pixels(folder / name) for name in files_under(folder)}


def assert_same_outputs(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray[Any, Any]]:
    """The samples through CHAINS, sequentially, decoded: what every other run must equal."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_images(SAMPLES, out, CHAINS, backend="sequential")
    assert (summary.ok, summary.failed, summary.skipped) == (30, [], 0)
    return decoded_outputs(out)


# --- outputs -----------------------------------------------------------------------------------


def test_outputs_are_named_by_folder_stem_and_chain(reference: dict[str, Any]) -> None:
    labels = [
        "grayscale",
        "sepia",
        "blur-radius2",
        "thumbnail-size64",
        "rotate-angle30-edge",
        "autocontrast-posterize-bits3",
    ]
    expected = []
    for name in SAMPLE_NAMES:
        folder, _, file = name.rpartition("/")
        stem, ext = file.rsplit(".", 1)
        expected += [f"{folder + '/' if folder else ''}{stem}_{label}.{ext}" for label in labels]
    assert sorted(reference) == sorted(expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_pixel_identical_on_every_backend_in_both_shapes(
    tmp_path: Path, backend: str, shape: str, reference: dict[str, Any]
) -> None:
    summary = run_images(
        SAMPLES, tmp_path, CHAINS, backend=backend, workers=2, grouped=SHAPES[shape]
    )
    assert (summary.ok, summary.failed) == (30, [])
    assert summary.backend == backend
    assert_same_outputs(decoded_outputs(tmp_path), reference)


def test_results_come_back_in_job_order(tmp_path: Path) -> None:
    summary = run_images(SAMPLES, tmp_path, ["grayscale", "sepia"], backend="thread", workers=2)
    assert [(Path(r.source).name, r.filter) for r in summary.results] == [
        (Path(name).name, spec) for name in SAMPLE_NAMES for spec in ["grayscale", "sepia"]
    ]
    assert all(r.ok and r.reason == "" and Path(r.output).is_file() for r in summary.results)


def test_each_image_is_decoded_once_for_all_its_chains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes: list[tuple[str, Any]] = []
    original = images_jobs.decode_frames

    def counting(path: Any, **options: Any) -> Any:
        decodes.append((Path(path).name, options["draft_size"]))
        return original(path, **options)

    monkeypatch.setattr(images_jobs, "decode_frames", counting)
    run_images(SAMPLES, tmp_path, ["grayscale", "sepia", "thumbnail:size=64", "blur"])
    # JPEGs: one full decode, plus one reduced-size decode for the thumbnail; others: one
    assert sorted(decodes, key=str) == sorted(
        [
            ("alpha.png", None),
            ("gray.png", None),
            ("shapes.webp", None),
            ("gradient.jpg", None),
            ("gradient.jpg", (128, 128)),
            ("rotated.jpg", None),
            ("rotated.jpg", (128, 128)),
        ],
        key=str,
    )


def test_thumbnails_of_big_jpegs_use_reduced_decoding_in_both_shapes(tmp_path: Path) -> None:
    write(tmp_path / "src" / "big.jpg", noise("RGB", (1200, 800), seed=8), quality=90)
    chains = ["thumbnail:size=100", "grayscale|thumbnail:size=100"]
    grouped = run_images(tmp_path / "src", tmp_path / "a", chains)
    per_job = run_images(tmp_path / "src", tmp_path / "b", chains, grouped=False)
    assert grouped.ok == per_job.ok == 2
    assert_same_outputs(decoded_outputs(tmp_path / "a"), decoded_outputs(tmp_path / "b"))
    fast = pixels(tmp_path / "a" / "big_thumbnail-size100.jpg")
    assert fast.shape == (67, 100, 3)
    chain = parse_chain("thumbnail:size=100")
    assert chain.draft_size == (200, 200)
    reduced = load_image(tmp_path / "src" / "big.jpg", draft_size=chain.draft_size)
    assert reduced.size == (300, 200)  # decoded at 1/4 scale: a sixteenth of the work


def test_output_format_and_quality(tmp_path: Path) -> None:
    run_images(SAMPLES, tmp_path / "png", ["grayscale"], fmt="PNG")
    names = files_under(tmp_path / "png")
    assert all(name.endswith(".png") for name in names) and len(names) == 5
    assert mode_of(tmp_path / "png" / "alpha_grayscale.png") == "LA"
    run_images(SAMPLES, tmp_path / "jpg", ["sepia"], fmt=".jpg", quality=20)
    assert mode_of(tmp_path / "jpg" / "alpha_sepia.jpg") == "RGB"  # alpha flattened on white
    run_images(SAMPLES, tmp_path / "jpg95", ["sepia"], fmt="jpg", quality=95)
    size = {q: (tmp_path / q / "gradient_sepia.jpg").stat().st_size for q in ("jpg", "jpg95")}
    assert size["jpg"] < size["jpg95"]


def test_orientation_is_applied_before_filtering(tmp_path: Path) -> None:
    run_images(SAMPLES / "rotated.jpg", tmp_path, ["mirror", "grayscale"])
    upright = np.asarray(load_image(SAMPLES / "rotated.jpg"))
    assert pixels(tmp_path / "rotated_grayscale.jpg").shape == (192, 128)
    mirrored = pixels(tmp_path / "rotated_mirror.jpg").astype(int)
    assert mirrored.shape == upright.shape
    assert mirrored[5:15, 5:15, 0].min() > 200  # the top-right marker, mirrored to the top-left


def test_user_filters_returning_other_modes_are_saved(tmp_path: Path, backend: str) -> None:
    summary = run_images(
        SAMPLES,
        tmp_path,
        ["test_quantize", "test_to_i16|blur"],
        backend=backend,
        workers=2,
        fmt="jpg",
    )
    assert (summary.ok, summary.failed) == (10, [])
    assert mode_of(tmp_path / "gradient_test_quantize.jpg") == "RGB"
    assert mode_of(tmp_path / "gradient_test_to_i16-blur.jpg") == "L"


def test_seed_flow_accepts_plain_spec_strings(tmp_path: Path) -> None:
    """The seed's own params: {"input", "filter"} with the filter as text (plus an output)."""
    flow = ImageBatchFlow()
    flow.prep = lambda shared: [  # type: ignore[method-assign]
        {"input": str(SAMPLES / "gray.png"), "filter": spec, "output": str(tmp_path / f"{n}.png")}
        for n, spec in enumerate(["invert", "blur:radius=1|sepia"])
    ]
    flow.post = lambda shared, prep_res, exec_res: "done"  # type: ignore[method-assign]
    shared: dict[str, Any] = {}
    assert flow.run(shared) == "done"
    assert files_under(tmp_path) == ["0.png", "1.png"]
    assert mode_of(tmp_path / "1.png") == "RGB"
    assert set(shared) == {"image", "filtered_image"}  # the seed's scratch keys (sequential)


def test_seed_flow_keeps_decoded_images_in_the_workers(tmp_path: Path) -> None:
    plan = plan_images(SAMPLES, tmp_path, ["grayscale"])
    flow = ImageBatchFlow(jobs=plan.jobs, backend="process", workers=2)
    shared: dict[str, Any] = {"note": "kept"}
    flow.run(shared)
    assert set(shared) == {"note", "image_results"}
    assert [r.ok for r in shared["image_results"]] == [True] * 5


# --- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_bad_files_fail_only_their_own_jobs(tmp_path: Path, backend: str, shape: str) -> None:
    src = tmp_path / "src"
    bad = write_bad_files(src / "bad")
    write(src / "good.png", noise("RGB", (40, 30)))
    write(src / "good.jpg", noise("RGB", (40, 30)), quality=90)
    summary = run_images(
        src,
        tmp_path / "out",
        ["grayscale", "blur"],
        backend=backend,
        workers=2,
        grouped=SHAPES[shape],
    )
    assert summary.ok == 4
    failed = {(Path(r.source).name, r.filter): r.reason for r in summary.failed}
    assert len(failed) == 2 * len(bad)
    for path in bad.values():
        for spec in ["grayscale", "blur"]:
            assert failed[(path.name, spec)].startswith(f"{path}: "), failed[(path.name, spec)]
    assert "image file is truncated" in failed[("truncated.jpg", "blur")]
    assert "empty file (0 bytes)" in failed[("empty.jpg", "grayscale")]
    assert "broken data stream" in failed[("flipped.jpg", "grayscale")]
    assert "not an image" in failed[("notes.jpg", "blur")]
    assert files_under(tmp_path / "out") == [
        "good_blur.jpg",
        "good_blur.png",
        "good_grayscale.jpg",
        "good_grayscale.png",
    ]  # nothing for the bad files, no temporary files (bad/ is an empty folder)


def test_a_failing_filter_fails_only_its_job(tmp_path: Path, backend: str) -> None:
    summary = run_images(
        SAMPLES, tmp_path, ["grayscale", "test_fails_on_wide:limit=170"], backend=backend, workers=2
    )
    wide = {"gradient.jpg", "shapes.webp"}  # 256 and 200 wide
    assert {(Path(r.source).name, r.filter) for r in summary.failed} == {
        (name, "test_fails_on_wide:limit=170") for name in wide
    }
    assert summary.ok == 8
    reason = next(r.reason for r in summary.failed if r.source.endswith("gradient.jpg"))
    assert reason == (
        f"{SAMPLES / 'gradient.jpg'}: filter 'test_fails_on_wide:limit=170' failed: "
        "ValueError: width 256 > 170"
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_a_worker_crash_fails_only_that_image(tmp_path: Path, shape: str) -> None:
    """A decoder or filter that kills its process: grouped, the image's jobs fail together;
    per job, only the job that crashed."""
    src = tmp_path / "src"
    write(src / "narrow.png", noise("RGB", (50, 40)))
    write(src / "wide.png", noise("RGB", (300, 40)))
    summary = run_images(
        src,
        tmp_path / "out",
        ["grayscale", "test_exits_on_wide:limit=100"],
        backend="process",
        workers=2,
        grouped=SHAPES[shape],
    )
    failed = {(Path(r.source).name, r.filter) for r in summary.failed}
    crashed = {("wide.png", "test_exits_on_wide:limit=100")}
    if shape == "grouped":
        crashed.add(("wide.png", "grayscale"))
    assert failed == crashed
    assert all("the worker process crashed" in r.reason for r in summary.failed)
    assert all(r.reason.startswith(str(src / "wide.png")) for r in summary.failed)
    assert summary.ok == 4 - len(crashed)


@pytest.mark.parametrize("max_pixels", [20_000, 50_000])
@pytest.mark.parametrize("shape", SHAPES)
def test_pixel_limit_applies_in_every_worker(
    tmp_path: Path, backend: str, shape: str, max_pixels: int
) -> None:
    """300x300 = 90,000 pixels: over 2x 20,000 (Pillow's error band) and between 1x and 2x
    50,000 (Pillow only warns there); both fail the image, on every backend."""
    src = tmp_path / "src"
    write(src / "big.png", Image.new("RGB", (300, 300), (10, 20, 30)))
    write(src / "small.png", Image.new("RGB", (100, 100), (10, 20, 30)))
    summary = run_images(
        src,
        tmp_path / "out",
        ["grayscale", "thumbnail:size=32"],
        backend=backend,
        workers=2,
        max_pixels=max_pixels,
        grouped=SHAPES[shape],
    )
    assert summary.ok == 2
    assert {(Path(r.source).name, r.filter) for r in summary.failed} == {
        ("big.png", "grayscale"),
        ("big.png", "thumbnail:size=32"),
    }
    for result in summary.failed:
        assert result.reason == (
            f"{src / 'big.png'}: image has 90,000 pixels, over the limit of {max_pixels:,} "
            "(decompression bomb protection; raise max_pixels / --max-pixels if it is genuine)"
        )
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_a_raised_pixel_limit_reaches_the_workers(tmp_path: Path) -> None:
    """Pillow's default refuses this image in the workers unless our limit travels with the job;
    nothing set in the parent is relied on."""
    write(tmp_path / "src" / "big.png", Image.new("L", (300, 300)))
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS
    summary = run_images(
        tmp_path / "src",
        tmp_path / "a",
        ["invert"],
        backend="process",
        workers=2,
        max_pixels=90_000,
    )
    assert summary.ok == 1
    summary = run_images(
        tmp_path / "src",
        tmp_path / "b",
        ["invert"],
        backend="process",
        workers=2,
        max_pixels=89_999,
    )
    assert summary.ok == 0 and "over the limit of 89,999" in summary.failed[0].reason


# --- resumption and atomic outputs -------------------------------------------------------------


def test_skip_existing_resumes_without_redoing_finished_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_images(SAMPLES, out, ["grayscale", "sepia"])
    assert (first.ok, first.skipped) == (10, 0)
    for name in ["gradient_sepia.jpg", "nested/shapes_grayscale.webp"]:
        (out / name).unlink()
    before = {name: (out / name).stat().st_mtime_ns for name in files_under(out)}
    second = run_images(
        SAMPLES, out, ["grayscale", "sepia"], skip_existing=True, backend="process", workers=2
    )
    assert (second.ok, second.skipped, second.failed) == (2, 8, [])
    assert sorted(Path(r.output).name for r in second.results) == [
        "gradient_sepia.jpg",
        "shapes_grayscale.webp",
    ]
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    third = run_images(SAMPLES, out, ["grayscale", "sepia"], skip_existing=True)
    assert (third.ok, third.skipped, third.results) == (0, 10, [])
    again = run_images(SAMPLES, out, ["grayscale"])  # without the flag: written again
    assert again.ok == 5


def test_a_worker_killed_mid_write_leaves_no_partial_output_and_a_rerun_completes(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    plan = plan_images(SAMPLES, out, ["grayscale", "sepia"])
    prepare_outputs(plan)
    node = DiesWhileSaving(plan.jobs, victim="gradient.jpg", backend="process", workers=2)
    shared: dict[str, Any] = {}
    node.run(shared)
    results: list[JobResult] = shared["image_results"]
    failed = sorted((Path(r.source).name, r.filter) for r in results if not r.ok)
    assert failed == [("gradient.jpg", "grayscale"), ("gradient.jpg", "sepia")]
    names = files_under(out)
    leftovers = [name for name in names if is_temp_name(Path(name).name)]
    assert len(leftovers) == 1  # the dead worker's half-written temporary file, hidden
    assert leftovers[0].startswith(".gradient_grayscale.jpg.")
    assert not any(name.startswith("gradient_") for name in names)  # no visible partial image
    resumed = run_images(SAMPLES, out, ["grayscale", "sepia"], skip_existing=True)
    assert (resumed.ok, resumed.skipped, resumed.failed) == (2, 8, [])
    assert not any(is_temp_name(Path(name).name) for name in files_under(out))
    assert pixels(out / "gradient_grayscale.jpg").shape == (192, 256)


def test_a_failed_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Image.Image.save

    saves: list[int] = []

    def fail_for_sepia(image: Image.Image, fp: Any, *args: Any, **params: Any) -> None:
        saves.append(1)
        if len(saves) == 1:  # sepia's: the chains run in order on the sequential backend
            fp.write(b"half")
            raise OSError(28, "No space left on device")
        original(image, fp, *args, **params)

    monkeypatch.setattr(Image.Image, "save", fail_for_sepia)
    summary = run_images(SAMPLES / "gray.png", tmp_path, ["sepia", "invert"])
    assert files_under(tmp_path) == ["gray_invert.png"]
    (failure,) = summary.failed
    assert failure.reason.startswith(f"{tmp_path / 'gray_sepia.png'}: cannot write: OSError")


# --- checks before any work --------------------------------------------------------------------


def test_usage_errors_come_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(FilterSpecError, match="unknown filter 'blurr'"):
        run_images(SAMPLES, out, ["grayscale", "blurr"])
    with pytest.raises(FileNotFoundError) as missing:
        run_images(tmp_path / "nope", out, ["grayscale"])
    assert missing.value.filename == str(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ImagesUsageError, match="no images found"):
        run_images(tmp_path / "empty", out, ["grayscale"])
    with pytest.raises(ImagesUsageError, match="no filter given"):
        run_images(SAMPLES, out, [])
    with pytest.raises(ValueError, match="unknown image format 'raw'"):
        run_images(SAMPLES, out, ["grayscale"], fmt="raw")
    with pytest.raises(ValueError, match="quality must be"):
        run_images(SAMPLES, out, ["grayscale"], quality=0)
    with pytest.raises(ValueError, match="max_pixels must be"):
        run_images(SAMPLES, out, ["grayscale"], max_pixels=0)
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        run_images(SAMPLES, tmp_path / "file", ["grayscale"])


def test_a_path_leaving_the_output_folder_is_refused(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "nested").symlink_to(elsewhere)  # SAMPLES has nested/shapes.webp
    with pytest.raises(ImagesUsageError, match="outside the output folder"):
        run_images(SAMPLES, out, ["grayscale"])
    (out / "nested").unlink()
    (out / "nested").mkdir()
    (out / "nested" / "shapes_grayscale.webp").symlink_to(elsewhere / "x.webp")
    with pytest.raises(ImagesUsageError, match=r"is a symlink to .*outside the output folder"):
        run_images(SAMPLES, out, ["grayscale"])
    assert list(elsewhere.iterdir()) == []
    assert files_under(out) == ["nested/shapes_grayscale.webp"]  # only the planted symlink


def test_an_output_folder_that_is_a_symlink_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert run_images(SAMPLES / "gray.png", tmp_path / "link", ["invert"]).ok == 1
    assert files_under(tmp_path / "real") == ["gray_invert.png"]


def test_two_jobs_writing_one_file_are_detected(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a.jpg", noise("RGB", (8, 8)))
    write(tmp_path / "src" / "a.png", noise("RGB", (8, 8)))
    assert run_images(tmp_path / "src", tmp_path / "out", ["grayscale"]).ok == 2
    with pytest.raises(ImagesUsageError) as caught:
        run_images(tmp_path / "src", tmp_path / "out2", ["grayscale"], fmt="webp")
    message = str(caught.value)
    assert str(tmp_path / "src" / "a.jpg") in message and str(tmp_path / "src" / "a.png") in message
    assert "a_grayscale.webp" in message
    assert not (tmp_path / "out2").exists()


def test_names_differing_only_in_case_collide(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a.png", noise("RGB", (8, 8)))
    write(tmp_path / "src" / "A.png", noise("RGB", (8, 8)))
    with pytest.raises(ImagesUsageError, match="would both be written to"):
        plan_images(tmp_path / "src", tmp_path / "out", ["grayscale"])


def test_the_output_folder_cannot_be_the_source_folder(tmp_path: Path) -> None:
    copy_samples(tmp_path / "src")
    with pytest.raises(ImagesUsageError, match="is the source folder"):
        run_images(tmp_path / "src", tmp_path / "src" / ".", ["grayscale"])


def test_an_output_folder_inside_the_source_is_not_read_back(tmp_path: Path) -> None:
    src = copy_samples(tmp_path / "src")
    first = run_images(src, src / "out", ["grayscale"])
    second = run_images(src, src / "out", ["grayscale"])
    assert first.ok == second.ok == 5  # the outputs of the first run are not inputs


def test_an_output_overwriting_an_input_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(out / "p" / "p" / "x.png", noise("RGB", (8, 8)))
    write(out / "p" / "x_blur.png", noise("RGB", (8, 8)))  # an input named like an output
    with pytest.raises(ImagesUsageError, match="would overwrite the input image"):
        run_images(out / "p", out, ["blur"])


def test_stale_temporary_files_are_cleaned_before_a_run(tmp_path: Path) -> None:
    stale = tmp_path / "nested" / ".shapes_sepia.webp.999999999-0123abcd.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    run_images(SAMPLES, tmp_path, ["sepia"])
    assert not stale.exists()


def test_an_empty_run(tmp_path: Path) -> None:
    run_images(SAMPLES, tmp_path, ["grayscale"])
    summary = run_images(SAMPLES, tmp_path, ["grayscale"], skip_existing=True, backend="process")
    assert (summary.ok, summary.failed, summary.skipped, summary.results) == (0, [], 5, [])


def test_summary_json() -> None:
    results = [
        JobResult("a.jpg", "blur", "out/a_blur.jpg", True),
        JobResult("b.jpg", "blur", "out/b_blur.jpg", False, "b.jpg: truncated"),
        JobResult("c.gif", "blur", "out/c_blur.jpg", True, dropped="frames 2-3 (2 of 3; ...)"),
    ]
    summary = ImagesSummary(results, skipped=3, seconds=0.5, backend="thread", workers=2)
    assert summary.ok == 2 and summary.jobs_per_second == 6.0
    assert summary.as_json() == {
        "ok": 2,
        "failed": [
            {
                "source": "b.jpg",
                "filter": "blur",
                "output": "out/b_blur.jpg",
                "reason": "b.jpg: truncated",
            }
        ],
        "dropped": [
            {
                "source": "c.gif",
                "filter": "blur",
                "output": "out/c_blur.jpg",
                "dropped": "frames 2-3 (2 of 3; ...)",
            }
        ],
        "skipped": 3,
        "jobs": 6,
        "seconds": 0.5,
        "jobs_per_second": 6.0,
        "backend": "thread",
        "workers": 2,
        "backend_reason": "",
    }


def test_the_node_alone_with_progress_counts_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_images(SAMPLES, tmp_path, ["grayscale", "sepia", "invert"])
    node = ImageJobsNode(plan.jobs, progress=True, backend="thread", workers=2)
    shared: dict[str, Any] = {}
    node.run(shared)
    assert len(shared["image_results"]) == 15
    assert node.batch_stats.items == 5  # images
    assert "15/15" in capsys.readouterr().err  # the bar counts jobs


def test_chains_in_jobs_are_parsed_objects(tmp_path: Path) -> None:
    plan = plan_images(SAMPLES / "gray.png", tmp_path, ["blur:radius=3|grayscale"])
    (job,) = plan.jobs
    assert job.chain == parse_chain("blur:radius=3|grayscale")
    assert job.output == str(tmp_path / "gray_blur-radius3-grayscale.png")
    assert job.format == "PNG"
    assert os.path.basename(job.source) == "gray.png"


def test_no_pool_is_left_running_after_shutdown(tmp_path: Path) -> None:
    """``batchcore.shutdown()`` ends the warm pools image jobs leave: their workers and zygote
    exit, and the leak check no longer has anything to allow."""
    plan = plan_images(SAMPLES / "gray.png", tmp_path, ["grayscale"])
    ImageJobsNode(plan.jobs, backend="process", workers=2).run({})
    warm = pool_worker_pids()
    assert warm, "the image job left no warm pool: nothing to check"
    batchcore.shutdown()
    assert pool_worker_pids() == set()
    procs = []
    for pid in warm:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == [], f"pool processes still running after shutdown: {alive}"


FILE_HANDLES = textwrap.dedent(
    """
    import json, resource, sys, warnings
    warnings.simplefilter("error")  # an unclosed file (ResourceWarning) fails the run
    from PIL import Image
    from batchcore.processors.images.jobs import ImageJobsNode, plan_images

    src, out = sys.argv[1], sys.argv[2]
    for n in range({count}):
        Image.new("RGB", (8, 8), (n % 256, 0, 0)).save(f"{{src}}/{{n:04d}}.png")
    resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))  # workers inherit it
    plan = plan_images(src, out, ["grayscale|blur:radius=1"])
    shared = {{}}
    ImageJobsNode(plan.jobs, backend={backend!r}, workers=1).run(shared)
    results = shared["image_results"]
    failed = [r.reason for r in results if not r.ok][:3]
    print(json.dumps({{"ok": sum(r.ok for r in results), "failed": failed}}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sequential", "process"])
def test_many_images_through_one_worker_under_a_low_file_limit(
    backend: str, tmp_path: Path
) -> None:
    """Every image's file is closed after use: 600 images through one worker whose limit is
    128 open files all succeed, with no ResourceWarning (fault G5, file-handle exhaustion)."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    code = FILE_HANDLES.format(count=600, limit=128, backend=backend)
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ResourceWarning" not in result.stderr  # raised in __del__, only printed
    assert json.loads(result.stdout) == {"ok": 600, "failed": []}
    assert len(files_under(out)) == 600


def test_globs_and_several_sources_are_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchcore.processors.cli import main

    src = copy_samples(tmp_path / "src")
    (src / "nested" / ".hidden").mkdir()
    Image.new("RGB", (4, 4)).save(src / "nested" / ".hidden" / "skip.png")
    summary = images_jobs.run_images(
        [str(src / "gray.png"), str(src / "**" / "*.webp")], tmp_path / "out", "grayscale"
    )
    assert summary.failed == [] and summary.ok == 2
    # a glob's matches keep their folders below its fixed part; hidden folders are skipped
    assert files_under(tmp_path / "out") == ["gray_grayscale.png", "nested/shapes_grayscale.webp"]
    argv = ["images", str(src / "*.jpg"), str(src / "nested"), "-o", str(tmp_path / "o2")]
    assert main([*argv, "-f", "grayscale"]) == 0
    assert files_under(tmp_path / "o2") == [
        "gradient_grayscale.jpg",
        "rotated_grayscale.jpg",
        "shapes_grayscale.webp",
    ]
    assert main(["images", str(src / "*.tiff"), "-o", str(tmp_path / "o3"), "-f", "grayscale"]) == 2
    assert "no image matches this pattern" in capsys.readouterr().err
