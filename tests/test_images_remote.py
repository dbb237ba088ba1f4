"""The image job with URLs, against a real S3-compatible server (moto's, on loopback): images read
from a prefix equal those read from a folder (pixels, names, relative folders) on every backend,
outputs written to a prefix equal local ones, ``--skip-existing`` checks objects, a missing or
corrupt object fails its own jobs naming its URL, and keys that would leave OUT are refused."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from image_helpers import SAMPLES, files_under, pixels
from PIL import Image

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from s3server import FAKE_SECRET

from batchcore.processors.cli import main
from batchcore.processors.errors import ImagesUsageError
from batchcore.processors.images.jobs import plan_images, run_images
from batchcore.processors.storage import Source, filesystem

SECRET = FAKE_SECRET  # what s3_storage_options hold
FILTERS = ["grayscale", "thumbnail:size=16"]


@pytest.fixture
def s3(s3_bucket: str, s3_storage_options: dict[str, Any]) -> dict[str, Any]:
    """The session's server (``tests/s3server.py``): its storage options and a fresh bucket."""
    return {"options": s3_storage_options, "bucket": s3_bucket}


def fs_of(s3: dict[str, Any]) -> Any:
    fs = filesystem("s3://", s3["options"])
    fs.invalidate_cache()
    return fs


def upload_samples(s3: dict[str, Any], prefix: str) -> str:
    """The sample folder's images under ``s3://BUCKET/prefix/``; returns that URL."""
    fs = fs_of(s3)
    for path in sorted(SAMPLES.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{s3['bucket']}/{prefix}/{path.relative_to(SAMPLES).as_posix()}",
                         path.read_bytes())  # fmt: skip
    return f"s3://{s3['bucket']}/{prefix}/"


def objects_under(s3: dict[str, Any], url: str) -> dict[str, bytes]:
    """Every object under ``url``: its key relative to ``url``, and its bytes."""
    fs = fs_of(s3)
    root = url.split("://", 1)[1].rstrip("/")
    return {path[len(root) + 1 :]: fs.cat_file(path) for path in fs.find(root)}


def decoded(data: bytes) -> np.ndarray[Any, Any]:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local run: samples folder -> local folder, sequentially."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_images(SAMPLES, out, FILTERS, backend="sequential")
    assert not summary.failed
    return out


# --- in and out ---------------------------------------------------------------------------------


def test_images_from_a_prefix_equal_images_from_a_folder(
    backend: str, s3: dict[str, Any], reference: Path, tmp_path: Path
) -> None:
    src = upload_samples(s3, "photos")
    out = tmp_path / "out"
    summary = run_images(src, out, FILTERS, backend=backend, storage_options=s3["options"])
    assert not summary.failed and summary.ok == len(files_under(reference))
    assert files_under(out) == files_under(reference)  # nested/ kept as locally
    for name in files_under(reference):
        assert np.array_equal(pixels(out / name), pixels(reference / name)), name
    assert all(result.source.startswith(src) for result in summary.results)


def test_images_to_a_prefix_equal_local_outputs(
    backend: str, s3: dict[str, Any], reference: Path
) -> None:
    out = f"s3://{s3['bucket']}/out"
    summary = run_images(SAMPLES, out, FILTERS, backend=backend, storage_options=s3["options"])
    assert not summary.failed
    written = objects_under(s3, out)
    assert sorted(written) == files_under(reference)
    for name, data in written.items():
        assert np.array_equal(decoded(data), pixels(reference / name)), name


@pytest.mark.parametrize("backend_name", ["thread", "process"])
def test_prefix_to_prefix_and_a_folder_inside_the_source_is_left_out(
    backend_name: str, s3: dict[str, Any], reference: Path
) -> None:
    src = upload_samples(s3, "photos")
    out = f"{src}derived"  # inside the source prefix: its outputs are not inputs of a rerun
    for _ in range(2):
        summary = run_images(src, out, FILTERS, backend=backend_name, storage_options=s3["options"])
        assert not summary.failed and summary.ok == len(files_under(reference))
    assert sorted(objects_under(s3, out)) == files_under(reference)
    with pytest.raises(ImagesUsageError, match="is the source prefix"):
        plan_images(src, src, FILTERS, storage_options=s3["options"])


