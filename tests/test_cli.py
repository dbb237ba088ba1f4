"""The ``batchcore`` command: ``csv stats`` output, JSON shape and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import batchcore
from processors import seed_csv
from processors.cli import main

ROOT = Path(__file__).resolve().parents[1]
SALES = ROOT / "data" / "sales.csv"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def check_json(report: dict[str, Any], columns: list[str]) -> None:
    """``report`` has the documented shape and agrees with plain pandas on data/sales.csv."""
    assert set(report) == {"rows", "sum", "columns", "backend", "workers", "seconds"}
    frame = pd.read_csv(SALES)
    assert report["rows"] == len(frame) == 5000
    assert list(report["sum"]) == columns
    assert list(report["columns"]) == columns
    for column in columns:
        stats = report["columns"][column]
        assert set(stats) == {"sum", "count", "mean", "min", "max"}
        assert report["sum"][column] == stats["sum"]
        assert stats["sum"] == pytest.approx(frame[column].sum(), rel=1e-12)
        assert stats["count"] == frame[column].count()
        assert stats["mean"] == pytest.approx(frame[column].mean(), rel=1e-12)
        assert stats["min"] == frame[column].min()
        assert stats["max"] == frame[column].max()
    assert isinstance(report["workers"], int) and report["workers"] >= 1
    assert isinstance(report["seconds"], float) and report["seconds"] >= 0


def test_json_matches_pandas_on_every_backend(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--sum", "qty"]
    argv += ["--backend", backend, "--workers", "2", "--chunk-rows", "1500", "--json"]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert out.count("\n") == 1  # exactly one JSON object on one line
    report = json.loads(out)
    check_json(report, ["amount", "qty"])
    assert report["backend"] == backend
    assert report["workers"] == (1 if backend == "sequential" else 2)


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["csv", "stats", str(SALES), "--sum", "amount", "--sum", "qty"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "rows: 5000"
    assert lines[1].split() == ["column", "sum", "count", "mean", "min", "max"]
    assert lines[2].split()[0] == "amount"
    assert lines[3].split()[0] == "qty"


def test_default_column_is_amount(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["csv", "stats", str(SALES), "--json"], capsys)
    assert code == 0
    assert list(json.loads(out)["sum"]) == ["amount"]


def test_progress_bar_goes_to_stderr_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["csv", "stats", str(SALES), "--chunk-rows", "1000", "--json"]
    code, out, err = run([*argv, "--progress"], capsys)
    assert code == 0
    assert "SalesChunkStats" in err
    json.loads(out)
    code, _, err = run(argv, capsys)  # captured stderr is not a terminal: no bar by default
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["csv", "stats", "missing.csv"], "missing.csv: no such CSV file"),
        (["csv", "stats", str(SALES), "--sum", "amout"], "no column 'amout'; available columns"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("batchcore: error: ")
    assert needle in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["csv"],
        ["csv", "stats"],
        ["csv", "stats", str(SALES), "--backend", "nope"],
        ["csv", "stats", str(SALES), "--workers", "0"],
        ["csv", "stats", str(SALES), "--chunk-rows", "many"],
        ["csv", "frobnicate"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert "usage: batchcore" in err
    assert "Traceback" not in err


def test_non_numeric_column_exits_1_naming_file_and_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["csv", "stats", str(SALES), "--sum", "region"], capsys)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert str(SALES) in err
    assert "'region'" in err


def test_malformed_csv_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("amount,qty\n1,2\n3,4,5\n")
    code, _, err = run(["csv", "stats", str(path)], capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert "ragged.csv: malformed CSV" in err


def test_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(seed_csv, "run_sales_stats", interrupted)
    code, out, err = run(["csv", "stats", str(SALES)], capsys)
    assert code == 130
    assert out == ""
    assert err == "batchcore: interrupted\n"


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert (code, out) == (0, f"batchcore {batchcore.__version__}\n")
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "csv" in out
    code, out, _ = run(["csv", "stats", "--help"], capsys)
    assert code == 0
    for backend in batchcore.available_backends():
        assert backend in out


def test_help_does_not_import_pandas() -> None:
    code = (
        "import sys\n"
        "from processors.cli import main\n"
        "assert main(['--help']) == 0\n"
        "assert main(['csv', 'stats', '--help']) == 0\n"
        "sys.exit(3 if 'pandas' in sys.modules else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_real_process_run_through_python_m_processors() -> None:
    argv = ["csv", "stats", "data/sales.csv", "--backend", "process", "--workers", "2", "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "processors", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    check_json(report, ["amount"])
    assert (report["backend"], report["workers"]) == ("process", 2)
