"""Many inputs read as one: several paths, globs, folders of parts and ``memory://`` URLs give
the same results as the one file they were cut from; a part that does not fit is named."""

from __future__ import annotations

import itertools
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from csv_helpers import SALES
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcore.processors.cli import main
from batchcore.processors.csv.jobs import csv_stats, csv_to_parquet
from batchcore.processors.csv.node import CSVBatchNode
from batchcore.processors.errors import CsvFormatError, MissingExtraError
from batchcore.processors.storage import expand, parse_storage_option, protect_options

HEADER, *ROWS = SALES.read_bytes().splitlines(keepends=True)
REFERENCE = csv_stats(SALES, ["amount", "qty"], group_by="region")


def cut(
    folder: Path, cuts: list[int], name: str = "part-{}.csv", rows: list[bytes] = ROWS
) -> list[Path]:
    """``data/sales.csv`` (or its first ``rows``) cut into parts at the given row numbers, each
    with the header."""
    folder.mkdir(parents=True, exist_ok=True)
    edges = [0, *sorted(set(cuts)), len(rows)]
    paths = []
    for number, (start, end) in enumerate(itertools.pairwise(edges)):
        path = folder / name.format(f"{number:03d}")
        path.write_bytes(HEADER + b"".join(rows[start:end]))
        paths.append(path)
    return paths


def same_stats(got: Any, reference: Any = REFERENCE) -> None:
    assert got.rows == reference.rows
    for name, column in reference.columns.items():
        assert got.columns[name].as_dict() == pytest.approx(column.as_dict())
    assert set(got.groups) == set(reference.groups)
    for key, group in reference.groups.items():
        assert got.groups[key].rows == group.rows
        for name, column in group.columns.items():
            assert got.groups[key].columns[name].as_dict() == pytest.approx(column.as_dict())


# The file the property cuts into parts: data/sales.csv's first 1,500 rows (130 kB), so an
# example's 9,000-byte chunks are 15 ranges, not 48 (each range costs about a millisecond); a
# part over 9,000 bytes is still read as several ranges, every region still occurs.
PARTS_ROWS = ROWS[:1500]
# Examples per backend: on Dask each range of an example is a task; the others take the
# profile's 25. Where the parts are cut is planned in the parent, the same for every backend.
PARTS_EXAMPLES = {"dask": 8}


@pytest.fixture(scope="module")
def parts_reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """csv_stats of the ``PARTS_ROWS`` file, whole."""
    whole = tmp_path_factory.mktemp("whole") / "sales-head.csv"
    whole.write_bytes(HEADER + b"".join(PARTS_ROWS))
    return csv_stats(whole, ["amount", "qty"], group_by="region")


def test_parts_read_as_one_file_on_every_backend(
    backend: str, tmp_path_factory: pytest.TempPathFactory, parts_reference: Any
) -> None:
    assert parts_reference.rows == 1500 and len(parts_reference.groups) == len(REFERENCE.groups)

    @settings(max_examples=PARTS_EXAMPLES.get(backend, settings().max_examples))
    @given(
        cuts=st.lists(st.integers(0, len(PARTS_ROWS)), max_size=6),
        chunk=st.sampled_from([9_000, 1 << 20]),
    )
    def check(cuts: list[int], chunk: int) -> None:
        folder = tmp_path_factory.mktemp("parts")
        paths = cut(folder, cuts, rows=PARTS_ROWS)
        for inputs in ([str(p) for p in paths], str(folder / "part-*.csv"), str(folder)):
            got = csv_stats(
                inputs, ["amount", "qty"], group_by="region", backend=backend, chunk_bytes=chunk
            )
            same_stats(got, parts_reference)
            assert got.files == [str(p) for p in paths]

    check()


def test_ranges_are_spread_over_all_files_in_one_batch(tmp_path: Path) -> None:
    paths = cut(tmp_path, [1000, 2500, 4000])
    seen: list[tuple[int, int]] = []

    class Files(CSVBatchNode):
        def exec(self, table: Any) -> tuple[int, int]:
            rng = self.current_range
            assert rng is not None and self.current_file == str(paths[rng.file])
            return rng.file, rng.index

        def post(self, shared: Any, prep_res: Any, exec_res: list[tuple[int, int]]) -> None:
            seen.extend(exec_res)

    Files([str(p) for p in paths], chunk_bytes=30_000, backend="thread").run({})
    assert [index for _, index in seen] == list(range(len(seen)))  # one numbering, in order
    assert sorted({file for file, _ in seen}) == [0, 1, 2, 3]
    assert len(seen) > 4  # the big parts are cut into several ranges


