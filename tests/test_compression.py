"""batchcore.processors.compression: formats known by their first bytes, streams read to their
end or a clear error (never short or wrong data), for files made by the libraries and by the
command-line tools users have."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchcore.processors import compression
from batchcore.processors.compression import (
    FORMATS,
    MAGIC_BYTES,
    open_decompressed,
    open_input,
    sniff,
)
from batchcore.processors.errors import CompressedDataError, DataError, NotCsvError, UsageError

DATA = b"".join(
    b'%d,"row %d, with ""quotes""\nand a newline",%d.5\n' % (i, i, i) for i in range(20_000)
)


def zstd_frame(data: bytes) -> bytes:
    return pa.Codec("zstd").compress(data, asbytes=True)  # type: ignore[no-any-return]


LIBRARIES: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zstd": zstd_frame,
}
TOOLS = {"gzip": "gzip", "bz2": "bzip2", "xz": "xz", "zstd": "zstd"}


def tool_compress(kind: str, data: bytes) -> bytes:
    """``data`` compressed by the command-line tool for ``kind`` (skips when it is missing)."""
    tool = TOOLS[kind]
    if shutil.which(tool) is None:
        pytest.skip(f"the {tool} command is not installed")
    done = subprocess.run([tool, "-c"], input=data, capture_output=True, check=True, timeout=60)
    return done.stdout


def makers() -> list[object]:
    """(kind, maker) for every library and every command-line tool."""
    params: list[object] = []
    for kind, compress in LIBRARIES.items():
        params.append(pytest.param(kind, compress, id=f"{kind}-library"))
    for kind in TOOLS:
        params.append(
            pytest.param(kind, lambda data, kind=kind: tool_compress(kind, data), id=f"{kind}-tool")
        )
    return params


def read_all(blob: bytes) -> bytes:
    """Sniff and decompress ``blob`` the way a reader of a file would."""
    _kind, stream = open_input(io.BytesIO(blob))
    return stream.read()


class Unseekable(io.RawIOBase):
    """A pipe or a socket: bytes in order, no seeking."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__()
        self.data = io.BytesIO(data)
        self.fail_after = fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self.fail_after is not None and self.data.tell() >= self.fail_after:
            raise ConnectionError("the connection dropped")
        return self.data.readinto(buffer)


# --- sniff ---


@pytest.mark.parametrize(("kind", "compress"), makers())
def test_sniff_knows_each_format_by_its_first_bytes(
    kind: str, compress: Callable[[bytes], bytes]
) -> None:
    blob = compress(DATA)
    assert sniff(blob[:MAGIC_BYTES]) == kind
    assert sniff(blob) == kind


@pytest.mark.parametrize(
    "head",
    [b"", b"o", b"or", b"ord", b"\x1f", b"BZ", b"BZh", b"BZh0", b"\xfd7zX", b"\x28\xb5", b"PK"],
)
def test_sniff_calls_short_and_plain_heads_plain(head: bytes) -> None:
    assert sniff(head) is None
    assert sniff(b"order_id,ts,region\n") is None


def test_a_two_byte_gzip_header_is_a_truncated_gzip_not_plain_text() -> None:
    assert sniff(b"\x1f\x8b") == "gzip"
    with pytest.raises(CompressedDataError, match="gzip-compressed data is truncated"):
        read_all(b"\x1f\x8b")


@pytest.mark.parametrize(("kind", "compress"), makers())
def test_the_name_does_not_matter(
    kind: str, compress: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    disguised = tmp_path / "data.csv"  # compressed, named like plain text
    disguised.write_bytes(compress(DATA))
    with open(disguised, "rb") as raw:
        found, stream = open_input(raw)
        assert (found, stream.read()) == (kind, DATA)
    plain = tmp_path / f"data.csv.{kind}"  # plain text, named like a compressed file
    plain.write_bytes(DATA)
    with open(plain, "rb") as raw:
        found, stream = open_input(raw)
        assert (found, stream.read()) == (None, DATA)


@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_empty_and_tiny_files_are_plain(size: int, tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv.gz"
    path.write_bytes(b"a\n,"[:size])
    with open(path, "rb") as raw:
        found, stream = open_input(raw)
        assert (found, stream.read()) == (None, b"a\n,"[:size])


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", DATA)
    return buffer.getvalue()


def parquet_bytes() -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": [1, 2]}), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        pytest.param(zip_bytes, "is a zip archive, not a CSV file; unzip it first", id="zip"),
        pytest.param(parquet_bytes, "is a Parquet file, not a CSV file", id="parquet"),
    ],
)
def test_zip_and_parquet_are_refused_with_what_they_are(
    make: Callable[[], bytes], says: str
) -> None:
    with pytest.raises(NotCsvError, match=says) as caught:
        open_input(io.BytesIO(make()))
    assert isinstance(caught.value, UsageError)
    named = caught.value.with_path("in/data.csv")
    assert str(named).startswith("in/data.csv: ") and says in str(named)
    assert str(pickle.loads(pickle.dumps(named))) == str(named)


# --- round trips ---


@pytest.mark.parametrize(("kind", "compress"), makers())
def test_round_trip_and_concatenated_members(kind: str, compress: Callable[[bytes], bytes]) -> None:
    assert read_all(compress(DATA)) == DATA
    parts = [DATA[:1000], DATA[1000:], b"", b"last\n"]
    cat = b"".join(compress(part) for part in parts)  # what `cat a.gz b.gz ...` makes
    assert read_all(cat) == b"".join(parts)


