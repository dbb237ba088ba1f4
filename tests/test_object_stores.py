"""CSV and image jobs on gs:// and az:// against real emulators on loopback (``storeservers.py``):
gcp-storage-emulator (PyPI) through gcsfs, and Azurite (npm, installed on first use) through
adlfs. Each test runs once per store, on a fresh bucket (container): csv stats of an object, a
prefix of parts and a glob equal the local file; ``to-parquet`` to the store writes the dataset
and ``_SUCCESS``; images read from a prefix and written to one equal local runs; a missing
object or bucket is named. (``test_csv_remote.py`` and friends do all this and more on S3.)"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import storeservers
from csv_helpers import SALES
from image_helpers import SAMPLES, files_under, pixels
from PIL import Image

from batchcore.processors.cli import main
from batchcore.processors.csv.jobs import csv_stats, csv_to_parquet
from batchcore.processors.images.jobs import run_images
from batchcore.processors.outputs import dataset_parts
from batchcore.processors.storage import filesystem
from batchcore.processors.storage_errors import StorageNotFoundError

HEADER, *ROWS = SALES.read_bytes().splitlines(keepends=True)
REFERENCE = csv_stats(SALES, ["amount", "qty"], group_by="region")
FILTERS = ["grayscale", "thumbnail:size=16"]
# Where npm installs Azurite once per machine (CI: on the first run).
AZURITE_CACHE = Path(
    os.environ.get("BATCHCORE_TEST_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "batchcore-tests"
)


@dataclass
class Store:
    """One emulated store: its protocol, the storage options that reach it, a fresh bucket."""

    protocol: str
    options: dict[str, Any]
    bucket: str

    def url(self, key: str = "") -> str:
        return f"{self.protocol}://{self.bucket}/{key}"

    def fs(self) -> Any:
        fs = filesystem(self.url(), self.options)
        fs.invalidate_cache()
        return fs

    def put(self, key: str, data: bytes) -> str:
        self.fs().pipe_file(f"{self.bucket}/{key}", data)
        return self.url(key)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``prefix``: its key relative to ``prefix``, and its bytes."""
        fs = self.fs()
        root = f"{self.bucket}/{prefix}".rstrip("/")
        return {path[len(root) + 1 :]: fs.cat_file(path) for path in fs.find(root)}


def _gcs() -> Iterator[dict[str, Any]]:
    pytest.importorskip("gcsfs")
    pytest.importorskip("gcp_storage_emulator", reason="needs the test extra's emulator")
    server = storeservers.start_gcs()
    try:
        options = {"endpoint_url": server.url, "token": "anon", "project": "batchcore-test"}
        # gcsfs starts a thread of its own for the whole program with its first file (it
        # closes files the garbage collector finds open): started here, it is no test's leak.
        fs = filesystem("gs://", options)
        fs.mkdir("warm-up")
        fs.pipe_file("warm-up/x", b"x")
        with fs.open("warm-up/x", "rb") as handle:
            handle.read()
        fs.rm("warm-up", recursive=True)
        yield options
    finally:
        server.stop()


def _azure() -> Iterator[dict[str, Any]]:
    pytest.importorskip("adlfs")
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("Azurite (the Azure Storage emulator) needs node and npm on this machine")
    program = storeservers.install_azurite(AZURITE_CACHE / storeservers.AZURITE)
    server = storeservers.start_azurite(program)
    try:
        yield {"connection_string": storeservers.azure_connection_string(server)}
    finally:
        server.stop()


@pytest.fixture(scope="session", params=["gs", "az"])
def store_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """One emulator at a time (pytest groups the tests by it): its protocol and the storage
    options that reach it. Session-scoped, so it starts before a test's leak check looks."""
    protocol = str(request.param)
    for options in _gcs() if protocol == "gs" else _azure():
        yield protocol, options


@pytest.fixture
def store(store_server: tuple[str, dict[str, Any]], no_leaks: None) -> Iterator[Store]:
    """A fresh bucket (container) on the emulator; removed after the test."""
    protocol, options = store_server
    store = Store(protocol, dict(options), f"test-{uuid.uuid4().hex[:16]}")
    fs = store.fs()
    fs.mkdir(store.bucket)
    try:
        yield store
    finally:
        fs.invalidate_cache()
        if fs.exists(store.bucket):
            fs.rm(store.bucket, recursive=True)