def test_a_part_with_another_header_is_named(tmp_path: Path) -> None:
    paths = cut(tmp_path, [100, 200])
    text = paths[2].read_bytes().replace(b"amount", b"amt", 1)
    paths[2].write_bytes(text)
    with pytest.raises(CsvFormatError) as info:
        csv_stats(tmp_path, ["amount"])
    message = str(info.value)
    assert info.value.path == str(paths[2]) and info.value.line == 1
    assert "'amt' here but 'amount'" in message and str(paths[0]) in message
    paths[2].write_bytes(HEADER.rstrip(b"\n") + b",extra\n")
    with pytest.raises(CsvFormatError, match=r"has 8 columns but .* has 7"):
        csv_stats(tmp_path, ["amount"])


def test_a_bad_row_in_a_later_part_names_that_part_and_its_line(
    parallel_backend: str, tmp_path: Path
) -> None:
    paths = cut(tmp_path, [1000, 3000])
    lines = paths[1].read_bytes().splitlines(keepends=True)
    lines[7] = b"ragged\n"
    paths[1].write_bytes(b"".join(lines))
    with pytest.raises(CsvFormatError) as info:
        csv_stats(tmp_path, ["amount"], backend=parallel_backend, chunk_bytes=20_000)
    assert (info.value.path, info.value.line) == (str(paths[1]), 8)
    got = csv_stats(tmp_path, ["amount"], bad_rows="skip", backend=parallel_backend)
    assert got.skipped_lines == [(str(paths[1]), 8)]
    assert got.rows == len(ROWS) - 1


def test_an_unterminated_quote_in_a_later_part_is_named(tmp_path: Path) -> None:
    paths = cut(tmp_path, [10])
    paths[1].write_bytes(paths[1].read_bytes() + b'"open,1\n')
    with pytest.raises(CsvFormatError, match="unterminated quote") as info:
        csv_stats(tmp_path, ["amount"])
    assert info.value.path == str(paths[1])


def test_folders_skip_hidden_and_marker_files_and_recurse(tmp_path: Path) -> None:
    paths = cut(tmp_path / "day=1", [2000])
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".part-000.csv.tmp").write_text("garbage")
    (tmp_path / "_temporary").mkdir()
    (tmp_path / "_temporary" / "x.csv").write_text("garbage")
    assert [s.url for s in expand(tmp_path)] == [str(p) for p in paths]
    same_stats(csv_stats(tmp_path, ["amount", "qty"], group_by="region"))


def test_what_names_nothing_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no file matches") as info:
        expand(str(tmp_path / "*.csv"))
    assert info.value.filename == str(tmp_path / "*.csv")
    with pytest.raises(FileNotFoundError, match="no files in it"):
        expand(tmp_path)
    with pytest.raises(FileNotFoundError):
        expand(tmp_path / "missing.csv")


def test_relative_paths_are_made_absolute_before_workers_see_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut(tmp_path / "data", [])
    monkeypatch.chdir(tmp_path)
    sources = expand("data/part-000.csv")
    assert sources[0].url == str(tmp_path / "data" / "part-000.csv")
    got = csv_stats("data/*.csv", ["amount", "qty"], group_by="region", backend="process")
    same_stats(got)


def test_to_parquet_from_parts(parallel_backend: str, tmp_path: Path) -> None:
    paths = cut(tmp_path / "in", [1500, 1501, 4000])
    result = csv_to_parquet(
        tmp_path / "in", tmp_path / "out", backend=parallel_backend, chunk_bytes=40_000
    )
    assert result["rows"] == len(ROWS) and result["parts"] >= len(paths)
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == len(ROWS)
    assert sorted(table["order_id"].to_pylist()) == sorted(
        pq.read_table(tmp_path / "out").column("order_id").to_pylist()
    )


