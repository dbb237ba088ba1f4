"""CSV jobs on files served over HTTPS by a real server on loopback (``storeservers.py``: TLS,
single byte ranges, HEAD, 404): fsspec's ``HTTPFileSystem`` (aiohttp) reads a plain CSV and a
``.csv.gz`` by URL equal to the local file on every backend, through the API and the CLI; a
missing URL names itself; the plain file is read in ranged GETs, none of them the whole file,
and the parent of a process pool reads only the few bytes it needs."""

from __future__ import annotations

import gzip
import json
import ssl
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from csv_helpers import SALES

pytest.importorskip("aiohttp")
pytest.importorskip("fsspec")
pytest.importorskip("cryptography")

import storeservers

from batchcore.processors import storage
from batchcore.processors.cli import main
from batchcore.processors.csv.jobs import csv_stats
from batchcore.processors.errors import MissingExtraError
from batchcore.processors.storage_errors import StorageNotFoundError

HEADER, *ROWS = SALES.read_bytes().splitlines(keepends=True)
REFERENCE = csv_stats(SALES, ["amount", "qty"], group_by="region")
# The server's certificate is self-signed: aiohttp's ``ssl=False`` (a request option fsspec
# passes on) skips its verification; the traffic is TLS all the same.
OPTIONS = {"ssl": False}
FLAGS = ["--storage-option=ssl=false"]


def same_stats(got: Any, times: int = 1) -> None:
    assert got.rows == REFERENCE.rows * times
    for name, column in REFERENCE.columns.items():
        want = column.as_dict()
        have = got.columns[name].as_dict()
        assert have["count"] == want["count"] * times
        assert have["min"] == want["min"] and have["max"] == want["max"]
        assert have["mean"] == pytest.approx(want["mean"])
    for key, group in REFERENCE.groups.items():
        assert got.groups[key].rows == group.rows * times


@pytest.fixture(scope="session")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The session's HTTPS server and the folder it serves: ``sales.csv``, ``sales.csv.gz``
    and ``big.csv`` (12 times the rows, ~5 MB)."""
    root = tmp_path_factory.mktemp("https-root")
    keys = tmp_path_factory.mktemp("https-cert")
    (root / "sales.csv").write_bytes(SALES.read_bytes())
    (root / "sales.csv.gz").write_bytes(gzip.compress(SALES.read_bytes(), compresslevel=1))
    (root / "big.csv").write_bytes(HEADER + b"".join(ROWS) * 12)
    server = storeservers.start_http(root, *storeservers.self_signed(keys))
    try:
        yield {"url": server.url, "root": root, "server": server}
    finally:
        server.stop()


def served(https_server: dict[str, Any], clear: bool = False) -> list[dict[str, Any]]:
    """Every request the server answered since the list was last cleared."""
    context = ssl._create_unverified_context()  # the self-signed certificate
    request = urllib.request.Request(
        f"{https_server['url']}/_requests", method="DELETE" if clear else "GET"
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        entries: list[dict[str, Any]] = json.loads(response.read())
        return entries


@pytest.mark.parametrize("name", ["sales.csv", "sales.csv.gz"])
def test_a_url_equals_the_local_file(backend: str, https_server: dict[str, Any], name: str) -> None:
    url = f"{https_server['url']}/{name}"
    got = csv_stats(
        url,
        ["amount", "qty"],
        group_by="region",
        backend=backend,
        workers=2,
        chunk_bytes=40_000,
        storage_options=OPTIONS,
    )
    same_stats(got)
    assert got.files == [url]


def test_the_cli_reads_urls(
    backend: str, https_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The plain file and the gzip file by URL, read as one file (twice the rows)."""
    urls = [f"{https_server['url']}/sales.csv", f"{https_server['url']}/sales.csv.gz"]
    argv = ["csv", "stats", *urls, "--sum", "amount", "--json", "--backend", backend]
    assert main([*argv, "--workers", "2", "--chunk-bytes", "40000", *FLAGS]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 2 * REFERENCE.rows
    assert report["files"] == urls
    amount = REFERENCE.columns["amount"].as_dict()
    assert report["sum"]["amount"] == pytest.approx(2 * amount["sum"])


def test_a_missing_url_is_named(
    https_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{https_server['url']}/nope.csv"
    with pytest.raises(StorageNotFoundError) as info:
        csv_stats(url, ["amount"], storage_options=OPTIONS)
    assert str(info.value) == f"{url}: not found (HTTP 404)"
    assert main(["csv", "stats", url, "--sum", "amount", *FLAGS]) == 2
    assert f"{url}: not found (HTTP 404)" in capsys.readouterr().err


def test_a_plain_file_is_read_in_ranges_and_the_parent_reads_few_bytes(
    https_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every GET of the file asks for a range and gets no more than a range's worth; the
    parent of a process pool fetches headers, the inference head and windows, not ranges."""
    parent: list[int] = []
    real_open, real_read = storage.Source.open, storage.Source.read
    real_readinto = storage.Source.readinto

    def counting_open(self: storage.Source, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, *args, **kwargs)
        inner = handle.read

        def read(size: int = -1) -> bytes:
            data: bytes = inner(size)
            parent.append(len(data))
            return data

        handle.read = read
        return handle

    def counting_readinto(self: storage.Source, start: int, buffer: memoryview) -> int:
        got = real_readinto(self, start, buffer)
        parent.append(got)
        return got

    def counting_read(self: storage.Source, start: int, end: int) -> bytes:
        data = real_read(self, start, end)
        parent.append(len(data))
        return data

    monkeypatch.setattr(storage.Source, "open", counting_open)
    monkeypatch.setattr(storage.Source, "read", counting_read)
    monkeypatch.setattr(storage.Source, "readinto", counting_readinto)
    size = (https_server["root"] / "big.csv").stat().st_size
    chunk = 1 << 20
    served(https_server, clear=True)
    got = csv_stats(
        f"{https_server['url']}/big.csv",
        ["amount"],
        backend="process",
        workers=2,
        chunk_bytes=chunk,
        storage_options=OPTIONS,
    )
    assert got.rows == REFERENCE.rows * 12
    gets = [entry for entry in served(https_server) if entry["method"] == "GET"]
    assert gets and all(entry["path"] == "/big.csv" for entry in gets)
    assert all(entry["range"] for entry in gets), "a GET without a Range: the whole file"
    assert max(entry["sent"] for entry in gets) <= 2 * chunk < size
    assert sum(entry["sent"] for entry in gets) < 3 * size  # the count, then the parse
    ranges = size // chunk + 1
    assert sum(parent) <= (1 << 16) + (1 << 20) + ranges * (2 << 16) < size // 2


@pytest.mark.parametrize(
    ("url", "extra", "package"),
    [
        ("gs://b/x.csv", "gcs", "gcsfs"),
        ("az://c/x.csv", "azure", "adlfs"),
        ("https://example.test/x.csv", "http", "aiohttp"),
    ],
)
def test_a_missing_package_names_its_extra(
    url: str, extra: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the store's package not importable (as when its extra is not installed), the error
    names the extra; the test suite installs them all, so it hides them."""
    pytest.importorskip(package)
    registry = sys.modules["fsspec.registry"]._registry  # the classes imported so far
    protocol = url.split("://", 1)[0]
    monkeypatch.setitem(sys.modules, package, None)  # import fails, as when not installed
    for name in list(sys.modules):
        if name.startswith(("fsspec.implementations.http", f"{package}.")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(registry, protocol, raising=False)
    with pytest.raises(MissingExtraError, match=rf'pip install "batchcore\[{extra}\]"'):
        storage.expand(url)