def same_stats(got: Any) -> None:
    assert got.rows == REFERENCE.rows
    for name, column in REFERENCE.columns.items():
        assert got.columns[name].as_dict() == pytest.approx(column.as_dict())
    for key, group in REFERENCE.groups.items():
        assert got.groups[key].rows == group.rows


def put_sales(store: Store) -> None:
    store.put("sales.csv", SALES.read_bytes())
    for number, rows in enumerate((ROWS[:1000], ROWS[1000:3333], ROWS[3333:])):
        store.put(f"parts/p{number}.csv", HEADER + b"".join(rows))
    store.put("parts/_SUCCESS", b"")


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_stats_of_an_object_a_prefix_and_a_glob_equal_the_local_file(
    backend: str, store: Store
) -> None:
    put_sales(store)
    for inputs in (store.url("sales.csv"), store.url("parts/"), store.url("parts/p*.csv")):
        got = csv_stats(
            inputs,
            ["amount", "qty"],
            group_by="region",
            backend=backend,
            workers=2,
            chunk_bytes=40_000,
            storage_options=store.options,
        )
        same_stats(got)
    assert got.files == [store.url(f"parts/p{i}.csv") for i in range(3)]


@pytest.mark.parametrize("backend_name", ["sequential", "process"])
def test_csv_to_parquet_to_the_store(backend_name: str, store: Store, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(SALES.read_bytes())
    url = store.url("ds/")
    result = csv_to_parquet(
        source, url, backend=backend_name, chunk_bytes=40_000, storage_options=store.options
    )
    assert result["rows"] == REFERENCE.rows
    written = store.objects("ds/")
    parts = dataset_parts(url, store.options)
    assert sorted(written) == sorted(["_SUCCESS", *(p.rsplit("/", 1)[1] for p in parts)])
    tables = [pq.read_table(io.BytesIO(written[p.rsplit("/", 1)[1]])) for p in parts]
    assert sum(table.num_rows for table in tables) == REFERENCE.rows
    local = csv_to_parquet(source, tmp_path / "local", chunk_bytes=40_000)
    assert local["rows"] == result["rows"]


def test_a_missing_object_or_bucket_is_named(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store.url("nope.csv")
    with pytest.raises(StorageNotFoundError) as info:
        csv_stats(url, ["amount"], storage_options=store.options)
    assert str(info.value) == f"{url}: no such key"
    flags = [f"--storage-option={k}={v}" for k, v in store.options.items()]
    assert main(["csv", "stats", url, "--sum", "amount", *flags]) == 2
    err = capsys.readouterr().err
    assert f"{url}: no such key" in err
    assert storeservers.AZURE_KEY not in err
    other = f"{store.protocol}://no-such-bucket-{uuid.uuid4().hex[:8]}/sales.csv"
    with pytest.raises(StorageNotFoundError) as info:
        csv_stats(other, ["amount"], storage_options=store.options)
    assert str(info.value).startswith(other.rsplit("/", 1)[0])


# --- images -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert not run_images(SAMPLES, out, FILTERS, backend="sequential").failed
    return out


def decoded(data: bytes) -> np.ndarray[Any, Any]:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@pytest.mark.parametrize("backend_name", ["sequential", "process"])
def test_images_from_a_prefix_to_a_prefix_equal_local_outputs(
    backend_name: str, store: Store, reference: Path
) -> None:
    for path in sorted(SAMPLES.rglob("*")):
        if path.is_file():
            store.put(f"photos/{path.relative_to(SAMPLES).as_posix()}", path.read_bytes())
    summary = run_images(
        store.url("photos/"),
        store.url("out"),
        FILTERS,
        backend=backend_name,
        storage_options=store.options,
    )
    assert not summary.failed and summary.ok == len(files_under(reference))
    written = store.objects("out")
    assert sorted(written) == files_under(reference)  # nested/ kept
    for name, data in written.items():
        assert np.array_equal(decoded(data), pixels(reference / name)), name
