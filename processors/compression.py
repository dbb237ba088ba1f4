"""Compressed inputs: which format a file is in (by its first bytes, never its name), and a
streaming reader of its decompressed bytes.

::

    raw bytes --sniff(head)--> "gzip" --------------- ISA-L (batchcore[gzip]), else pyarrow --+
                               "zstd" --------------- pyarrow CompressedInputStream (C++) ---+
                               "xz" | "bz2" ---------- stdlib lzma / bz2, stream by stream ---+
                               None (plain)                                                   |
                               zip, Parquet: NotCsvError                                      v
                                        DecompressedReader: errors -> CompressedDataError, buffered

pyarrow decompresses gzip and zstd in C++ with the GIL released, so a thread can parse while
another decompresses; it reads every member of a multi-member gzip and every frame of a
concatenated zstd stream (what ``cat a.gz b.gz`` makes). When the optional ``isal`` package is
installed (``pip install batchcore[gzip]``), gzip goes through Intel's ISA-L instead, member by
member, which inflates about 3x faster than zlib (measured: ~1.1 GB/s against ~0.35 GB/s per
core) and also frees the GIL. xz (no pyarrow codec) and bz2 (pyarrow
fails on an empty member, and is no faster: the same libbz2) go through the stdlib's
decompressors, driven here stream by stream because ``lzma.open`` and ``bz2.open`` silently stop
at trailing garbage after a stream. A stream that ends early or does not decode is a
``CompressedDataError`` naming the format, never short data (see
``benchmarks/bench_decompress.py`` for the speeds that shaped this).
"""

from __future__ import annotations

import bz2
import io
import lzma
from collections.abc import Callable
from types import ModuleType
from typing import BinaryIO, Protocol

import pyarrow as pa

from .errors import CompressedDataError, NotCsvError

igzip_lib: ModuleType | None
try:  # the optional fast gzip inflater (batchcore[gzip])
    from isal import igzip_lib
except ImportError:  # without it gzip goes through pyarrow; tests force that path too
    igzip_lib = None


__all__ = [
    "FORMATS",
    "MAGIC_BYTES",
    "DecompressedReader",
    "open_decompressed",
    "open_input",
    "sniff",
]

FORMATS = ("bz2", "gzip", "xz", "zstd")
MAGIC_BYTES = 6  # the longest signature below (xz); read this many bytes to sniff
RAW_READ = 1 << 16  # compressed bytes read at a time by the stream loop (pyarrow reads 64 KiB too)
# At most this much output per decompressor call: a larger output is a fresh mmap'ed buffer
# every call, whose pages the kernel faults in anew (measured on 1 GB of gzip: a page fault per
# 4 KiB, 0.7 s of system time per GB; none at 64 KiB).
OUT_PIECE = 1 << 16
FAST_GZIP = igzip_lib is not None  # whether gzip goes through ISA-L; tests turn it off
BUFFER = 1 << 20  # the buffered reader's size; parse chunks are far larger and bypass it

# Not CSV, and often handed over as if they were: what each is, and what to do instead.
_NOT_CSV = (
    (b"PK\x03\x04", "is a zip archive, not a CSV file; unzip it first"),
    (b"PK\x05\x06", "is an empty zip archive, not a CSV file"),
    (
        b"PAR1",
        "is a Parquet file, not a CSV file; read it with pyarrow.parquet or the Parquet jobs",
    ),
    # Byte-order marks of encodings that write ASCII as several bytes (UTF-32 before UTF-16,
    # whose marks they begin with): such a file cannot be cut at its newline bytes.
    *(
        (
            bom,
            f"is {name} text (it starts with a {name} byte-order mark); batchcore reads "
            f"ASCII-compatible encodings only: convert it first, e.g. "
            f"iconv -f {name} -t UTF-8 FILE > FILE.utf8.csv",
        )
        for bom, name in (
            (b"\xff\xfe\x00\x00", "UTF-32"),
            (b"\x00\x00\xfe\xff", "UTF-32"),
            (b"\xff\xfe", "UTF-16"),
            (b"\xfe\xff", "UTF-16"),
        )
    ),
)


def sniff(head: bytes) -> str | None:
    """The compression format of a file that starts with ``head`` ("gzip", "bz2", "xz", "zstd"),
    or ``None`` for plain bytes; ``NotCsvError`` for a zip archive, a Parquet file or UTF-16/32
    text (the caller
    adds the file's name with ``with_path``). ``head`` is its first ``MAGIC_BYTES`` bytes or all
    of a shorter file."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh") and len(head) > 3 and ord("1") <= head[3] <= ord("9"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    for magic, reason in _NOT_CSV:
        if head.startswith(magic):
            raise NotCsvError(reason)
    return None


class _Source(io.RawIOBase):
    """The compressed file as pyarrow reads it, remembering what its own reads raised: an error
    from the file (a dropped connection) is re-raised as itself, not blamed on the data."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw = raw
        self.failure: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self.raw.read(size)
        except BaseException as exc:
            self.failure = exc
            raise


class _Decompressor(Protocol):
    """What ``lzma.LZMADecompressor`` and ``bz2.BZ2Decompressor`` have in common."""

    @property
    def eof(self) -> bool: ...
    @property
    def needs_input(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


def _xz() -> _Decompressor:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ)


def _gzip() -> _Decompressor:
    assert igzip_lib is not None
    decompressor: _Decompressor = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
    return decompressor


class TrailingBytesError(Exception):
    """What follows a complete stream is neither another stream nor allowed padding."""