def test_cli_takes_several_paths_and_globs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = cut(tmp_path, [2500])
    argv = ["csv", "stats", str(paths[0]), str(tmp_path / "part-001*"), "--sum", "amount"]
    assert main([*argv, "--json", "--backend", "thread"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == REFERENCE.rows
    assert report["files"] == [str(p) for p in paths]
    assert report["sum"]["amount"] == pytest.approx(REFERENCE.columns["amount"].sum)
    out = tmp_path / "ds"
    assert main(["csv", "to-parquet", str(paths[0]), str(paths[1]), str(out)]) == 0
    assert pq.read_table(out).num_rows == REFERENCE.rows
    assert main(["csv", "stats", str(tmp_path / "nothing-*.csv"), "--sum", "amount"]) == 2
    assert "no file matches this pattern" in capsys.readouterr().err


# --- URLs in this process: memory:// -------------------------------------------------------------

fsspec = pytest.importorskip("fsspec")


@pytest.fixture
def memory_parts() -> Any:
    fs = fsspec.filesystem("memory")
    root = f"/parts-{os.getpid()}-{id(fs)}"
    for number, rows in enumerate((ROWS[:1234], ROWS[1234:])):
        fs.pipe(f"{root}/p{number}.csv", HEADER + b"".join(rows))
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


@pytest.mark.parametrize("backend_name", ["sequential", "thread"])
def test_memory_urls_read_as_local_files(memory_parts: str, backend_name: str) -> None:
    for inputs in (
        memory_parts,
        f"{memory_parts}/p*.csv",
        [f"{memory_parts}/p0.csv", f"{memory_parts}/p1.csv"],
    ):
        got = csv_stats(
            inputs, ["amount", "qty"], group_by="region", backend=backend_name, chunk_bytes=9_000
        )
        same_stats(got)
        assert got.files == [
            f"memory://{memory_parts[9:]}/p0.csv",
            f"memory://{memory_parts[9:]}/p1.csv",
        ]


def test_a_missing_url_is_not_found(memory_parts: str) -> None:
    with pytest.raises(FileNotFoundError):
        csv_stats(f"{memory_parts}/nope.csv", ["amount"])


def test_an_unknown_protocol_names_what_to_install(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MissingExtraError, match="nosuchfs"):
        expand("nosuchfs://bucket/key.csv")
    for url, extra, package in (
        ("gs://b/x.csv", "gcs", "gcsfs"),
        ("az://c/x.csv", "azure", "adlfs"),
    ):
        try:
            __import__(package)
        except ImportError:
            with pytest.raises(MissingExtraError, match=rf"batchcore\[{extra}\]"):
                expand(url)
            assert main(["csv", "stats", url, "--sum", "amount"]) == 2
            assert f"{url}: reading" in capsys.readouterr().err


# --- options and secrets ------------------------------------------------------------------------


def test_secret_options_are_masked_and_sealed() -> None:
    options = protect_options(
        {
            "key": "AKIAEXAMPLE",
            "secret": "s3cr3t-value",
            "endpoint_url": "http://127.0.0.1:1",
            "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": "tok-123"},
        }
    )
    node = CSVBatchNode("s3://bucket/key.csv", storage_options=options)
    for text in (repr(options), str(options), json.dumps(options, default=str)):
        for secret in ("AKIAEXAMPLE", "s3cr3t-value", "tok-123"):
            assert secret not in text
    assert "http://127.0.0.1:1" in repr(options) and "eu-west-1" in repr(options)
    blob = pickle.dumps(node)
    for secret in (b"AKIAEXAMPLE", b"s3cr3t-value", b"tok-123"):
        assert secret not in blob
    back = pickle.loads(blob)
    assert back.storage_options["secret"].reveal() == "s3cr3t-value"
    assert back.storage_options["client_kwargs"]["aws_session_token"].reveal() == "tok-123"


def test_storage_option_text_is_parsed_like_json_scalars() -> None:
    assert parse_storage_option("anon=true") == (["anon"], True)
    assert parse_storage_option("client_kwargs.region_name=eu-west-1") == (
        ["client_kwargs", "region_name"],
        "eu-west-1",
    )
    assert parse_storage_option("max_concurrency=8") == (["max_concurrency"], 8)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_storage_option("novalue")
