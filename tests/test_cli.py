"""The ``batchcore`` command: ``csv stats`` and ``csv to-parquet``: output, JSON, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from csv_helpers import ROOT, SALES, nulls_sales, script_says, write_bytes

import batchcore
from batchcore.processors.cli import main
from batchcore.processors.cli.csv import byte_size
from batchcore.processors.csv import jobs as csv_jobs


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def check_json(report: dict[str, Any], path: Path, columns: list[str]) -> None:
    """``report`` has the documented shape and agrees with plain pandas."""
    assert {"rows", "sum", "columns"} <= set(report)
    frame = pd.read_csv(path)
    assert report["rows"] == len(frame)
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


# --- csv stats -------------------------------------------------------------------------------


def test_json_matches_pandas_on_every_backend(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--sum", "qty"]
    argv += ["--backend", backend, "--workers", "2", "--chunk-bytes", "64KiB", "--json"]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert out.count("\n") == 1 and out.endswith("\n")  # exactly one JSON object on one line
    report = json.loads(out)
    check_json(report, SALES, ["amount", "qty"])
    assert report["rows"] == 5000
    assert report["backend"] == backend
    assert "groups" not in report


def test_json_group_by(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--group-by", "region", "--json"]
    code, out, err = run([*argv, "--chunk-bytes", "50000"], capsys)
    assert (code, err) == (0, "")
    report = json.loads(out)
    frame = pd.read_csv(SALES)
    expected = frame.groupby("region")["amount"].agg(["size", "sum"])
    assert set(report["groups"]) == set(expected.index)
    for key, group in report["groups"].items():
        assert {"rows", "sum"} <= set(group)
        assert group["rows"] == expected.loc[key, "size"]
        assert group["sum"]["amount"] == pytest.approx(expected.loc[key, "sum"], rel=1e-12)


def test_json_with_nulls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = nulls_sales(tmp_path / "nulls.csv", rows=500)
    argv = ["csv", "stats", str(path), "--sum", "amount", "--sum", "qty", "--json"]
    code, out, _ = run([*argv, "--chunk-bytes", "1KiB"], capsys)
    assert code == 0
    check_json(json.loads(out), path, ["amount", "qty"])


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--sum", "qty"]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"{SALES}: 5,000 rows in ")
    assert lines[0].endswith("(sequential backend, auto: 1 item, nothing to share)")
    table = [line.split() for line in lines if line.strip()][1:]
    assert table[0] == ["column", "sum", "count", "mean", "min", "max"]
    frame = pd.read_csv(SALES)
    amount = dict(zip(table[0], table[1], strict=True))
    assert amount["column"] == "amount"
    assert amount["sum"] == f"{frame['amount'].sum():,.2f}"
    assert amount["count"] == "5,000"
    assert amount["mean"] == f"{frame['amount'].mean():,.2f}"
    assert amount["min"] == f"{frame['amount'].min():,.2f}"
    assert amount["max"] == f"{frame['amount'].max():,.2f}"
    qty = dict(zip(table[0], table[2], strict=True))
    assert (qty["column"], qty["sum"], qty["min"], qty["max"]) == (
        "qty",
        f"{frame['qty'].sum():,}",
        "1",
        "12",
    )


def test_table_output_group_by(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["csv", "stats", str(SALES), "--sum", "qty", "--group-by", "region"]
    code, out, _ = run(argv, capsys)
    assert code == 0
    frame = pd.read_csv(SALES)
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["North"], ["West"])]
    assert len(rows) == 2
    for row in rows:
        part = frame[frame["region"] == row[0]]
        assert row[1:4] == [f"{len(part):,}", "qty", f"{part['qty'].sum():,}"]


def test_stats_without_sum_columns_counts_rows(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["csv", "stats", str(SALES), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert (report["rows"], report["sum"]) == (5000, {})


def test_csv_options_reach_the_reader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "1;2,5;x\n3;NA;y\n".replace("2,5", "2.5")
    path = write_bytes(tmp_path / "semi.csv", text, "latin-1")
    argv = ["csv", "stats", str(path), "--no-header", "--delimiter", ";", "--sum", "f1"]
    argv += ["--null", "NA", "--type", "f0=float64", "--sum", "f0", "--encoding", "latin-1"]
    code, out, err = run([*argv, "--json"], capsys)
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["rows"] == 2
    assert report["columns"]["f1"] == {"sum": 2.5, "count": 1, "mean": 2.5, "min": 2.5, "max": 2.5}
    assert report["sum"]["f0"] == 4.0 and isinstance(report["sum"]["f0"], float)


def test_progress_bar_goes_to_stderr_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--chunk-bytes", "50KB", "--json"]
    code, out, err = run([*argv, "--progress"], capsys)
    assert code == 0
    assert err != "" and "Traceback" not in err
    json.loads(out)
    code, _, err = run(argv, capsys)  # captured stderr is not a terminal: no bar by default
    assert (code, err) == (0, "")


# --- csv to-parquet --------------------------------------------------------------------------


def test_to_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "ds"
    argv = ["csv", "to-parquet", str(SALES), str(out_dir), "--chunk-bytes", "100KB"]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert out == f"{out_dir}: 5,000 rows in 5 parts\n"
    table = pq.read_table(out_dir)
    want = pacsv.read_csv(SALES)
    assert table.cast(want.schema).equals(want)
    assert (out_dir / "_SUCCESS").exists()

    code, out, err = run(argv, capsys)  # again, into the dataset it just wrote
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "--overwrite" in err and str(out_dir) in err
    assert len(list(out_dir.glob("part-*.parquet"))) == 5

    argv[-1] = "200KB"
    code, out, err = run([*argv, "--overwrite", "--json", "--columns", "order_id,amount"], capsys)
    assert (code, err) == (0, "")
    summary = json.loads(out)
    assert (summary["rows"], summary["parts"]) == (5000, 3)
    assert summary["schema"] == {"order_id": "int64", "amount": "double"}
    assert len(list(out_dir.glob("part-*.parquet"))) == 3
    assert pq.read_table(out_dir).column_names == ["order_id", "amount"]


# --- errors and exit codes -------------------------------------------------------------------


def test_ragged_row_exits_1_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_bytes(tmp_path / "ragged.csv", "amount,qty\n1,2\n3,4,5\n6,7\n")
    for command in (
        ["stats", str(path), "--sum", "amount"],
        ["to-parquet", str(path), str(tmp_path / "o")],
    ):
        code, out, err = run(["csv", *command], capsys)
        assert (code, out) == (1, "")
        assert err.count("\n") == 1
        assert err.startswith(f"batchcore: error: {path}:3: ")
        assert "Traceback" not in err


def test_skip_bad_rows_reports_each_skipped_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_bytes(tmp_path / "ragged.csv", "amount,qty\n1,2\n3,4,5\n6,7\n8\n")
    argv = ["csv", "stats", str(path), "--sum", "amount", "--skip-bad-rows", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0
    report = json.loads(out)
    assert (report["rows"], report["skipped_rows"], report["sum"]) == (2, 2, {"amount": 7})
    assert err.splitlines() == [
        f"batchcore: skipped bad row at {path}:3",
        f"batchcore: skipped bad row at {path}:5",
    ]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["csv", "stats", "missing.csv"], "missing.csv: No such file or directory"),
        (["csv", "stats", str(SALES), "--sum", "amout"], "no column 'amout'; its columns are"),
        (["csv", "stats", str(SALES), "--group-by", "regio"], "no column 'regio'"),
        (["csv", "stats", str(SALES), "--type", "qty=int65"], "unknown type 'int65'"),
        (["csv", "stats", str(SALES), "--type", "nope=int64"], "no column 'nope'"),
        (["csv", "stats", str(SALES), "--encoding", "utf-16"], "not ASCII-compatible"),
        (["csv", "stats", str(SALES), "--delimiter", ";;"], "delimiter"),
        (["csv", "to-parquet", "missing.csv", "out"], "missing.csv: No such file or directory"),
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
        ["csv", "to-parquet", str(SALES)],
        ["csv", "stats", str(SALES), "--backend", "nope"],
        ["csv", "stats", str(SALES), "--workers", "0"],
        ["csv", "stats", str(SALES), "--chunk-bytes", "many"],
        ["csv", "stats", str(SALES), "--chunk-bytes", "0"],
        ["csv", "stats", str(SALES), "--chunk-bytes", "-5MB"],
        ["csv", "stats", str(SALES), "--chunk-bytes", "32PB"],
        ["csv", "stats", str(SALES), "--type", "qty"],
        ["csv", "stats", str(SALES), "--type", "=int64"],
        ["csv", "stats", str(SALES), "--chunk-rows", "1000"],
        ["csv", "frobnicate"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert "usage: batchcore" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("33554432", 32 << 20),
        ("32MiB", 32 << 20),
        ("32mib", 32 << 20),
        ("50MB", 50 * 10**6),
        ("64KiB", 64 << 10),
        ("1.5KiB", 1536),
        ("2GiB", 2 << 30),
        ("100B", 100),
        ("1", 1),
    ],
)
def test_chunk_bytes_sizes(text: str, size: int) -> None:
    assert byte_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "0", "0.4", "-1", "1e6", "12 parsecs", "32XB"])
def test_chunk_bytes_rejects_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        byte_size(text)


def test_non_numeric_column_exits_1_naming_file_and_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["csv", "stats", str(SALES), "--sum", "region"], capsys)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert str(SALES) in err
    assert "'region'" in err


def test_bad_value_past_the_head_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ["qty"] + [str(i % 9) for i in range(700_000)]
    lines[650_000] = "oops"  # past the first MiB, which the types are inferred from
    path = write_bytes(tmp_path / "late.csv", "\n".join(lines) + "\n")
    code, out, err = run(["csv", "stats", str(path), "--sum", "qty"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"batchcore: error: {path}:650001: column 'qty': ")
    code, out, _ = run(["csv", "stats", str(path), "--type", "qty=string", "--json"], capsys)
    assert code == 0 and json.loads(out)["rows"] == 700_000


def test_header_only_file_has_zero_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_bytes(tmp_path / "header.csv", "amount,qty\n")
    code, out, err = run(["csv", "stats", str(path), "--sum", "amount", "--json"], capsys)
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert (report["rows"], report["sum"]) == (0, {"amount": 0})


def test_json_stays_strict_json_with_infinite_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``inf`` and ``nan`` parse as floats: --json still prints one strict JSON object (no
    ``Infinity`` or ``NaN`` tokens, which ``json.loads`` accepts but other parsers reject),
    with the non-finite values spelled as strings."""
    path = write_bytes(tmp_path / "inf.csv", "amount\n1.5\ninf\n-inf\nnan\n")

    def strict(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    code, out, err = run(["csv", "stats", str(path), "--sum", "amount", "--json"], capsys)
    assert (code, err) == (0, "")
    report = json.loads(out, parse_constant=strict)
    assert report["rows"] == 4
    assert report["sum"] == {"amount": "nan"}  # inf + -inf
    amount = report["columns"]["amount"]
    assert (amount["min"], amount["max"]) == ("-inf", "inf")


def test_a_user_type_the_head_does_not_fit_exits_1_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_bytes(tmp_path / "t.csv", "a,b\n1,2\n3,oops\n")
    code, out, err = run(["csv", "stats", str(path), "--type", "b=int64", "--sum", "b"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"batchcore: error: {path}:3: column 'b': ")


def test_to_parquet_reports_skipped_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Skipping is never silent: the human summary (or stderr) says rows were skipped."""
    path = write_bytes(tmp_path / "ragged.csv", "a,b\n1,2\n1,2,3\n4,5\n")
    argv = ["csv", "to-parquet", str(path), str(tmp_path / "ds"), "--skip-bad-rows"]
    code, out, err = run(argv, capsys)
    assert code == 0
    assert pq.read_table(tmp_path / "ds").num_rows == 2
    assert "skipped" in out + err
    assert f"{path}:3" in out + err


def test_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(csv_jobs, "csv_stats", interrupted)
    code, out, err = run(["csv", "stats", str(SALES), "--sum", "amount"], capsys)
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
    for option in ("--sum", "--group-by", "--chunk-bytes", "--json", "--workers"):
        assert option in out
    code, out, _ = run(["csv", "to-parquet", "--help"], capsys)
    assert code == 0 and "--overwrite" in out


# --- real processes (two) --------------------------------------------------------------------


def test_help_does_not_import_pandas_or_pyarrow() -> None:
    code = (
        "import sys\n"
        "from batchcore.processors.cli import main\n"
        "assert main(['--help']) == 0\n"
        "assert main(['csv', 'stats', '--help']) == 0\n"
        "heavy = [name for name in ('pandas', 'pyarrow') if name in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_real_process_run_through_python_m_batchcore() -> None:
    argv = ["csv", "stats", "data/sales.csv", "--sum", "amount", "--group-by", "region"]
    argv += ["--backend", "process", "--workers", "2", "--chunk-bytes", "64KiB", "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "batchcore", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    check_json(report, SALES, ["amount"])
    assert report["backend"] == "process"
    assert sum(group["rows"] for group in report["groups"].values()) == 5000


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """``batchcore ... | head``: the pipe closes early; no BrokenPipeError traceback."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "batchcore", "images", "--list-filters"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # like `head -1`
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=30)
    assert "Traceback" not in err
    assert code in (0, 141)


def test_workers_far_above_the_ranges_start_no_more_than_needed() -> None:
    """Issue 15.3: ``--workers 1000`` on the one-range sample used to start 1000 workers (74 s);
    it starts what the ranges need, with a warning about the worker count."""
    argv = [sys.executable, "-m", "batchcore", "csv", "stats", str(SALES), "--sum", "amount"]
    argv += ["--backend", "process", "--workers", "1000", "--json"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 5000
    assert "workers=1000 is far above" in result.stderr


@pytest.mark.parametrize("chunk_bytes", ["64KiB", "16MiB"])
def test_float_sums_carry_no_noise(chunk_bytes: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15.8: sums as exact as Python's ``math.fsum`` of the values (pandas' Kahan sums
    agree), in total and per group, however the file is cut: 643481.7, not 643481.6999999989."""
    import math

    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--group-by", "region", "--json"]
    code, out, err = run([*argv, "--chunk-bytes", chunk_bytes, "--backend", "thread"], capsys)
    assert (code, err) == (0, "")
    report = json.loads(out)
    frame = pd.read_csv(SALES)
    assert report["sum"]["amount"] == math.fsum(frame["amount"])
    for key, values in frame.groupby("region")["amount"]:
        assert report["groups"][key]["sum"]["amount"] == math.fsum(values), key


def test_summaries_say_1_part_and_1_bad_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15.8: "1 parts", "1 bad rows" were printed as such."""
    out_dir = tmp_path / "ds"
    code, out, _ = run(["csv", "to-parquet", str(SALES), str(out_dir)], capsys)
    assert (code, out) == (0, f"{out_dir}: 5,000 rows in 1 part\n")
    path = write_bytes(tmp_path / "one.csv", "a,b\n1,2\n3\n")
    code, out, _ = run(["csv", "stats", str(path), "--sum", "a", "--skip-bad-rows"], capsys)
    assert code == 0
    assert out.startswith(f"{path}: 1 row in ") and out.splitlines()[0].endswith(
        "; 1 bad row skipped"
    )


def test_progress_bars_name_what_was_asked_for_and_show_bytes_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15.8: "sales.csv" and "images", not StatsNode or ImageJobsNode; the byte counts
    carry the unit their rate does (420kB/420kB, 3.1MB/s), not a bare 420k."""
    import re

    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--chunk-bytes", "50KB", "--json"]
    code, _, err = run([*argv, "--progress"], capsys)
    assert code == 0
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("sales.csv: 100%"), last
    assert re.search(r" \d+(\.\d+)?kB/\d+(\.\d+)?kB ", last), last
    images = Path(__file__).resolve().parents[1] / "data" / "images"
    argv = ["images", str(images), "-o", str(tmp_path / "o"), "-f", "grayscale", "--progress"]
    code, _, err = run(argv, capsys)
    assert code == 0
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("images: 100%"), last


def test_readme_examples_write_where_git_ignores() -> None:
    """Issue 15.8: running the README's examples in a clone leaves ``git status`` clean."""
    import re
    import shutil

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    readme = (ROOT / "README.md").read_text()
    outputs = set(re.findall(r"^batchcore csv to-parquet data/\S+ (\S+)", readme, re.M))
    outputs |= set(re.findall(r"^batchcore images data/\S+ -o (\S+)", readme, re.M))
    assert outputs
    for output in sorted(outputs):
        probe = f"{output}/part-0.parquet"
        result = subprocess.run(
            ["git", "-C", str(ROOT), "check-ignore", "-q", probe], check=False, timeout=30
        )
        assert result.returncode == 0, f"{output} is not covered by .gitignore"


# --- conveniences (issue 15.7) ------------------------------------------------------------------


@pytest.mark.parametrize("given", ["\t", "\\t", "tab", "TAB"])
def test_a_tab_delimiter_by_any_spelling(
    given: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_bytes(tmp_path / "t.tsv", "a\tb\n1\t2\n3\t4\n")
    argv = ["csv", "stats", str(path), "--sum", "b", "--delimiter", given, "--json"]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert json.loads(out)["sum"]["b"] == 6


def test_quote_char_and_no_quoting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_bytes(tmp_path / "q.csv", "a,b\n'x,y',1\n'z',2\n")
    argv = ["csv", "stats", str(path), "--sum", "b", "--json"]
    code, out, _ = run([*argv, "--quote-char", "'"], capsys)
    assert code == 0 and json.loads(out)["rows"] == 2
    path = write_bytes(tmp_path / "n.csv", 'a,b\n"x,1\n"y,2\n')
    code, out, err = run(
        ["csv", "stats", str(path), "--sum", "b", "--json", "--no-quoting"], capsys
    )
    assert (code, err) == (0, "")
    assert json.loads(out)["sum"]["b"] == 3


def test_a_dash_reads_standard_input(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "batchcore", "csv", "stats", "-", "--sum", "amount", "--json"]
    result = subprocess.run(
        argv, input=SALES.read_bytes(), capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 5000 and report["files"] == ["-"]
    out_dir = tmp_path / "ds"
    argv = [sys.executable, "-m", "batchcore", "csv", "to-parquet", "-", str(out_dir)]
    result = subprocess.run(
        argv, input=SALES.read_bytes(), capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert pq.read_table(out_dir).num_rows == 5000


def test_a_tiny_chunk_bytes_is_raised_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    """``--chunk-bytes 1`` cut the 430 KB sample into 430,000 ranges (42 s)."""
    import time

    began = time.monotonic()
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--chunk-bytes", "1", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0 and json.loads(out)["rows"] == 5000
    assert err.startswith("batchcore: note: --chunk-bytes 1 is below 1KiB; using 1KiB (")
    assert err.count("\n") == 1
    assert time.monotonic() - began < 20


EARLY_POOL_SCRIPT = """
import json, sys
import psutil
from batchcore.processors.cli import build_parser, start_pool_early

start_pool_early(build_parser().parse_args(sys.argv[1:]))
heavy = [name for name in ("pyarrow", "fsspec") if name in sys.modules]
children = psutil.Process().children()
preloads = children[0].cmdline() if children else []
print(json.dumps([bool(children), bool(heavy), preloads]))
"""


CSV_JOB = "batchcore.processors.csv.jobs"


@pytest.mark.parametrize(
    ("argv", "early", "preloads"),
    [
        (["csv", "stats", str(SALES), "--backend", "process"], True, [CSV_JOB]),
        (
            ["csv", "to-parquet", str(SALES), "OUT", "--backend", "process"],
            True,
            [CSV_JOB, "pyarrow.parquet"],
        ),
        (
            ["images", str(SALES.parent), "-o", "OUT", "--backend", "process"],
            True,
            ["PIL.Image", "batchcore.processors.images.jobs"],
        ),
        (["csv", "stats", str(SALES)], False, []),  # auto: threads or sequential
        (["csv", "stats", str(SALES), "--backend", "thread"], False, []),
        (
            ["csv", "stats", "s3://bucket/sales.csv", "--backend", "process"],
            True,
            [CSV_JOB, "pyarrow.fs"],
        ),
        (["images", "s3://bucket/photos/", "-o", "OUT", "--backend", "process"], False, []),
        (
            ["csv", "to-parquet", str(SALES), "s3://bucket/out", "--backend", "process"],
            False,
            [],
        ),
        (["csv", "stats", "-", "--backend", "process"], False, []),
    ],
)
def test_a_process_run_on_local_files_starts_its_pool_before_the_job_imports(
    argv: list[str], early: bool, preloads: list[str]
) -> None:
    """The pool's zygote imports numpy and pyarrow on another core while the command imports
    them (and fsspec), and then what each worker would import at its first item (the job's
    module, its libraries); for CSV by URL with the store's client (Arrow's, with these
    credentials), for a URL output or images by URL not early."""
    keys = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
    started, imported, command = script_says(EARLY_POOL_SCRIPT, *argv, env={**os.environ, **keys})
    assert started is early
    assert imported is False  # the pool started before the command's heavy imports
    cut = command.index("") if "" in command else len(command)
    assert set(preloads) <= set(command[:cut]), command  # before the zygote's first fork


def test_an_early_pool_closes_when_the_command_fails_before_its_batch(tmp_path: Path) -> None:
    """A missing input fails before any batch: the pool started for it goes with the program."""
    argv = [sys.executable, "-m", "batchcore", "csv", "stats", str(tmp_path / "missing.csv")]
    with subprocess.Popen(
        [*argv, "--backend", "process"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "missing.csv" in err
    stray = [p for p in psutil.process_iter(["pid"]) if _session_of(p.pid) == proc.pid]
    assert stray == []


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


BLAS_SCRIPT = """
import json, os, sys
from batchcore.processors.cli import main

code = main(sys.argv[1:])
print(json.dumps([code, os.environ.get("OPENBLAS_NUM_THREADS")]))
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("2", "2")])
def test_the_command_keeps_numpy_from_starting_blas_threads(
    given: str | None, expected: str
) -> None:
    """No command does linear algebra: numpy's OpenBLAS gets one thread (none of its own that
    spin), unless the user set how many."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--backend", "sequential"]
    code, value = script_says(BLAS_SCRIPT, *argv, env=env)
    assert code == 0 and value == expected
