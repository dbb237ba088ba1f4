"""One exception-to-exit-code mapping for every command; a BatchcoreError is never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from csv_helpers import SALES
from image_helpers import SAMPLES

import batchcore
from batchcore.processors.cli import main
from batchcore.processors.cli.errors import exit_code
from batchcore.processors.csv import jobs as csv_jobs
from batchcore.processors.errors import (
    CsvFormatError,
    DataError,
    FilterSpecError,
    ImagesUsageError,
    ImageWriteError,
    UnknownColumnError,
    UsageError,
)
from batchcore.processors.images import jobs as images_jobs


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UnknownColumnError("no column 'x'"), 2),
        (FilterSpecError("unknown filter"), 2),
        (ImagesUsageError("no images found"), 2),
        (CsvFormatError("a.csv", 3, "ragged"), 1),
        (DataError("not numeric"), 1),
        (ImageWriteError("out.png", "disk full"), 1),
        (batchcore.WorkerStartupError("workers exited"), 1),
        (FileNotFoundError(2, "No such file or directory", "a.csv"), 2),
        (PermissionError(13, "Permission denied", "a.csv"), 2),
        (OSError(28, "No space left on device", "part.parquet"), 1),
        (ValueError("delimiter must be one ASCII character"), 2),
        (KeyboardInterrupt(), 130),
        (BrokenPipeError(), None),
        (RuntimeError("a bug"), None),
    ],
)
def test_exit_codes(exc: BaseException, code: int | None) -> None:
    assert exit_code(exc) == code


def test_processors_errors_are_batchcore_errors_and_builtins() -> None:
    assert issubclass(UsageError, batchcore.BatchcoreError) and issubclass(UsageError, ValueError)
    assert issubclass(UnknownColumnError, KeyError)
    assert issubclass(CsvFormatError, DataError) and issubclass(CsvFormatError, ValueError)
    assert issubclass(ImageWriteError, OSError)


@pytest.mark.parametrize("command", ["csv", "images"])
def test_a_batchcore_error_is_one_line_and_exit_1(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_workers(*args: object, **kwargs: object) -> None:
        raise batchcore.WorkerStartupError("worker processes exited before they were ready")

    monkeypatch.setattr(csv_jobs, "csv_stats", no_workers)
    monkeypatch.setattr(images_jobs, "run_images", no_workers)
    argv = {
        "csv": ["csv", "stats", str(SALES), "--sum", "amount"],
        "images": ["images", str(SAMPLES), "-o", str(tmp_path), "-f", "grayscale"],
    }[command]
    code = main(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("batchcore: error: ") and "WorkerStartupError: worker processes" in err


@pytest.fixture()
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only file system (a tmpfs mounted ``ro``); skipped where this process
    may not mount one (not root, no mount namespace)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only file system here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=False)


@pytest.mark.parametrize("command", ["to-parquet", "images"])
def test_a_read_only_output_names_the_output_and_exits_2(
    command: str, read_only_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15.6: not the input, not our lock file: the output, as a usage error."""
    out = read_only_folder / "out"
    if command == "to-parquet":
        argv = ["csv", "to-parquet", str(SALES), str(out)]
    else:
        argv = ["images", str(SAMPLES), "-o", str(out), "-f", "grayscale"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"batchcore: error: {out}: ")
    assert "Read-only file system" in err
    assert err.count("\n") == 1


def test_dask_without_the_extra_is_the_hint_alone_and_exit_2() -> None:
    """Issue 15.6: no 40-line traceback ending in the hint: the hint, one line, exit 2."""
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "from batchcore.processors.cli import main\n"
        f"sys.exit(main(['csv', 'stats', {str(SALES)!r}, '--backend', 'dask']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr == (
        'batchcore: error: the "dask" backend needs Dask distributed: '
        'pip install "batchcore[dask]"\n'
    )


def test_a_bad_value_for_a_given_type_says_the_type_came_from_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15.6: ``--type a=float64`` was reported as "inferred from the first rows"."""
    path = tmp_path / "a.csv"
    path.write_text("a,b\n1.5,x\n2.5,y\nabc,z\n")
    assert main(["csv", "stats", str(path), "--sum", "a", "--type", "a=float64"]) == 1
    err = capsys.readouterr().err
    assert "inferred" not in err
    assert f"{path}:4: column 'a': " in err and "--type a=" in err


@pytest.mark.parametrize(("alias", "value"), [("int", 6), ("integer", 6), ("float", 6.0)])
def test_everyday_type_names_are_accepted(
    alias: str, value: float, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a\n1\n2\n3\n")
    assert main(["csv", "stats", str(path), "--sum", "a", "--type", f"a={alias}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sum"]["a"] == value


def test_an_unknown_type_lists_the_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["csv", "stats", str(SALES), "--sum", "qty", "--type", "qty=integr"]) == 2
    err = capsys.readouterr().err
    assert "unknown type 'integr'" in err and "int64" in err and "float64" in err


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("utf-16", "is UTF-16 text (it starts with a UTF-16 byte-order mark)"),
        ("utf-32", "is UTF-32 text"),
        ("utf-16-le", "NUL bytes between its letters: the file looks like UTF-16"),
    ],
)
def test_a_utf16_file_is_named_as_such(
    encoding: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15.6: not "has no column ..." followed by a garbled header alone."""
    path = tmp_path / "wide.csv"
    path.write_bytes("a,b\n1,2\n".encode(encoding))
    assert main(["csv", "stats", str(path), "--sum", "a"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "iconv" in err


@pytest.mark.parametrize(("delimiter", "shown"), [(";", "';'"), ("|", "'|'"), ("\t", "tab")])
def test_a_header_of_one_field_suggests_the_delimiter(
    delimiter: str, shown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "semi.csv"
    path.write_text(f"a{delimiter}b\n1{delimiter}2\n")
    assert main(["csv", "stats", str(path), "--sum", "a"]) == 2
    err = capsys.readouterr().err
    assert f"pass --delimiter {shown}" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["stats", "to-parquet"])
def test_a_failed_process_run_prints_its_one_line_and_no_worker_traceback(
    command: str, tmp_path: Path
) -> None:
    """Issue 15.6: the one-line error, then nothing from the workers (a real CLI run, so what
    workers write to the inherited stderr would show)."""
    lines = SALES.read_text().splitlines()
    fields = lines[4000].split(",")
    fields[5] = "abc"
    lines[4000] = ",".join(fields)
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    argv = [sys.executable, "-m", "batchcore", "csv", command, str(path)]
    argv += [str(tmp_path / "out")] if command == "to-parquet" else ["--sum", "amount"]
    argv += ["--type", "amount=float64", "--backend", "process", "--workers", "2"]
    argv += ["--chunk-bytes", "64KiB"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"batchcore: error: {path}:4001: column 'amount': ")
    assert result.stderr.count("\n") == 1, result.stderr
