"""Where jobs read and write: local paths, globs and folders, and URLs of any fsspec filesystem.

::

    expand("logs/2024-*.csv" | "s3://bucket/logs/" | [...], options) -> [Source, ...]
    source.open(block_size)      a seekable binary file; remote reads are ranged GETs
    source.read(start, end)      one ranged read of bytes start..end-1

Local paths never import fsspec (and keep the fast ``os`` reads). A URL (``s3://``, ``gs://``,
``az://``, ``https://``, ``memory://``, ``file://``, any fsspec protocol) needs fsspec and its
protocol's filesystem, installed as an extra (``pip install "batchcore[s3]"``); a missing one is
an error naming the extra. fsspec was chosen over pyarrow's filesystems because it covers every
protocol the jobs accept (pyarrow has no ``memory://``, ``https://`` or any third-party store)
with one API, and its ``storage_options`` are what pandas, Dask and polars users already write.

Every remote read and listing goes through ``storage_errors.retrying``: transient failures are
tried again with backoff a bounded number of times, then a ``StorageError`` names the URL.
Options with secret-looking names (``secret``, ``token``, ``password``, ``key``...) are kept as
``batchcore.Secret``: masked in every message and sealed when pickled to a worker.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from types import TracebackType
from typing import Any, Protocol, TypeVar

from batchcore.sealed import Secret, reveal

from .errors import MissingExtraError
from .parallel_reads import gets_per_read, observe, pieces, run_all
from .storage_errors import S3FS_RETRIES, retrying, with_s3_defaults

__all__ = [
    "InputFile",
    "MissingExtraError",
    "Source",
    "SourceLike",
    "StorageOptions",
    "describe",
    "expand",
    "filesystem",
    "is_url",
    "open_input",
    "parse_storage_option",
    "protect_options",
    "protocol_of",
    "secrets_in",
]

StorageOptions = dict[str, Any]
T = TypeVar("T")


class InputFile(Protocol):
    """What the readers need of an open input: a local ``FileIO`` or an fsspec file."""

    def read(self, size: int = -1, /) -> bytes: ...
    def readinto(self, buffer: Any, /) -> int | None: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def __enter__(self) -> Any: ...
    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any: ...


# Which extra brings the filesystem of a protocol (fsspec's own ``memory``/``file`` need only it).
EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
    "http": "http",
    "https": "http",
}
# Protocols whose files take their ``details`` from ``Source.open`` rather than a HEAD request:
# s3fs's ``S3File`` fetches them before its first ranged GET even when given the size, and uses
# only their ETag, only with ``local_expiry_check`` (then ``open`` leaves them to s3fs).
_KNOWN_DETAILS = frozenset({"s3", "s3a"})
# Protocols whose ranged reads (``Source.read``: a CSV job's blocks and ranges) go through
# Arrow's own S3 client when the options allow (``arrow_s3``): no s3fs/botocore in the workers.
_ARROW_READS = frozenset({"s3", "s3a"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB = re.compile(r"[*?\[]")
# Option names whose values are credentials (s3fs's key/secret/token, gcsfs's token, adlfs's
# account_key, sas_token, connection_string, client_secret; passwords of http/ftp/sftp).
_SECRET_NAME = re.compile(r"secret|token|passw|key|credential|connection_string|sas|signature")


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and _SCHEME.match(path) is not None


def protocol_of(path: str) -> str:
    """``"s3"`` for ``s3://b/k``; ``"file"`` for a local path."""
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else "file"


def reader_modules(
    paths: Iterable[str | os.PathLike[str]], options: Mapping[str, Any] | None = None
) -> list[str]:
    """The modules that read the remote ones of ``paths`` (``s3fs`` for ``s3://``), as fsspec's
    registry names them: what a worker will import before its first read. None for local paths
    or without fsspec (reading them fails later, with the extra to install).

    ``pyarrow.fs`` instead of ``s3fs`` when each ``s3://`` path names one object (no pattern
    or folder) and ``options`` suit Arrow's S3 client: the workers then read its ranges or its
    compressed stream with Arrow's client, and never import s3fs."""
    texts = [os.fspath(path) for path in paths]
    protocols = sorted({protocol_of(text) for text in texts} - {"file"})
    if not protocols:
        return []
    modules: list[str] = []
    arrow = set(protocols) & _ARROW_READS and _arrow_ready(options)
    if arrow and all(_one_object(text) for text in texts if protocol_of(text) in _ARROW_READS):
        modules.append("pyarrow.fs")
        protocols = [protocol for protocol in protocols if protocol not in _ARROW_READS]
    if not protocols:
        return modules  # without importing fsspec: the CLI asks before its pool starts
    try:
        from fsspec.registry import known_implementations
    except ImportError:
        return modules
    found = (known_implementations.get(protocol) for protocol in protocols)
    return [known["class"].rsplit(".", 1)[0] for known in found if known] + modules