# What a decoder raises on bad data; ISA-L's error is neither an OSError nor a ValueError.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    TrailingBytesError,
    lzma.LZMAError,
    pa.ArrowException,
)
if igzip_lib is not None:
    _DATA_ERRORS += (igzip_lib.IsalError,)


class _StreamsReader(io.RawIOBase):
    """The decompressed bytes of one or more concatenated streams, a new decompressor (stdlib
    bz2/lzma, or ISA-L's gzip) for each; an early end, or anything but a next stream (or xz's
    null padding) after one, is an error.

    The stdlib's own file classes stop silently at trailing garbage, and pyarrow's bz2 fails on
    an empty member of a concatenation, hence this loop (the decompressors release the GIL)."""

    def __init__(
        self, raw: _Source, new: Callable[[], _Decompressor], padding: bool, magic: bytes
    ) -> None:
        super().__init__()
        self.raw = raw
        self.new = new
        self.padding = padding
        self.magic = magic  # how every stream starts
        self.decompressor = new()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        out = self._read(min(len(buffer), OUT_PIECE))
        buffer[: len(out)] = out
        return len(out)

    def _read(self, size: int) -> bytes:
        while True:
            if self.decompressor.eof:
                data = self._between(self.decompressor.unused_data)
                while not data:  # between streams: only padding, or the end of the file
                    more = self.raw.read(RAW_READ)
                    if not more:
                        return b""
                    data = self._between(more)
                self.decompressor = self.new()
            elif self.decompressor.needs_input:
                data = self.raw.read(RAW_READ)
                if not data:
                    raise EOFError("the stream ends before its end marker")
            else:
                data = b""
            out = self.decompressor.decompress(data, size)
            if out:
                return out

    def _between(self, data: bytes) -> bytes:
        data = data.lstrip(b"\x00") if self.padding else data
        if not self.magic.startswith(data[: len(self.magic)]):
            raise TrailingBytesError("bytes after the end of a stream are not another stream")
        return data


class DecompressedReader(io.RawIOBase):
    """The decompressed bytes of a ``kind`` stream; every failure of the data is a
    ``CompressedDataError`` saying the format, what went wrong and how far it got."""

    def __init__(self, inner: io.RawIOBase | pa.NativeFile, kind: str, source: _Source) -> None:
        super().__init__()
        self.inner = inner
        self.kind = kind
        self.source = source
        self.position = 0  # uncompressed bytes returned so far

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        try:
            got = self.inner.readinto(buffer)
        except _DATA_ERRORS as exc:
            if exc is self.source.failure:
                raise  # the file failed, not the data
            raise CompressedDataError(self.kind, _reason(exc), self.position) from exc
        got = got or 0
        self.position += got
        return got

    def close(self) -> None:
        self.inner.close()
        super().close()


def _reason(exc: BaseException) -> str:
    """What a decoder's error means, in words that say whether the file is cut short."""
    text = str(exc)
    if isinstance(exc, EOFError) or "Truncated" in text:
        return "is truncated: the stream ends before its end marker (an incomplete copy?)"
    return f"is corrupt: {text}"


def open_decompressed(raw: BinaryIO, kind: str) -> BinaryIO:
    """A buffered reader of the decompressed bytes of ``raw`` (positioned at the start of the
    compressed data), which is in format ``kind`` (one of ``FORMATS``, as ``sniff`` says).

    Reads every member/frame/stream of a concatenation. ``CompressedDataError`` on a truncated
    or corrupt stream (the caller adds the file's name with ``with_path``); the caller closes
    ``raw``."""
    if kind not in FORMATS:
        raise ValueError(f"kind={kind!r}: must be one of {sorted(FORMATS)}")
    source = _Source(raw)
    inner: io.RawIOBase | pa.NativeFile
    if kind == "xz":
        inner = _StreamsReader(source, _xz, padding=True, magic=b"\xfd7zXZ\x00")
    elif kind == "gzip" and FAST_GZIP:
        # no zero padding after a member: pyarrow refuses it too, so both inflaters agree
        inner = _StreamsReader(source, _gzip, padding=False, magic=b"\x1f\x8b")
    elif kind == "bz2":
        inner = _StreamsReader(source, bz2.BZ2Decompressor, padding=False, magic=b"BZh")
    elif pa.Codec.is_available(kind):
        inner = pa.CompressedInputStream(source, kind)
    else:
        raise RuntimeError(f"this pyarrow build has no {kind} codec; install a pyarrow wheel")
    return io.BufferedReader(DecompressedReader(inner, kind, source), BUFFER)


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``raw``: the sniffed bytes given back to a stream that
    cannot seek."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        super().__init__()
        self.head = head
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self.head:
            got = min(len(buffer), len(self.head))
            buffer[:got] = self.head[:got]
            self.head = self.head[got:]
            return got
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def open_input(raw: BinaryIO) -> tuple[str | None, BinaryIO]:
    """The format of ``raw`` (see ``sniff``) and a reader of its decompressed bytes (``raw``
    itself, rewound, for a plain seekable file). ``NotCsvError`` for a zip or Parquet file."""
    head = raw.read(MAGIC_BYTES)
    kind = sniff(head)
    if raw.seekable():
        raw.seek(-len(head), io.SEEK_CUR)
        rest: BinaryIO = raw
    else:
        rest = io.BufferedReader(_Prefixed(head, raw), BUFFER)
    if kind is None:
        return None, rest
    return kind, open_decompressed(rest, kind)
