"""Module-level nodes and helpers for the CSV processor tests (worker processes import them).

Nodes here are defined at module level so the process backend sends them by reference; every
behaviour a test needs is chosen by constructor arguments, never by editing the class.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batchcore.processors.csv.jobs import PART, ParquetNode
from batchcore.processors.csv.node import CSVBatchNode

ROOT = Path(__file__).resolve().parents[1]
SALES = ROOT / "data" / "sales.csv"
MAKE_SALES = ROOT / "data" / "make_sales.py"


def write_bytes(path: Path, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text is encoded, never newline-translated) and return ``path``."""
    path.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
    return path


def csv_text(rows: Sequence[Sequence[Any]], lineterminator: str = "\n", **kwargs: Any) -> str:
    """``rows`` as CSV text written by the standard library's ``csv.writer``."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=lineterminator, **kwargs).writerows(rows)
    return buffer.getvalue()


def python_rows(data: bytes, encoding: str = "utf-8") -> list[list[str]]:
    """The standard library's parse of a whole CSV file (every record, header included)."""
    return list(csv.reader(io.StringIO(data.decode(encoding), newline="")))


# --- nodes -----------------------------------------------------------------------------------


class RowsNode(CSVBatchNode):
    """Returns each range's rows as Python lists; ``post`` concatenates them in file order.

    ``marker_dir``: every exec touches a file there (to prove exec ran, or did not, on any
    backend).
    """

    def __init__(
        self, path: str | None = None, marker_dir: str | None = None, **options: Any
    ) -> None:
        super().__init__(path, **options)
        self.marker_dir = marker_dir

    def exec(self, table: Any) -> list[list[Any]]:
        if self.marker_dir:
            rng = self.current_range
            Path(self.marker_dir, f"exec-{rng.index if rng else 'x'}-{os.getpid()}").touch()
        if isinstance(table, pd.DataFrame):
            return [list(row) for row in table.itertuples(index=False)]
        return [list(row.values()) for row in table.to_pylist()]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> str:
        shared["rows"] = [row for part in exec_res for row in part]
        shared["ranges"] = list(prep_res)
        return "done"


class ProbeNode(CSVBatchNode):
    """Reports, per range: the table's type, schema, column names, rows and ``current_range``."""

    def exec(self, table: Any) -> dict[str, Any]:
        info: dict[str, Any] = {
            "type": type(table).__name__,
            "range": self.current_range,
            "rows": len(table),
            "columns": list(table.columns)
            if isinstance(table, pd.DataFrame)
            else table.column_names,
        }
        if isinstance(table, pa.Table):
            info["schema"] = table.schema
            info["table"] = table
        else:
            info["frame"] = table
        return info

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> str:
        shared["probes"] = exec_res
        shared["ranges"] = list(prep_res)
        return "done"


class SeedLikeTotal(CSVBatchNode):
    """The seed tutorial's CSVProcessor rewritten on CSVBatchNode: the file comes from
    ``shared["input_file"]``, exec totals one range, post combines."""

    def exec(self, table: pa.Table) -> dict[str, Any]:
        amount = table["amount"].to_pylist()
        values = [value for value in amount if value is not None]
        return {"rows": table.num_rows, "sum": sum(values), "count": len(values)}

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> str:
        shared["statistics"] = {
            "rows": sum(part["rows"] for part in exec_res),
            "sum": sum(part["sum"] for part in exec_res),
            "count": sum(part["count"] for part in exec_res),
        }
        return "show_stats"