def _arrow_ready(options: Mapping[str, Any] | None) -> bool:
    from .arrow_s3 import arrow_options

    return arrow_options(reveal(dict(options or {}))) is not None


def _one_object(url: str) -> bool:
    """Whether ``url`` names one object (compressed or not): no pattern, no folder."""
    path = url.split("://", 1)[-1]
    return not (_GLOB.search(path) or path.endswith("/"))


def _is_local(url: str) -> bool:
    return not is_url(url)


def protect_options(options: Mapping[str, Any] | None) -> StorageOptions:
    """A copy of ``options`` with every credential wrapped in ``Secret`` (nested dicts too)."""
    wrapped: StorageOptions = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            wrapped[name] = protect_options(value)
        elif isinstance(value, str) and _SECRET_NAME.search(name.lower()):
            wrapped[name] = Secret(value)
        else:
            wrapped[name] = value
    return wrapped


def secrets_in(options: Mapping[str, Any] | None) -> list[str]:
    """The secret values in ``options``: what error messages must never show."""
    found: list[str] = []
    for value in (options or {}).values():
        if isinstance(value, Secret):
            found.append(value.reveal())
        elif isinstance(value, Mapping):
            found.extend(secrets_in(value))
    return [value for value in found if value]


def parse_storage_option(text: str) -> tuple[list[str], Any]:
    """``KEY=VALUE`` from the CLI: dotted keys nest (``client_kwargs.region_name=eu-west-1``);
    ``true``/``false``/``null`` and integers become JSON's values, anything else stays text."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"expected KEY=VALUE, got {text.split('=')[0]!r}=...")
    parsed: Any = value
    lowered = value.lower()
    if lowered in ("true", "false"):
        parsed = lowered == "true"
    elif lowered in ("null", "none"):
        parsed = None
    elif re.fullmatch(r"-?\d+", value):
        parsed = int(value)
    return name.strip().split("."), parsed


def _filesystem_class_error(protocol: str, url: str, exc: BaseException) -> MissingExtraError:
    extra = EXTRAS.get(protocol)
    if extra is not None:
        hint = f'pip install "batchcore[{extra}]"'
    else:
        hint = f"pip install fsspec and the package fsspec names for {protocol!r}"
    return MissingExtraError(f"{url}: reading {protocol}:// URLs needs {hint} ({exc})")


@lru_cache(maxsize=32)
def _cached_filesystem(protocol: str, frozen: tuple[tuple[str, Any], ...]) -> Any:
    import fsspec

    options = reveal(_thaw(frozen))
    if protocol in ("s3", "s3a"):
        options = with_s3_defaults(options)  # botocore's own retries off: ``retrying`` retries
    if protocol in ("gs", "gcs") and _gcs_emulated(options):
        from gcsfs.core import GCSFileSystem  # plain JSON API over HTTP: no gRPC

        return GCSFileSystem(**options)
    fs = fsspec.filesystem(protocol, **options)
    if protocol in ("s3", "s3a"):
        fs.retries = S3FS_RETRIES  # s3fs takes its retry count as an attribute, not an option
    return fs


def _gcs_emulated(options: Mapping[str, Any]) -> bool:
    """Whether gcsfs is pointed at a server other than Google's (an emulator, a proxy): an
    ``endpoint_url`` or ``STORAGE_EMULATOR_HOST`` not on googleapis.com. gcsfs >= 2025.x's
    default class then asks that server for each bucket's layout over gRPC (TLS), which no
    emulator speaks: every call waits out a 30 s gRPC timeout, uncached, before going on
    (``tests/test_object_stores.py``). gcsfs's plain ``GCSFileSystem`` speaks only the JSON API."""
    endpoint = options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST") or ""
    host = re.sub(r"^[a-z]+://", "", str(endpoint)).split("/")[0].split(":")[0].lower()
    return bool(host) and not (host == "googleapis.com" or host.endswith(".googleapis.com"))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("__list__", tuple(_freeze(item) for item in value))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value and value[0] == "__list__":
        return [_thaw(item) for item in value[1]]
    if isinstance(value, tuple):
        return {key: _thaw(item) for key, item in value}
    return value


