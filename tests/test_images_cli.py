"""``batchcore images``: outputs, summary and JSON, failures on stderr, exit codes 0/1/2/130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from image_helpers import ROOT, SAMPLES, files_under, mode_of, noise, write, write_bad_files

from batchcore.processors.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_every_output_and_a_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "images",
        str(SAMPLES),
        "-o",
        str(tmp_path),
        "-f",
        "grayscale",
        "-f",
        "grayscale|blur",
        "--filter",
        "blur:radius=3|sepia",
        "--backend",
        "process",
        "--workers",
        "2",
    ]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert out.startswith(f"{tmp_path}: 15 ok, 0 failed, 0 skipped in ")
    assert out.rstrip().endswith("jobs/s, process backend, 2 workers)")
    names = files_under(tmp_path)
    assert len(names) == 15
    assert {
        "gradient_grayscale.jpg",
        "gradient_grayscale-blur.jpg",
        "gradient_blur-radius3-sepia.jpg",
        "nested/shapes_grayscale-blur.webp",
        "alpha_blur-radius3-sepia.png",
    } <= set(names)


def test_json_is_one_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["images", str(SAMPLES / "gray.png"), "-o", str(tmp_path), "-f", "invert", "--json"]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert out.count("\n") == 1
    report = json.loads(out)
    assert set(report) == {
        "ok",
        "failed",
        "dropped",
        "skipped",
        "jobs",
        "seconds",
        "jobs_per_second",
        "backend",
        "backend_reason",
        "workers",
        "out",
    }
    assert (report["ok"], report["failed"], report["skipped"], report["jobs"]) == (1, [], 0, 1)
    assert report["backend"] == "sequential" and report["out"] == str(tmp_path)


def test_failures_exit_1_with_one_line_each_and_the_rest_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    bad = write_bad_files(src)
    write(src / "good.png", noise("RGB", (20, 20)))
    argv = [
        "images",
        str(src),
        "-o",
        str(tmp_path / "out"),
        "-f",
        "grayscale",
        "--json",
        "--backend",
        "thread",
    ]
    code, out, err = run(argv, capsys)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == len(bad)
    for path in bad.values():
        assert sum(line.startswith(f"batchcore: failed [grayscale]: {path}: ") for line in lines)
    report = json.loads(out)
    assert report["ok"] == 1 and len(report["failed"]) == len(bad)
    assert {item["source"] for item in report["failed"]} == {str(p) for p in bad.values()}
    assert files_under(tmp_path / "out") == ["good_grayscale.png"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-f", "blurr"], "unknown filter 'blurr'; did you mean blur, box_blur?"),
        (["-f", "blur:radius=big"], "radius='big' is not a valid float"),
        (["-f", "grayscale", "-f", "thumbnail:size=0"], "out of range"),
        (["-f", "grayscale", "--format", "raw"], "invalid choice: 'raw'"),
        (["-f", "grayscale", "--quality", "101"], "must be from 1 to 100"),
        (["-f", "grayscale", "--max-pixels", "0"], "must be >= 1"),
        ([], "images: missing -f FILTER"),
    ],
)
def test_usage_errors_exit_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(["images", str(SAMPLES), "-o", str(out), *extra], capsys)
    assert code == 2
    assert message in err
    assert stdout == ""
    assert not out.exists()


def test_path_problems_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["images", str(tmp_path / "nope"), "-o", str(tmp_path), "-f", "blur"], capsys
    )
    assert code == 2 and err == f"batchcore: error: {tmp_path / 'nope'}: no such file or folder\n"
    (tmp_path / "file").write_text("x")
    code, _, err = run(["images", str(SAMPLES), "-o", str(tmp_path / "file"), "-f", "blur"], capsys)
    assert code == 2 and "exists and is not a folder" in err
    code, _, err = run(["images", str(SAMPLES), "-f", "blur"], capsys)
    assert code == 2 and "missing -o OUT" in err
    code, _, err = run(["images", "-o", str(tmp_path), "-f", "blur"], capsys)
    assert code == 2 and "missing SRC" in err
    write(tmp_path / "two" / "a.jpg", noise("RGB", (8, 8)))
    write(tmp_path / "two" / "a.png", noise("RGB", (8, 8)))
    code, _, err = run(
        [
            "images",
            str(tmp_path / "two"),
            "-o",
            str(tmp_path / "o"),
            "-f",
            "blur",
            "--format",
            "png",
        ],
        capsys,
    )
    assert code == 2 and "would both be written to" in err


def test_list_filters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["images", "--list-filters"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "blur  radius=2.0 (float 0..1000)" in lines
    assert "thumbnail  size=256x256 (size (N or WxH) 1..65535)" in lines
    assert "grayscale" in lines
    assert "    Luminance only (ITU-R 601-2 luma); alpha kept." in lines
    assert "test_fails_on_wide  limit=100 (int)" in lines  # registered by image_helpers


def test_skip_existing_and_format_and_quality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["images", str(SAMPLES), "-o", str(tmp_path), "-f", "sepia", "--format", "JPG"]
    assert run([*base, "--quality", "50"], capsys)[0] == 0
    assert all(name.endswith(".jpg") for name in files_under(tmp_path))
    assert mode_of(tmp_path / "alpha_sepia.jpg") == "RGB"
    (tmp_path / "gray_sepia.jpg").unlink()
    code, out, _ = run([*base, "--skip-existing", "--per-job"], capsys)
    assert code == 0
    assert ": 1 ok, 0 failed, 4 skipped in " in out


def test_progress_bar_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["images", str(SAMPLES), "-o", str(tmp_path), "-f", "invert"]
    code, _, err = run(base, capsys)  # stderr is not a terminal here
    assert (code, err) == (0, "")
    code, _, err = run([*base, "--progress", "--backend", "thread"], capsys)
    assert code == 0 and "5/5" in err and "job" in err


def test_ctrl_c_exits_130_and_leaves_no_partial_output(tmp_path: Path) -> None:
    """A real interrupt in a subprocess: SIGINT to the process group mid-run."""
    src = tmp_path / "src"
    first = write(src / "p000.png", noise("RGB", (400, 300)))
    for index in range(1, 120):  # far more than the time to the first output can finish
        (src / f"p{index:03d}.png").write_bytes(first.read_bytes())  # encoded once: 20 ms each
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "batchcore",
        "images",
        str(src),
        "-o",
        str(out),
        "-f",
        "gaussian_blur:radius=40",
        "--backend",
        "process",
        "--workers",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        began = time.monotonic()

        def finished() -> list[str]:  # whole outputs only: temp files are hidden (dot) names
            found = files_under(out) if out.exists() else []
            return [name for name in found if not Path(name).name.startswith(".")]

        while time.monotonic() - began < 30 and not finished():
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "batchcore: interrupted" in err
    assert "Traceback" not in err, err
    visible = [name for name in files_under(out) if not Path(name).name.startswith(".")]
    assert 0 < len(visible) < 120, len(visible)
    for name in visible:  # every visible output is a whole image
        with open(out / name, "rb") as handle:
            assert handle.read()[-12:-4] == b"\x00\x00\x00\x00IEND"
    resumed = subprocess.run(
        [*command, "--skip-existing", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert (report["ok"], report["skipped"]) == (120 - len(visible), len(visible))
    assert len(files_under(out)) == 120  # every output, and no temporary file left
