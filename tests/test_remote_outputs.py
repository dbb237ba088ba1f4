"""``csv to-parquet`` to a URL, against a real S3-compatible server (moto's, on loopback): the
dataset equals the local one on every backend, ``_SUCCESS`` is written last and names the parts,
a failed run leaves no ``_SUCCESS`` and no parts, ``--overwrite`` keeps the previous dataset
readable (through ``_SUCCESS``) until the new one is complete, and a non-empty prefix is refused
without it."""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from s3server import FAKE_SECRET

from batchcore.processors import outputs
from batchcore.processors.cli import main
from batchcore.processors.csv.jobs import csv_to_parquet
from batchcore.processors.errors import CsvFormatError
from batchcore.processors.outputs import dataset_parts
from batchcore.processors.storage import filesystem

HEADER = b"id,region,amount\n"
SECRET = FAKE_SECRET  # what s3_storage_options hold


def rows(count: int, start: int = 0) -> bytes:
    return b"".join(
        f"{i},{'north' if i % 3 else 'south'},{i * 1.5}\n".encode()
        for i in range(start, start + count)
    )


@pytest.fixture
def s3(s3_bucket: str, s3_storage_options: dict[str, Any]) -> dict[str, Any]:
    """The session's server (``tests/s3server.py``): its storage options and a fresh bucket."""
    return {"options": s3_storage_options, "bucket": s3_bucket}


def fs_of(s3: dict[str, Any]) -> Any:
    return filesystem("s3://", s3["options"])


def listing(s3: dict[str, Any], prefix: str) -> list[str]:
    fs = fs_of(s3)
    fs.invalidate_cache()
    try:
        return sorted(path.rsplit("/", 1)[-1] for path in fs.find(prefix))
    except FileNotFoundError:
        return []


def read_dataset(s3: dict[str, Any], url: str) -> Any:
    """The dataset ``url``'s ``_SUCCESS`` names, read back through s3fs."""
    fs = fs_of(s3)
    fs.invalidate_cache()
    parts = [part.split("://", 1)[1] for part in dataset_parts(url, s3["options"])]
    return pq.read_table(parts, filesystem=fs) if parts else None


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.csv"
    path.write_bytes(HEADER + rows(3000))
    return path


# --- the dataset --------------------------------------------------------------------------------


def test_to_parquet_to_s3_equals_local(
    backend: str, s3: dict[str, Any], csv_file: Path, tmp_path: Path
) -> None:
    url = f"s3://{s3['bucket']}/ds/"
    local = csv_to_parquet(csv_file, tmp_path / "local", backend="sequential", chunk_bytes=8_000)
    remote = csv_to_parquet(
        csv_file, url, backend=backend, chunk_bytes=8_000, storage_options=s3["options"]
    )
    assert remote["rows"] == local["rows"] == 3000
    assert remote["parts"] == local["parts"] > 3
    expected = pq.read_table(tmp_path / "local")
    # a listing reader (pyarrow's dataset discovery skips _SUCCESS) sees the same table
    fs = fs_of(s3)
    fs.invalidate_cache()
    assert pq.read_table(f"{s3['bucket']}/ds", filesystem=fs).equals(expected)
    assert read_dataset(s3, url).equals(expected)
    success = json.loads(fs.cat_file(f"{s3['bucket']}/ds/_SUCCESS"))
    names = listing(s3, f"{s3['bucket']}/ds")
    assert sorted(success["files"]) == [name for name in names if name != "_SUCCESS"]
    assert success["rows"] == 3000 and success["parts"] == len(success["files"])
    assert all(success["run"] in name for name in success["files"])