def filesystem(url: str, options: Mapping[str, Any] | None = None) -> Any:
    """The fsspec filesystem for ``url``'s protocol and ``options`` (one per process and
    options); ``MissingExtraError`` naming the extra when it is not installed."""
    protocol = protocol_of(url)
    try:
        import fsspec

        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        raise _filesystem_class_error(protocol, url, exc) from None
    return _cached_filesystem(protocol, _freeze(options or {}))


@dataclass(frozen=True)
class Source:
    """One input file: a local path (absolute) or a URL, its size, and the options to reach it.

    Pickles small and without secrets in clear (``options`` hold ``Secret`` values), so a task
    can carry it to any worker, which opens the file itself.
    """

    url: str
    size: int
    options: StorageOptions = field(default_factory=dict, compare=False, repr=False)
    compression: str | None = None  # "gzip", "bz2", "xz", "zstd": set by the CSV reader
    # What changes when the file is rewritten: a local file's mtime (ns), an object's ETag or
    # generation or modification time; "" when the store says none. For checkpoint keys.
    version: str = field(default="", compare=False)

    @property
    def is_local(self) -> bool:
        return _is_local(self.url)

    def __str__(self) -> str:
        return self.url

    def open(self, block_size: int = 1 << 20, readahead: bool = False, ahead: int = 0) -> InputFile:
        """A seekable binary file. Remote reads are ranged GETs of exactly the bytes asked for,
        or, with ``readahead``, of ``block_size`` more (for many small reads near each other);
        with ``ahead`` (Arrow's S3 client), whole blocks of ``block_size``, the next ``ahead``
        fetched at once in the background while the current one is read (a stream read front
        to back: a compressed file)."""
        if self.is_local:
            return open(self.url, "rb", buffering=0)
        if protocol_of(self.url) in _ARROW_READS:
            arrow = self._retrying(lambda: self._arrow_open(block_size, readahead, ahead))
            if arrow is not None:
                return _RetryingFile(arrow, self)
        fs = filesystem(self.url, self.options)
        cache = "readahead" if readahead else "none"
        handle = self._retrying(
            lambda: fs.open(self.url, "rb", block_size=block_size, cache_type=cache, size=self.size)
        )
        if _needs_no_head(fs, self.url, handle):
            # s3fs asks for the file's ``details`` (a HEAD request) before its first ranged GET,
            # though the size is given and nothing else of them is used: one round trip per
            # open, ~20 per 300 MB CSV job. ``expand`` has the size; give the file that instead.
            handle.details = {"name": handle.path, "size": self.size, "type": "file"}
        return _RetryingFile(handle, self)

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start..end-1``: one positioned read, or one ranged GET."""
        if self.is_local:
            with open(self.url, "rb", buffering=0) as handle:
                return os.pread(handle.fileno(), end - start, start)
        if protocol_of(self.url) in _ARROW_READS:
            got = self._retrying(lambda: self._arrow_read(start, end))
            if got is not None:
                return got
        fs = filesystem(self.url, self.options)
        data: bytes = self._retrying(lambda: fs.cat_file(self.url, start=start, end=end))
        return data

    def readinto(self, start: int, buffer: memoryview) -> int:
        """Fill ``buffer`` with the bytes from ``start`` on (fewer at the end): one positioned
        read, or ranged GETs (several at once for a large buffer from a slow store:
        ``parallel_reads``), into memory the caller reuses. Returns how many were read."""
        if self.is_local:
            with open(self.url, "rb", buffering=0) as handle:
                handle.seek(start)
                return handle.readinto(buffer)
        length = max(0, min(len(buffer), self.size - start))
        spans = pieces(start, length, gets_per_read(self.url))
        if len(spans) == 1:
            began = time.monotonic()
            got = self._read_piece(start, buffer)
            observe(self.url, got, time.monotonic() - began)  # a slow store: pieces next time
            return got
        counts = run_all(
            [partial(self._read_piece, at, buffer[at - start : end - start]) for at, end in spans]
        )
        got = 0
        for (at, end), count in zip(spans, counts, strict=True):
            got += count
            if count < end - at:  # the object ends before the size it had: what is contiguous
                break
        return got

    def _read_piece(self, start: int, buffer: memoryview) -> int:
        """``buffer`` filled from ``start`` of this remote file by one ranged GET (a piece of
        ``readinto``): Arrow's client writes it in place; fsspec's bytes are copied in."""
        if protocol_of(self.url) in _ARROW_READS:
            got = self._retrying(lambda: self._arrow_read_into(start, buffer))
            if got is not None:
                return got
        data = self.read(start, start + len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _arrow_open(self, block_size: int, readahead: bool, ahead: int = 0) -> Any:
        """The object as a file of Arrow's S3 client, or ``None`` (see ``_arrow_read``)."""
        from .arrow_s3 import open_object

        return open_object(
            self.url, self.size, self.version, self.options, block_size, readahead, ahead
        )

    def _arrow_read(self, start: int, end: int) -> bytes | None:
        """The range read by Arrow's S3 client, or ``None`` when s3fs must read it (options
        Arrow has no equivalent for; see ``arrow_s3``)."""
        from .arrow_s3 import read_range

        return read_range(self.url, self.size, self.version, self.options, start, end)

    def _arrow_read_into(self, start: int, buffer: memoryview) -> int | None:
        """``readinto`` by Arrow's S3 client, or ``None`` (see ``_arrow_read``)."""
        from .arrow_s3 import read_into

        return read_into(self.url, self.size, self.version, self.options, start, buffer)

    def _retrying(self, call: Callable[[], T]) -> T:
        """``call()``, transient failures retried with backoff; else a ``StorageError`` that
        names this URL and shows no secret of the options."""
        return retrying(call, self.url, secrets=secrets_in(self.options))