def test_the_parent_lists_and_never_reads_an_image(
    s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = upload_samples(s3, "photos")

    def no_reads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("planning read an image")

    monkeypatch.setattr(Source, "open", no_reads)
    monkeypatch.setattr(Source, "read", no_reads)
    plan = plan_images(src, f"s3://{s3['bucket']}/out", FILTERS, storage_options=s3["options"])
    assert len(plan.jobs) == 5 * len(FILTERS)
    assert all(job.size > 0 for job in plan.jobs)


def test_skip_existing_checks_the_objects(s3: dict[str, Any], reference: Path) -> None:
    out = f"s3://{s3['bucket']}/out"
    options = s3["options"]
    assert not run_images(SAMPLES, out, FILTERS, storage_options=options).failed
    fs = fs_of(s3)
    gone = f"{s3['bucket']}/out/nested/shapes_grayscale.webp"
    fs.rm_file(gone)
    summary = run_images(SAMPLES, out, FILTERS, skip_existing=True, storage_options=options)
    assert [result.output for result in summary.results] == [f"s3://{gone}"]
    assert summary.skipped == len(files_under(reference)) - 1
    assert sorted(objects_under(s3, out)) == files_under(reference)


def test_resume_to_and_from_urls_reruns_a_deleted_output_and_a_rewritten_source(
    s3: dict[str, Any], reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHCORE_CACHE_DIR", str(tmp_path / "cache"))
    src = upload_samples(s3, "photos")
    out = f"s3://{s3['bucket']}/out"
    options = s3["options"]
    fs = fs_of(s3)
    gradient = f"{s3['bucket']}/photos/gradient.jpg"

    def rewrite(comment: bytes) -> None:  # the same size each time: only the ETag tells
        with Image.open(SAMPLES / "gradient.jpg") as image:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", comment=comment)
        fs.pipe_file(gradient, buffer.getvalue())

    rewrite(b"first")
    first = run_images(src, out, FILTERS, resume=True, storage_options=options)
    images = len({result.source for result in first.results})
    assert not first.failed and first.resumed == 0
    assert Path(first.checkpoint).parent == tmp_path / "cache" / "checkpoints"
    fs.rm_file(f"{s3['bucket']}/out/nested/shapes_grayscale.webp")  # an output deleted
    rewrite(b"again")
    again = run_images(src, out, FILTERS, resume=True, storage_options=options)
    assert again.resumed == images - 2
    assert sorted(objects_under(s3, out)) == files_under(reference)
    assert run_images(src, out, FILTERS, resume=True, storage_options=options).resumed == images


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend_name", ["sequential", "process"])
def test_a_missing_or_corrupt_object_fails_its_jobs_naming_its_url(
    backend_name: str, s3: dict[str, Any], tmp_path: Path
) -> None:
    src = upload_samples(s3, "photos")
    fs = fs_of(s3)
    fs.pipe_file(f"{s3['bucket']}/photos/broken.png", b"\x89PNG\r\n\x1a\n not really")
    plan = plan_images(src, tmp_path / "out", ["grayscale"], storage_options=s3["options"])
    fs.rm_file(f"{s3['bucket']}/photos/gray.png")  # gone between listing and reading
    summary = run_images(
        src, tmp_path / "out", ["grayscale"], backend=backend_name, storage_options=s3["options"]
    )
    # the rerun lists again: gray.png is no longer there; run the plan's jobs as listed instead
    from batchcore.processors.images.jobs import ImageJobsNode

    shared: dict[str, Any] = {}
    ImageJobsNode(plan.jobs, backend=backend_name).run(shared)
    failed = {r.source: r.reason for r in shared["image_results"] if not r.ok}
    assert set(failed) == {f"{src}broken.png", f"{src}gray.png"}
    for url, reason in failed.items():
        assert reason.startswith(url) and SECRET not in reason
    assert [r.source for r in summary.failed] == [f"{src}broken.png"]


def test_a_key_with_dot_dot_segments_is_skipped_or_refused(
    s3: dict[str, Any], tmp_path: Path
) -> None:
    src = upload_samples(s3, "photos")
    escape = f"{s3['bucket']}/photos/a/../../escape.png"
    fs_of(s3).pipe_file(escape, (SAMPLES / "gray.png").read_bytes())
    if not any(".." in key for key in objects_under(s3, src)):
        pytest.skip("this store normalizes '..' in keys")
    # a prefix listing skips hidden segments (".." starts with "."), as local discovery does
    plan = plan_images(src, tmp_path / "out", FILTERS, storage_options=s3["options"])
    assert f"s3://{escape}" not in {job.source for job in plan.jobs}
    # a glob lists every key it matches: one that would leave OUT is refused, for either OUT
    for out in (tmp_path / "out", f"s3://{s3['bucket']}/out"):
        with pytest.raises(ImagesUsageError, match=r"'\.\.'.*would leave"):
            plan_images(f"{src}**", out, FILTERS, storage_options=s3["options"])


def test_cli_reads_and_writes_urls_with_storage_options(
    s3: dict[str, Any], reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = upload_samples(s3, "photos")
    out = f"s3://{s3['bucket']}/cli-out/"
    options = [f"--storage-option={k}={v}" for k, v in s3["options"].items()]
    args = ["images", src, "-o", out, *[f"-f{f}" for f in FILTERS], *options, "--no-progress"]
    assert main([*args, "--backend", "thread"]) == 0
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    assert sorted(objects_under(s3, out)) == files_under(reference)
    assert main([*args, "--skip-existing", "--json"]) == 0
    assert f'"skipped": {len(files_under(reference))}' in capsys.readouterr().out
    assert main(["images", f"{src}nothing/", "-o", out, "-fgrayscale", *options]) == 2
    assert "nothing" in capsys.readouterr().err


def test_any_fsspec_store_takes_images(reference: Path) -> None:
    fs = filesystem("memory://")
    src = f"memory://photos-{uuid.uuid4().hex[:8]}"
    out = f"{src}-out"
    try:
        for path in sorted(SAMPLES.rglob("*")):
            if path.is_file():
                fs.pipe_file(f"{src}/{path.relative_to(SAMPLES).as_posix()}", path.read_bytes())
        summary = run_images(src, out, FILTERS, backend="thread")
        assert not summary.failed
        root = fs._strip_protocol(out)
        written = {path[len(root) + 1 :]: fs.cat_file(path) for path in fs.find(out)}
        assert sorted(written) == files_under(reference)
        for name, data in written.items():
            assert np.array_equal(decoded(data), pixels(reference / name)), name
    finally:
        for url in (src, out):
            if fs.exists(url):
                fs.rm(url, recursive=True)


def test_a_write_that_fails_names_the_output_and_no_secret(s3: dict[str, Any]) -> None:
    out = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out"
    summary = run_images(SAMPLES, out, ["grayscale"], storage_options=s3["options"])
    assert len(summary.failed) == len(summary.results) == 5
    for result in summary.failed:
        assert result.reason.startswith(f"{result.output}: cannot write"), result.reason
        assert SECRET not in result.reason


def test_jobs_carry_no_secret_in_clear(s3: dict[str, Any]) -> None:
    import pickle

    import cloudpickle

    src = upload_samples(s3, "photos")
    plan = plan_images(src, f"s3://{s3['bucket']}/out", FILTERS, storage_options=s3["options"])
    for blob in (pickle.dumps(plan.jobs), cloudpickle.dumps(plan.jobs)):
        assert SECRET.encode() not in blob
    assert SECRET not in repr(plan.jobs) and SECRET not in str(plan)


@pytest.mark.parametrize("arrow", ["1", "0"])
def test_a_remote_image_is_read_in_one_ranged_get(
    s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch, arrow: str
) -> None:
    """By Arrow's S3 client (the default for these options) or by s3fs."""
    import s3fs

    from batchcore.processors.arrow_s3 import SWITCH, ArrowFile
    from batchcore.processors.images.io import load_frames
    from batchcore.processors.storage import expand

    monkeypatch.setenv(SWITCH, arrow)
    src = upload_samples(s3, "photos")
    gets: list[tuple[int, int]] = []
    fetch, arrow_fetch = s3fs.core.S3File._fetch_range, ArrowFile._fetch

    def counting_fetch(self: Any, start: int, end: int) -> bytes:
        gets.append((start, end))
        return bytes(fetch(self, start, end))

    def counting_arrow_fetch(self: ArrowFile, start: int, end: int) -> bytes:
        gets.append((start, end))
        return arrow_fetch(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting_fetch)
    monkeypatch.setattr(ArrowFile, "_fetch", counting_arrow_fetch)
    for source in expand(src, s3["options"]):
        gets.clear()
        load_frames(source)
        assert len(gets) == 1, (source.url, gets)


def test_two_objects_writing_one_output_key_are_refused(s3: dict[str, Any]) -> None:
    fs = fs_of(s3)
    for name in ("a.png", "a.jpg"):
        fs.pipe_file(f"{s3['bucket']}/photos/{name}", (SAMPLES / "gray.png").read_bytes())
    src, out = f"s3://{s3['bucket']}/photos/", f"s3://{s3['bucket']}/out"
    with pytest.raises(ImagesUsageError, match=r"would both be written to s3://.*/out/a_grayscale"):
        plan_images(src, out, ["grayscale"], fmt="png", storage_options=s3["options"])
    # keys are case-sensitive on a store: A.png and a.png are two outputs, unlike on macOS
    fs.pipe_file(f"{s3['bucket']}/photos/A.png", (SAMPLES / "gray.png").read_bytes())
    fs.rm_file(f"{s3['bucket']}/photos/a.jpg")
    plan = plan_images(src, out, ["grayscale"], storage_options=s3["options"])
    assert len({job.output for job in plan.jobs}) == 2
