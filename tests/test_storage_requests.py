"""The requests a remote read makes (moto, ``tests/s3server.py``): ``Source.open`` on ``s3://``
reads with ranged GETs alone, no HEAD per opened file, and still gives the exact bytes; with
Arrow's S3 client (the default for such options) and with s3fs (``BATCHCORE_ARROW_S3=0``)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from batchcore.processors import storage

DATA = b"".join(b"%06d,some text,%d\n" % (i, i * 7) for i in range(20_000))


@pytest.fixture(params=["arrow", "s3fs"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which client reads the ranges: Arrow's, or s3fs (Arrow's switched off)."""
    from batchcore.processors.arrow_s3 import SWITCH

    if request.param == "s3fs":
        monkeypatch.setenv(SWITCH, "0")
    name: str = request.param
    return name


@pytest.fixture
def heads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of s3fs's ``info`` calls (a HEAD request each, no listing cached) from now on."""
    import s3fs

    calls: list[str] = []
    real = s3fs.S3FileSystem._info

    async def counting(self: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(path)
        return await real(self, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_info", counting)
    return calls


def test_open_makes_no_head_request(
    s3_put: Any, s3_storage_options: dict[str, Any], heads: list[str], reader: str
) -> None:
    url = s3_put("data.csv", DATA)
    [source] = storage.expand(url, s3_storage_options)  # a HEAD, unless s3fs has it cached
    assert source.size == len(DATA)
    assert (source._arrow_open(1 << 12, False) is not None) == (reader == "arrow")
    listed = len(heads)
    for readahead in (False, True):
        with source.open(1 << 12, readahead=readahead) as handle:
            handle.seek(1000)
            assert handle.read(5000) == DATA[1000:6000]
            buffer = bytearray(3000)
            handle.seek(len(DATA) - 3000)
            assert handle.readinto(buffer) == 3000 and bytes(buffer) == DATA[-3000:]
            handle.seek(len(DATA) - 10)
            assert handle.read(100) == DATA[-10:]  # past the end: what is there
    assert source.read(7, 70_000) == DATA[7:70_000]
    assert len(heads) == listed, heads  # the opens and reads added none


def test_local_expiry_check_keeps_the_head(
    s3_put: Any, s3_storage_options: dict[str, Any], heads: list[str]
) -> None:
    """With ``local_expiry_check`` s3fs compares each GET's ETag with the HEAD's: left to it."""
    url = s3_put("checked.csv", DATA)
    [source] = storage.expand(url, {**s3_storage_options, "local_expiry_check": True})
    listed = len(heads)
    with source.open(1 << 12) as handle:
        assert handle.read(100) == DATA[:100]
    assert len(heads) == listed + 1, heads  # the file's own


def test_a_remote_block_is_scanned_with_one_read_of_concurrent_gets(
    s3_put: Any, s3_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    """The quote count of a remote block reads it in one read: its pieces' ranged GETs at once
    (``parallel_reads``), not one GET per file-object block after another."""
    from batchcore.processors import arrow_s3, parallel_reads
    from batchcore.processors.csv.split import scan_block
    from batchcore.processors.parallel_reads import MAX_GETS, pieces

    monkeypatch.setattr(parallel_reads, "FIXED_GETS", MAX_GETS)  # whatever the server's speed

    data = DATA * 20  # 6 MiB: more than one 4 MiB file-object block
    url = s3_put("scan.csv", data)
    [source] = storage.expand(url, s3_storage_options)
    fs = storage.filesystem(url, source.options)  # cached: its methods were bound already
    gets: list[tuple[int, int]] = []
    real, real_arrow, real_into = fs.cat_file, arrow_s3.read_range, arrow_s3.read_into

    def counting(path: str, start: Any = None, end: Any = None, **kw: Any) -> Any:
        gets.append((start, end))
        return real(path, start=start, end=end, **kw)

    def counting_arrow(*args: Any) -> Any:
        got = real_arrow(*args)
        if got is not None:  # read by Arrow's client (None: left to s3fs)
            gets.append(args[-2:])
        return got

    def counting_into(*args: Any) -> Any:
        got = real_into(*args)
        if got is not None:
            start, buffer = args[-2:]
            gets.append((start, start + len(buffer)))
        return got

    monkeypatch.setattr(fs, "cat_file", counting)
    monkeypatch.setattr(arrow_s3, "read_range", counting_arrow)
    monkeypatch.setattr(arrow_s3, "read_into", counting_into)
    scan = scan_block(source, 10, len(data) - 10, ord(","), lines=True)
    assert sorted(gets) == pieces(10, len(data) - 20, MAX_GETS) and len(gets) == 2
    body = data[10:-10]
    assert (scan.quotes, scan.newlines) == (body.count(b","), body.count(b"\n"))