def test_a_failed_run_to_s3_resumes_with_its_parts_and_leaves_no_stray_object(
    s3: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHCORE_CACHE_DIR", str(tmp_path / "cache"))
    good, bad = tmp_path / "a.csv", tmp_path / "b.csv"
    good.write_bytes(HEADER + rows(3000))
    bad.write_bytes(HEADER + b"1,north\n")  # a ragged row: the run fails at the second file
    url = f"s3://{s3['bucket']}/ds"
    run = functools.partial(
        csv_to_parquet, [good, bad], url, resume=True, storage_options=s3["options"]
    )
    with pytest.raises(CsvFormatError, match=r"b\.csv"):
        run(chunk_bytes=8_000, backend="sequential")
    kept = listing(s3, f"{s3['bucket']}/ds")
    assert len(kept) > 3 and "_SUCCESS" not in kept  # the failure kept its parts, for resume
    assert list((tmp_path / "cache" / "checkpoints").glob("csv-to-parquet-*.sqlite"))
    bad.write_bytes(HEADER + rows(10, start=3000))
    result = run(chunk_bytes=8_000, backend="thread")
    assert result["resumed"] == len(kept) and result["rows"] == 3010
    table = read_dataset(s3, url)
    assert sorted(table["id"].to_pylist()) == list(range(3010))
    success = json.loads(fs_of(s3).cat_file(f"{s3['bucket']}/ds/_SUCCESS"))
    assert sorted([*success["files"], "_SUCCESS"]) == listing(s3, f"{s3['bucket']}/ds")
    assert not list((tmp_path / "cache" / "checkpoints").glob("*.sqlite*"))  # done: removed
    assert run(chunk_bytes=8_000)["complete"] is True  # a finished dataset: nothing is run
    # resumed with other ranges: every part runs again, and the old ones are deleted
    fs_of(s3).rm_file(f"{s3['bucket']}/ds/_SUCCESS")
    again = run(chunk_bytes=50_000)
    success = json.loads(fs_of(s3).cat_file(f"{s3['bucket']}/ds/_SUCCESS"))
    assert again["resumed"] == 0 and again["parts"] == len(success["files"]) < result["parts"]
    assert sorted([*success["files"], "_SUCCESS"]) == listing(s3, f"{s3['bucket']}/ds")


def test_success_is_the_last_object_written(
    s3: dict[str, Any], csv_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    puts: list[str] = []
    real_put = outputs.put_object

    def recording_put(url: str, data: bytes, options: Any = None) -> None:
        real_put(url, data, options)
        puts.append(url.rsplit("/", 1)[-1])

    monkeypatch.setattr(outputs, "put_object", recording_put)
    url = f"s3://{s3['bucket']}/ds"
    result = csv_to_parquet(
        csv_file, url, backend="thread", chunk_bytes=8_000, storage_options=s3["options"]
    )
    assert puts[-1] == "_SUCCESS"
    assert len(puts) == result["parts"] + 1 and "_SUCCESS" not in puts[:-1]


@pytest.mark.parametrize("backend_name", ["sequential", "process"])
def test_a_failed_run_leaves_no_success_and_no_parts(
    backend_name: str, s3: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(HEADER + rows(2500) + b"1,2,3,4,5\n" + rows(100, 2500))  # a ragged row late
    url = f"s3://{s3['bucket']}/ds"
    with pytest.raises(Exception, match=r"bad\.csv"):
        csv_to_parquet(
            bad, url, backend=backend_name, workers=2, chunk_bytes=4_000,
            storage_options=s3["options"],
        )  # fmt: skip
    assert listing(s3, f"{s3['bucket']}/ds") == []


# --- overwrite ----------------------------------------------------------------------------------


def test_overwrite_keeps_the_old_dataset_readable_until_the_new_success(
    s3: dict[str, Any], csv_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{s3['bucket']}/ds"
    csv_to_parquet(csv_file, url, chunk_bytes=8_000, storage_options=s3["options"])
    old = read_dataset(s3, url)
    old_names = set(listing(s3, f"{s3['bucket']}/ds")) - {"_SUCCESS"}
    newer = tmp_path / "newer.csv"
    newer.write_bytes(HEADER + rows(1000, 50_000))
    seen: list[int] = []
    real_put = outputs.put_object

    def checking_put(target: str, data: bytes, options: Any = None) -> None:
        assert read_dataset(s3, url).equals(old)  # before every PUT, _SUCCESS included
        seen.append(1)
        real_put(target, data, options)

    monkeypatch.setattr(outputs, "put_object", checking_put)
    result = csv_to_parquet(
        newer, url, overwrite=True, backend="sequential", chunk_bytes=8_000,
        storage_options=s3["options"],
    )  # fmt: skip
    monkeypatch.undo()
    assert len(seen) == result["parts"] + 1
    new = read_dataset(s3, url)
    assert new.num_rows == 1000 and new["id"].to_pylist() == list(range(50_000, 51_000))
    names = set(listing(s3, f"{s3['bucket']}/ds")) - {"_SUCCESS"}
    assert names.isdisjoint(old_names)  # only the new run's parts remain
    fs = fs_of(s3)
    assert pq.read_table(f"{s3['bucket']}/ds", filesystem=fs).num_rows == 1000


def test_a_failed_overwrite_leaves_the_old_dataset(
    s3: dict[str, Any], csv_file: Path, tmp_path: Path
) -> None:
    url = f"s3://{s3['bucket']}/ds"
    csv_to_parquet(csv_file, url, chunk_bytes=8_000, storage_options=s3["options"])
    before = listing(s3, f"{s3['bucket']}/ds")
    old = read_dataset(s3, url)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(HEADER + rows(2500) + b"1,2\n")
    with pytest.raises(Exception, match=r"bad\.csv"):
        csv_to_parquet(bad, url, overwrite=True, chunk_bytes=4_000, storage_options=s3["options"])
    assert listing(s3, f"{s3['bucket']}/ds") == before
    assert read_dataset(s3, url).equals(old)


def test_a_non_empty_prefix_is_refused_without_overwrite(
    s3: dict[str, Any], csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"s3://{s3['bucket']}/ds"
    options = [f"--storage-option={k}={v}" for k, v in s3["options"].items()]
    assert main(["csv", "to-parquet", str(csv_file), url, "--chunk-bytes", "8000", *options]) == 0
    before = listing(s3, f"{s3['bucket']}/ds")
    capsys.readouterr()
    assert main(["csv", "to-parquet", str(csv_file), url, *options]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and url in err
    assert SECRET not in err
    assert listing(s3, f"{s3['bucket']}/ds") == before
    # an object this job did not write is never deleted by an overwrite
    fs_of(s3).pipe_file(f"{s3['bucket']}/ds/notes.txt", b"mine")
    assert main(["csv", "to-parquet", str(csv_file), url, "--overwrite", *options]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert listing(s3, f"{s3['bucket']}/ds") == sorted([*before, "notes.txt"])


@pytest.mark.parametrize("backend_name", ["sequential", "thread"])
def test_any_fsspec_store_takes_a_dataset(backend_name: str, csv_file: Path) -> None:
    fs = filesystem("memory://")
    url = f"memory://ds-{uuid.uuid4().hex[:8]}"
    try:
        first = csv_to_parquet(csv_file, url, backend=backend_name, chunk_bytes=8_000)
        second = csv_to_parquet(
            csv_file, url, overwrite=True, backend=backend_name, chunk_bytes=8_000
        )
        parts = dataset_parts(url)
        assert len(parts) == second["parts"] == first["parts"]
        table = pq.read_table([part.split("://", 1)[1] for part in parts], filesystem=fs)
        assert table.num_rows == 3000
        assert len(fs.find(url)) == len(parts) + 1  # the first run's parts are gone
    finally:
        fs.rm(url, recursive=True)


def test_a_missing_bucket_is_refused_before_any_work(
    s3: dict[str, Any], csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    options = [f"--storage-option={k}={v}" for k, v in s3["options"].items()]
    code = main(["csv", "to-parquet", str(csv_file), f"s3://{bucket}/ds", *options])
    err = capsys.readouterr().err
    assert code == 2
    assert f"s3://{bucket}: no such bucket" in err and SECRET not in err
