"""One exception-to-exit-code mapping for every command; a BatchcoreError is never a traceback."""

from __future__ import annotations

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