class CrashingParquetNode(ParquetNode):
    """A ParquetNode whose worker, on range ``crash_index``, writes half of the part to the hidden
    temporary name (as a real interrupted write would) and then dies with ``os._exit``."""

    def __init__(self, path: str, out_dir: str, crash_index: int, **options: Any) -> None:
        super().__init__(path, out_dir, **options)
        self.crash_index = crash_index

    def exec(self, table: pa.Table) -> tuple[str, int]:
        rng = self.current_range
        assert rng is not None
        if rng.index == self.crash_index:
            final = self.part_dir / PART.format(index=rng.index)
            temporary = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            data = sink.getvalue().to_pybytes()
            with open(temporary, "wb") as handle:
                handle.write(data[: len(data) // 2])
            os._exit(3)
        return super().exec(table)


class FailingParquetNode(ParquetNode):
    """A ParquetNode whose range ``fail_index`` fails (after ``fail_after`` s) while every other
    range takes ``delay`` seconds before it writes: a failure with writes still in flight. With
    ``marker_dir``, each other range leaves ``INDEX-PID.started`` there as it starts and
    ``INDEX-PID.ended`` once it is done (written, or failed), so a test can tell when every
    write under way has ended (``writes_in_flight``)."""

    def __init__(
        self,
        path: str,
        out_dir: str,
        fail_index: int,
        fail_after: float,
        delay: float,
        marker_dir: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(path, out_dir, **options)
        self.fail_index = fail_index
        self.fail_after = fail_after
        self.delay = delay
        self.marker_dir = marker_dir

    def exec(self, table: pa.Table) -> tuple[str, int]:
        rng = self.current_range
        assert rng is not None
        if rng.index == self.fail_index:
            time.sleep(self.fail_after)
            raise OSError(28, "No space left on device")
        mark = Path(self.marker_dir or os.devnull) / f"{rng.index}-{os.getpid()}"
        if self.marker_dir:
            mark.with_suffix(".started").touch()
        try:
            time.sleep(self.delay)
            return super().exec(table)
        finally:
            if self.marker_dir:
                mark.with_suffix(".ended").touch()


def writes_in_flight(marker_dir: Path) -> list[str]:
    """The ranges of a FailingParquetNode that started and have not ended, in a process that
    is still running (a killed worker writes nothing more)."""
    in_flight = []
    for started in marker_dir.glob("*.started"):
        pid = int(started.stem.split("-")[1])
        if not started.with_suffix(".ended").exists() and _running(pid):
            in_flight.append(started.stem)
    return in_flight


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False  # gone


# --- data ------------------------------------------------------------------------------------


def nulls_sales(path: Path, rows: int = 3000, seed: int = 5) -> Path:
    """A sales-like file with empty ``amount`` and ``qty`` cells and quoted notes."""
    rng = random.Random(seed)
    regions = ["North", "South", "East", "West"]
    lines: list[list[Any]] = [["order_id", "region", "qty", "amount", "note"]]
    for order_id in range(1, rows + 1):
        amount = "" if rng.random() < 0.15 else f"{rng.randint(100, 99_999) / 100:.2f}"
        qty = "" if rng.random() < 0.1 else rng.randint(1, 12)
        note = rng.choice(["", "gift wrap, please", 'said "ASAP"', "two\nlines"])
        lines.append([order_id, rng.choice(regions), qty, amount, note])
    return write_bytes(path, csv_text(lines))


def pandas_stats(path: Path, sums: Sequence[str], group_by: str | None = None) -> dict[str, Any]:
    """rows and per-column sum/count/mean/min/max (and per group), by plain pandas."""
    frame = pd.read_csv(path)

    def columns(part: pd.DataFrame) -> dict[str, Any]:
        out = {}
        for name in sums:
            values = part[name].dropna()
            out[name] = {
                "sum": values.sum(),
                "count": len(values),
                "mean": values.mean() if len(values) else None,
                "min": values.min() if len(values) else None,
                "max": values.max() if len(values) else None,
            }
        return out

    result: dict[str, Any] = {"rows": len(frame), "columns": columns(frame)}
    if group_by is not None:
        result["groups"] = {
            key: {"rows": len(part), "columns": columns(part)}
            for key, part in frame.groupby(group_by, dropna=False)
        }
    return result


def run_script(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``script`` run in a fresh Python with ``args`` (and ``env``, else this one's), which must
    exit 0: its output, as text."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def script_says(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> Any:
    """What ``script``, run as ``run_script`` runs it, prints last, as JSON."""
    done = run_script(script, *args, env=env, timeout=timeout, cwd=cwd)
    return json.loads(done.stdout.splitlines()[-1])


def faults_in_child(script: str, *args: str, trim: str | None = None, timeout: float = 120) -> int:
    """The page-fault count that ``script``, run with ``args`` in a fresh Python, prints last:
    with glibc's malloc thresholds as they come, or with ``MALLOC_TRIM_THRESHOLD_=trim`` (as
    Dask sets it for its processes: glibc's mmap threshold then stays at 128 KiB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if trim is not None:
        env["MALLOC_TRIM_THRESHOLD_"] = trim
    return int(script_says(script, *args, env=env, timeout=timeout, cwd=ROOT))