@pytest.mark.parametrize("kind", FORMATS)
def test_a_stream_that_cannot_seek_is_read_whole(kind: str) -> None:
    blob = LIBRARIES[kind](DATA)
    found, stream = open_input(Unseekable(blob))  # type: ignore[arg-type]
    assert (found, stream.read()) == (kind, DATA)


def test_xz_stream_padding_is_allowed_and_trailing_garbage_is_not() -> None:
    blob = lzma.compress(DATA)
    assert read_all(blob + b"\x00" * 8 + lzma.compress(b"more\n")) == DATA + b"more\n"
    with pytest.raises(CompressedDataError, match="xz-compressed data is corrupt"):
        read_all(blob + b"trailing garbage")  # lzma.open would stop at it without a word


@pytest.mark.parametrize("kind", FORMATS)
def test_the_files_own_errors_pass_through_unchanged(kind: str) -> None:
    blob = LIBRARIES[kind](DATA)
    stream = open_decompressed(Unseekable(blob, fail_after=len(blob) // 2), kind)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError, match="the connection dropped"):
        stream.read()


def test_an_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(
        ValueError, match=r"kind='lz4': must be one of \['bz2', 'gzip', 'xz', 'zstd'\]"
    ):
        open_decompressed(io.BytesIO(b""), "lz4")


# --- truncated and corrupt streams ---


def read_in_pieces(blob: bytes) -> bytes:
    """Decompress in small reads, as a chunked reader does; all of it or an error."""
    _kind, stream = open_input(io.BytesIO(blob))
    out = bytearray()
    while piece := stream.read(4096):
        out += piece
    return bytes(out)


@pytest.mark.parametrize(("kind", "compress"), makers())
@pytest.mark.parametrize("where", [0.0, 0.25, 0.5, 0.9, 0.999, -1, -4])
def test_a_truncated_stream_is_an_error_naming_the_format(
    kind: str, compress: Callable[[bytes], bytes], where: float
) -> None:
    blob = compress(DATA)
    cut = len(blob) + int(where) if where < 0 else max(MAGIC_BYTES, int(len(blob) * where))
    with pytest.raises(CompressedDataError) as caught:
        read_in_pieces(blob[:cut])
    error = caught.value
    assert error.kind == kind and isinstance(error, DataError)
    assert f"{kind}-compressed data is" in str(error)
    assert error.offset <= len(DATA)  # a cut in the trailer comes after all the data
    named = error.with_path("s3://bucket/day.csv")
    assert str(named).startswith("s3://bucket/day.csv: ")
    assert pickle.loads(pickle.dumps(named)).args == named.args


@pytest.mark.parametrize(
    ("kind", "compress"),
    # zstd frames carry a checksum only when the writer asks (the zstd tool does, pyarrow does
    # not): without it a flipped bit can decode to other bytes, which no reader can notice.
    [p for p in makers() if p.id != "zstd-library"],  # type: ignore[attr-defined]
)
def test_a_flipped_bit_is_an_error_or_changes_nothing(
    kind: str, compress: Callable[[bytes], bytes]
) -> None:
    blob = compress(DATA)
    errors = 0
    for position in range(MAGIC_BYTES, len(blob), max(1, len(blob) // 23)):
        flipped = bytearray(blob)
        flipped[position] ^= 0x04
        try:
            out = read_in_pieces(bytes(flipped))
        except CompressedDataError as exc:
            assert exc.kind == kind
            errors += 1
        else:
            assert out == DATA, f"a flip at byte {position} gave other data without an error"
    assert errors >= 15  # nearly every flip in the compressed body is caught


def test_streams_are_closed_with_their_reader() -> None:
    stream: BinaryIO = open_decompressed(io.BytesIO(gzip.compress(DATA)), "gzip")
    stream.close()
    assert stream.closed


# --- gzip: ISA-L (batchcore[gzip]) and pyarrow's zlib read and fail alike ---


def gzip_outcome(blob: bytes) -> object:
    """What reading ``blob`` gives: its bytes, or the error's class and the words after "is"."""
    try:
        return read_in_pieces(blob)
    except CompressedDataError as exc:
        return (type(exc), exc.kind, str(exc).split(":")[0])


def flipped(blob: bytes, position: int) -> bytes:
    changed = bytearray(blob)
    changed[position] ^= 0x04
    return bytes(changed)


BLOB = gzip.compress(DATA)
GZIP_CASES = {
    "whole": BLOB,
    "members": gzip.compress(DATA[:1000]) + gzip.compress(b"") + gzip.compress(DATA[1000:]),
    "cut in the body": BLOB[: len(BLOB) // 2],
    "cut in the trailer": BLOB[:-4],
    "crc flipped": flipped(BLOB, len(BLOB) - 6),
    "size flipped": flipped(BLOB, len(BLOB) - 2),
    "trailing garbage": BLOB + b"trailing garbage",
    "trailing zeros": BLOB + bytes(8),
    **{f"body flipped at {at}": flipped(BLOB, len(BLOB) * at // 7) for at in range(1, 7)},
}


def test_isal_is_installed_for_the_tests() -> None:
    # without it the test below would compare pyarrow with itself
    assert compression.igzip_lib is not None, "pip install -e '.[test]' installs isal"


@pytest.mark.parametrize("case", GZIP_CASES)
def test_both_gzip_inflaters_give_the_same_bytes_or_the_same_error(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = GZIP_CASES[case]
    monkeypatch.setattr(compression, "FAST_GZIP", True)
    fast = gzip_outcome(blob)
    monkeypatch.setattr(compression, "FAST_GZIP", False)
    assert gzip_outcome(blob) == fast
    if case in ("whole", "members"):
        assert fast == DATA
    else:
        assert isinstance(fast, tuple) and fast[:2] == (CompressedDataError, "gzip"), fast