def _needs_no_head(fs: Any, url: str, handle: Any) -> bool:
    """Whether ``handle`` (just opened with its size) may take its details from us rather than
    a HEAD request: an s3fs file whose details were not fetched yet, on a filesystem that does
    not check ETags itself (``local_expiry_check``, which needs the HEAD's ETag)."""
    return (
        protocol_of(url) in _KNOWN_DETAILS
        and getattr(handle, "_details", False) is None
        and not getattr(fs, "local_expiry_check", False)
    )


class _RetryingFile:
    """A remote file whose reads are retried (a failed ranged GET leaves the position as it
    was, so the same read can be made again) and whose errors name the URL."""

    def __init__(self, handle: Any, source: Source) -> None:
        self.handle = handle
        self.source = source

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self.source._retrying(lambda: self.handle.read(size))
        return data

    def readinto(self, buffer: Any, /) -> int | None:
        got: int | None = self.source._retrying(lambda: self.handle.readinto(buffer))
        return got

    def seek(self, offset: int, whence: int = 0, /) -> int:
        position: int = self.handle.seek(offset, whence)
        return position

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.handle.close()

    def __getattr__(self, name: str) -> Any:  # tell, seekable, size...: the file's own
        return getattr(self.handle, name)

    def __enter__(self) -> _RetryingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- many inputs -------------------------------------------------------------------------------


def _hidden(name: str) -> bool:
    """Names a folder of parts holds beside its data: dot files and ``_SUCCESS``-like markers."""
    return name.startswith((".", "_"))


def _local_sources(pattern: str) -> list[Source]:
    path = os.path.abspath(os.path.expanduser(pattern))
    if _GLOB.search(pattern):
        names = sorted(glob.glob(path, recursive=True))
        files = [name for name in names if os.path.isfile(name)]
        if not files:
            raise FileNotFoundError(2, "no file matches this pattern", pattern)
        return [_local_source(name, os.stat(name)) for name in files]
    info = os.stat(path)  # FileNotFoundError names the path
    if not stat.S_ISDIR(info.st_mode):
        return [_local_source(path, info)]
    found: list[str] = []
    for folder, dirs, names in os.walk(path):
        dirs[:] = sorted(name for name in dirs if not _hidden(name))
        found.extend(os.path.join(folder, name) for name in sorted(names) if not _hidden(name))
    files = [name for name in found if os.path.isfile(name)]
    if not files:
        raise FileNotFoundError(2, "is a folder with no files in it", pattern)
    return [_local_source(name, os.stat(name)) for name in files]


