"""Hostile CSV input is bounded: a record longer than ``max_record_bytes`` is an error naming its
line, found without reading the record into memory (at plan time when it straddles a block,
at parse time when it sits inside one)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from csv_helpers import RowsNode, write_bytes

from batchcore.processors.cli import main
from batchcore.processors.csv.split import long_record
from batchcore.processors.errors import CsvFormatError

# Over twice the 4 MiB default: longer than a range may stretch, and than pyarrow's two blocks
# (a record a little over the limit inside one range may still parse: memory is bounded anyway)
LONG = 9 << 20


def long_record_file(tmp_path: Path, length: int = LONG) -> Path:
    """1000 short rows, then on line 1002 a quoted field of ``length`` bytes holding newlines,
    then 1000 short rows."""
    field = ("y" * 99 + "\n") * (length // 100)
    rows = [f"{i},x\n" for i in range(1000)]
    text = "a,b\n" + "".join(rows) + f'5,"{field}"\n' + "".join(rows)
    return write_bytes(tmp_path / "long.csv", text)


@pytest.mark.parametrize("chunk_bytes", [64 << 10, 16 << 20], ids=["straddles", "inside"])
def test_a_record_over_the_limit_is_a_located_error(
    tmp_path: Path, backend: str, chunk_bytes: int
) -> None:
    path = long_record_file(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    node = RowsNode(
        str(path), marker_dir=str(marks), chunk_bytes=chunk_bytes, backend=backend, workers=2
    )
    with pytest.raises(CsvFormatError) as caught:
        node.run({})
    assert caught.value.line == 1002
    assert "max_record_bytes=4,194,304" in str(caught.value)
    if chunk_bytes < LONG:
        assert not list(marks.iterdir())  # found while planning: no range was parsed


@pytest.mark.parametrize("chunk_bytes", [64 << 10, 16 << 20], ids=["straddles", "inside"])
def test_a_longer_limit_reads_the_record_whole(
    tmp_path: Path, backend: str, chunk_bytes: int
) -> None:
    path = long_record_file(tmp_path)
    shared: dict[str, Any] = {}
    RowsNode(
        str(path), chunk_bytes=chunk_bytes, max_record_bytes=10 << 20, backend=backend, workers=2
    ).run(shared)
    rows = shared["rows"]
    assert len(rows) == 2001
    assert rows[1000][0] == 5 and len(rows[1000][1]) == (LONG // 100) * 100


def test_a_header_over_the_limit_is_an_error_on_line_1(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "h.csv", "a" * (1 << 20) + "\n1\n")
    with pytest.raises(CsvFormatError) as caught:
        RowsNode(str(path), max_record_bytes=1000).run({})
    assert caught.value.line == 1 and "max_record_bytes=1,000" in str(caught.value)


def test_a_head_record_over_the_limit_is_an_error_on_its_line(tmp_path: Path) -> None:
    # the first data record is longer than the inference head (1 MiB) and than the limit
    path = write_bytes(tmp_path / "d.csv", 'a,b\n1,"' + "z" * (2 << 20) + '"\n2,x\n')
    with pytest.raises(CsvFormatError) as caught:
        RowsNode(str(path), max_record_bytes=1 << 20).run({})
    assert caught.value.line == 2


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_record_bytes"):
        RowsNode("x.csv", max_record_bytes=0)


def test_long_record_finds_the_first_record_over_the_limit() -> None:
    data = b'1,x\n2,"a\nb\nc"\n3,yyyyyyyyy\n'
    assert long_record(data, ord('"'), 100) is None
    assert long_record(data, ord('"'), 9) == 4  # the quoted record: its newlines are inside
    assert long_record(data, None, 9) == 14  # without quoting, the long one is the last line


def test_the_cli_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = long_record_file(tmp_path)
    assert main(["csv", "stats", str(path), "--sum", "a", "--chunk-bytes", "64KiB"]) == 1
    assert f"{path}:1002: the record starting here is longer" in capsys.readouterr().err
    argv = ["csv", "stats", str(path), "--sum", "a", "--max-record-bytes", "10MiB", "--json"]
    assert main(argv) == 0
    assert '"rows": 2001' in capsys.readouterr().out


def test_memory_stays_bounded_on_a_huge_record(tmp_path: Path) -> None:
    """A 64 MiB record: the error comes from a bounded search, never from reading the record
    (which is what a range stretched over it would do)."""
    path = tmp_path / "huge.csv"
    with path.open("w") as handle:
        handle.write("a,b\n" + "1,x\n" * 1000 + '2,"')
        chunk = "y" * (1 << 20)
        for _ in range(64):
            handle.write(chunk)
        handle.write('"\n3,x\n')
    small = write_bytes(tmp_path / "small.csv", "a,b\n" + "1,x\n" * 1000)
    program = textwrap.dedent(
        f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from csv_helpers import RowsNode
        from batchcore.processors.errors import CsvFormatError
        RowsNode({str(small)!r}, chunk_bytes=1 << 20).run({{}})  # imports and buffers, warm
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            RowsNode({str(path)!r}, chunk_bytes=1 << 20).run({{}})
        except CsvFormatError as exc:
            print(exc.line, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    line, grew_mib = map(int, done.stdout.split())
    assert line == 1002
    assert grew_mib < 24, f"peak RSS grew by {grew_mib} MiB reading past a 64 MiB record"