def _local_source(path: str, info: os.stat_result) -> Source:
    return Source(path, info.st_size, version=str(info.st_mtime_ns))


# Where the stores' listings say which version of an object they saw (s3fs, gcsfs, adlfs, http).
_VERSION_KEYS = ("ETag", "etag", "generation", "LastModified", "last_modified", "mtime", "updated")


def object_version(info: Mapping[str, Any]) -> str:
    """What changes when an object is rewritten, from its listing (``""`` if it says nothing)."""
    for name in _VERSION_KEYS:
        value = info.get(name)
        if value not in (None, ""):
            return str(value)
    return ""


def _remote_sources(url: str, options: StorageOptions) -> list[Source]:
    protocol = protocol_of(url)
    secrets = secrets_in(options)
    if protocol in _ARROW_READS and _one_object(url):
        found = _arrow_source(url, options)
        if found is not None:
            return [found]
    fs = filesystem(url, options)

    def listing(call: Callable[[], T]) -> T:
        return retrying(call, url, secrets=secrets)

    def full(path: str) -> str:
        return path if is_url(path) else f"{protocol}://{path}"

    def source(path: str, info: Mapping[str, Any]) -> Source:
        return Source(full(path), int(info.get("size") or 0), options, version=object_version(info))

    if _GLOB.search(url.split("://", 1)[1]):
        matches = listing(lambda: fs.glob(url, detail=True))
        files = [source(p, i) for p, i in sorted(matches.items()) if i.get("type") != "directory"]
        if not files:
            raise FileNotFoundError(2, "no object matches this pattern", url)
        return files
    info = listing(lambda: fs.info(url))  # StorageNotFoundError for a missing key
    if info.get("type") != "directory":
        return [source(url, info)]
    found = listing(lambda: fs.find(url, detail=True))
    files = [
        source(path, item)
        for path, item in sorted(found.items())
        if item.get("type") != "directory"
        and not any(_hidden(part) for part in path[len(url.split("://", 1)[1]) :].split("/"))
    ]
    if not files:
        raise FileNotFoundError(2, "is a folder (prefix) with no objects in it", url)
    return files


def _arrow_source(url: str, options: StorageOptions) -> Source | None:
    """The object ``url`` as found by one HEAD of Arrow's S3 client (as s3fs would find it:
    size, ETag), so a job on one plain object never imports s3fs; ``None`` when the options are
    not for Arrow or the HEAD fails for any reason (a prefix of parts, a missing key, denied,
    a connection refused): s3fs then lists it, with its own retries and words for errors."""
    from .arrow_s3 import object_info

    try:
        info = object_info(url, options)
    except Exception:
        return None
    if info is None:
        return None
    size, version = info
    return Source(url, size, options, version=version)


def expand(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    options: Mapping[str, Any] | None = None,
) -> list[Source]:
    """Every file that ``inputs`` names, in order: a path, a URL, a glob (``logs/2024-*.csv``,
    ``s3://b/2024-*.csv``) or a folder/prefix of parts (recursively, skipping names that start
    with ``.`` or ``_``), or a list of these. Local paths come back absolute, so workers
    started elsewhere find them; a pattern that matches nothing is ``FileNotFoundError``."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    wrapped = protect_options(options)
    sources: list[Source] = []
    for item in inputs:
        text = os.fspath(item)
        if is_url(text) and protocol_of(text) == "file":
            text = text.split("://", 1)[1]
        found = _remote_sources(text, wrapped) if is_url(text) else _local_sources(text)
        sources.extend(found)
    if not sources:
        raise ValueError("no input files given")
    return sources


def describe(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> str:
    """The inputs as the user named them, for reports: ``a.csv`` or ``a.csv, b.csv``."""
    if isinstance(inputs, str | os.PathLike):
        return os.fspath(inputs)
    return ", ".join(os.fspath(item) for item in inputs)


SourceLike = Source | str


def open_input(source: SourceLike, block_size: int = 1 << 20) -> InputFile:
    """A seekable binary file for ``source`` (a ``Source``, or a local path)."""
    if isinstance(source, str):
        return open(source, "rb", buffering=0)
    return source.open(block_size)
