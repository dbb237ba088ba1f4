"""Ranged reads of ``s3://`` objects with Arrow's own S3 client (``pyarrow.fs.S3FileSystem``).

::

    arrow_options(options) -> dict | None     s3fs's storage options as Arrow's, or None
    object_info(url, options) -> (size, version) | None          one HEAD; None: not for Arrow
    read_range(url, size, version, options, start, end) -> bytes | None   one ranged GET
    read_into(url, size, version, options, start, buffer) -> int | None   one, into a buffer
    open_object(url, size, version, options, block_size, readahead) -> ArrowFile | None

Why: a CSV job on one object mostly reads byte ranges of it, and s3fs costs a lot for that:
importing s3fs/aiobotocore/botocore takes ~0.3 s of CPU per process (the parent, the zygote), a
client ~0.15 s more per process, and each 16 MiB GET ~15-20 ms of Python (aiohttp) under the
GIL. Arrow's client is C++ and comes with pyarrow: importing it takes ~10 ms, a client ~20-40
ms, and a GET runs without the GIL. So ``storage.py`` finds one object with a HEAD here, and
reads its ranges (``Source.read``) and the object as a file (``Source.open``: a header, a
compressed stream) here; listing prefixes and globs, and writes stay with fsspec/s3fs.

Only when nothing would change: every storage option must have an exact Arrow equivalent (keys,
token, anonymous access, endpoint, region, timeouts) and the credentials must be given (as
options or in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) or anonymous; anything else (a
profile, SSO, a role, a proxy, extra request arguments, a version-aware or requester-pays
filesystem, an endpoint from ``AWS_ENDPOINT_URL``) is read by s3fs as before, and so is
everything with ``BATCHCORE_ARROW_S3=0`` in the environment. Retries are
``storage_errors.retrying``'s alone (Arrow's own are turned off, as botocore's are for s3fs), and
Arrow's errors (``AWS Error ACCESS_DENIED ...``) are classified there like botocore's.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import threading
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import Future
from functools import lru_cache
from typing import Any

from batchcore.sealed import reveal

from .parallel_reads import submit
from .storage_errors import S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT

__all__ = ["ArrowFile", "arrow_options", "object_info", "open_object", "read_into", "read_range"]

SWITCH = "BATCHCORE_ARROW_S3"  # "0": s3fs reads every range, as before Arrow's client did
ARROW_S3_MODULE = "_s3fs"  # the extension module of pyarrow's S3 client; builds without it lack it
# s3fs options that change nothing about reading a range of a known object.
_IGNORED = frozenset(
    {
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "cache_regions",
        "fixed_upload_size",
    }
)
# ... and those that change nothing when they have their default value.
_DEFAULTS: dict[str, Any] = {
    "version_aware": False,
    "requester_pays": False,
    "s3_additional_kwargs": None,
    "asynchronous": False,
    "use_ssl": True,
    "client_kwargs": None,
    "config_kwargs": None,
}
# botocore's config options that Arrow has (or that do not apply to a ranged GET: checksums of
# uploads; a ranged GET's body carries none).
_CONFIG = frozenset(
    {
        "connect_timeout",
        "read_timeout",
        "retries",
        "request_checksum_calculation",
        "response_checksum_validation",
    }
)
# Environment variables with which botocore would do something Arrow's client might not.
_BOTOCORE_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def arrow_options(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``pyarrow.fs.S3FileSystem`` arguments that reach the same server with the same
    credentials as s3fs given ``options`` (secrets revealed), or ``None`` when some option has no
    exact equivalent (s3fs then reads). The region is left out when nothing names it."""
    if os.environ.get(SWITCH) == "0" or any(os.environ.get(name) for name in _BOTOCORE_ENV):
        return None
    if not _arrow_has_s3():
        return None
    known = {"key", "username", "secret", "password", "token", "anon", "endpoint_url"}
    for name, value in options.items():
        if name in known or name in _IGNORED:
            continue
        if name in _DEFAULTS and value in (_DEFAULTS[name], None, {}):
            continue
        if name in ("client_kwargs", "config_kwargs", "use_ssl"):
            continue  # looked at below
        return None
    client = dict(options.get("client_kwargs") or {})
    config = dict(options.get("config_kwargs") or {})
    if set(client) - {"region_name", "endpoint_url"} or set(config) - _CONFIG:
        return None
    key = options.get("key", options.get("username"))
    secret = options.get("secret", options.get("password"))
    token = options.get("token")
    anonymous = bool(options.get("anon", False))
    found: dict[str, Any] = {}
    if anonymous:
        found["anonymous"] = True
    elif key is not None or secret is not None:
        if key is None or secret is None:
            return None
        found.update(access_key=str(key), secret_key=str(secret))
        if token is not None:
            found["session_token"] = str(token)
    elif not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        return None  # a profile, SSO, a role, instance metadata...: botocore's to find
    endpoint = options.get("endpoint_url") or client.get("endpoint_url")
    if endpoint:
        parts = urllib.parse.urlsplit(str(endpoint))
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            return None
        found.update(scheme=parts.scheme, endpoint_override=parts.netloc)
    elif options.get("use_ssl", True) is False:
        found["scheme"] = "http"
    region = client.get("region_name") or os.environ.get("AWS_REGION")
    region = region or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        found["region"] = str(region)
    elif endpoint:
        found["region"] = "us-east-1"  # botocore's signing region for s3 when none is set
    found["connect_timeout"] = float(config.get("connect_timeout", S3_CONNECT_TIMEOUT))
    found["request_timeout"] = float(config.get("read_timeout", S3_READ_TIMEOUT))
    found["attempts"] = _attempts(config.get("retries"))
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if bundle and found.get("scheme", "https") == "https":
        found["tls_ca_file_path"] = bundle
    return found


@lru_cache(maxsize=1)
def _arrow_has_s3() -> bool:
    """Whether this pyarrow was built with its S3 client (PyPI's wheels are; some builds not),
    told by the client's extension module file (``pyarrow/_s3fs.*.so``) without importing
    pyarrow: the CLI asks before it starts its pool, and the import would delay that ~0.1 s."""
    spec = importlib.util.find_spec("pyarrow")
    folders = (spec.submodule_search_locations or ()) if spec else ()
    return any(
        os.path.isfile(os.path.join(folder, f"{ARROW_S3_MODULE}{suffix}"))
        for folder in folders
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def _attempts(retries: Any) -> int:
    """Arrow's attempts per request for botocore's ``retries`` setting: one unless the user
    asked botocore for more (``S3_DEFAULTS`` asks for one: ``retrying`` retries)."""
    if not isinstance(retries, Mapping):
        return 1
    if "total_max_attempts" in retries:
        return max(1, int(retries["total_max_attempts"]))
    if "max_attempts" in retries:  # botocore: retries after the first attempt
        return max(1, int(retries["max_attempts"]) + 1)
    return 1


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    return value


@lru_cache(maxsize=16)
def _filesystem(frozen: tuple[tuple[str, Any], ...], bucket: str) -> Any:
    """One Arrow S3 client per process and settings. Without a region (no endpoint, none given)
    the bucket's own is asked for once: Arrow's guess would cost a wait for instance metadata."""
    from pyarrow import fs

    settings = dict(frozen)
    attempts = settings.pop("attempts")
    if "region" not in settings:
        settings["region"] = fs.resolve_s3_region(bucket)
    return fs.S3FileSystem(
        **settings, retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=attempts)
    )


# Objects opened in this process, by settings, path, size and version: opening asks for the
# size (a HEAD); each read after that is one ranged GET. A rewritten object has another key.
_OPENED: dict[tuple[Any, ...], Any] = {}
_OPENED_MAX = 64  # a handle per reading thread (and GET thread) per object
_OPENED_LOCK = threading.Lock()


def _opened(
    settings: tuple[tuple[str, Any], ...], path: str, size: int, version: str, thread: int = 0
) -> Any:
    key = (settings, path, size, version, thread)
    handle = _OPENED.get(key)
    if handle is None:
        handle = _filesystem(settings, path.split("/", 1)[0]).open_input_file(path)
        _keep(key, handle)
    return handle


def _keep(key: tuple[Any, ...], handle: Any) -> None:
    with _OPENED_LOCK:
        while len(_OPENED) >= _OPENED_MAX:
            del _OPENED[next(iter(_OPENED))]  # the oldest
        _OPENED[key] = handle


def _settings(options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    settings = arrow_options(reveal(dict(options)))
    return None if settings is None else _freeze(settings)


def read_range(
    url: str, size: int, version: str, options: Mapping[str, Any], start: int, end: int
) -> bytes | None:
    """Bytes ``start..end-1`` of the object ``url`` (``s3://bucket/key``) in one ranged GET by
    Arrow's client, or ``None`` when ``options`` are not for Arrow (see ``arrow_options``).
    Errors are Arrow's own (``OSError``s): the caller retries and words them."""
    handle = _handle(url, size, version, options)
    if handle is None:
        return None
    data: bytes = handle.read_at(end - start, start)
    return data


def read_into(
    url: str, size: int, version: str, options: Mapping[str, Any], start: int, buffer: memoryview
) -> int | None:
    """``buffer`` filled from ``start`` of the object ``url`` in one ranged GET by Arrow's
    client, written straight into it (``read_range``'s ``bytes`` are fresh memory each time);
    how many bytes were read, or ``None`` when ``options`` are not for Arrow. A reading file
    has a position, so each thread reads through its own (opening one is a HEAD)."""
    handle = _handle(url, size, version, options, threading.get_ident())
    if handle is None:
        return None
    handle.seek(start)
    got: int = handle.readinto(buffer)
    return got


def _handle(url: str, size: int, version: str, options: Mapping[str, Any], thread: int = 0) -> Any:
    settings = _settings(options)
    if settings is None:
        return None
    return _opened(settings, url.split("://", 1)[1], size, version, thread)


def object_info(url: str, options: Mapping[str, Any]) -> tuple[int, str] | None:
    """The size and version (ETag, else modification time) of the object ``url`` in one HEAD
    by Arrow's client, or ``None`` when ``options`` are not for Arrow. ``FileNotFoundError``
    when no such object (a prefix of parts, a missing key or bucket: s3fs then says which)."""
    settings = _settings(options)
    if settings is None:
        return None
    path = url.split("://", 1)[1]
    handle = _filesystem(settings, path.split("/", 1)[0]).open_input_file(path)
    size = int(handle.size())
    metadata = {str(key).lower(): value for key, value in handle.metadata().items()}
    version = metadata.get("etag") or metadata.get("last-modified") or b""
    version = version.decode() if isinstance(version, bytes) else str(version)
    _keep((settings, path, size, version), handle)  # the reads after this need no HEAD
    return size, version


class ArrowFile:
    """A remote object as the readers want it (``read``, ``readinto``, ``seek``, ``tell``),
    each read one ranged GET by Arrow's client; with ``readahead``, a read fetches
    ``block_size`` more and the next reads within it are served from memory (as s3fs's
    ``readahead`` cache does: for the many small reads of a header).

    With ``ahead``, for a stream read front to back (a compressed object): whole blocks of
    ``block_size``, the next ``ahead`` of them fetched at once in the background by
    ``parallel_reads``' pool while the reader decompresses this one, so a store's round trip
    and each connection's rate stop holding the decompressor up (~``ahead`` blocks more
    memory). A block whose fetch failed is fetched again when it is read."""

    def __init__(
        self, handle: Any, size: int, block_size: int, readahead: bool, ahead: int = 0
    ) -> None:
        self.handle = handle
        self.size = size
        self.block_size = block_size
        self.readahead = readahead
        self.ahead = ahead
        self.coming: dict[int, Future[bytes]] = {}  # block number -> its fetch in the pool
        self.position = 0
        self.cached = b""
        self.cached_at = 0

    def read(self, size: int = -1, /) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        if end <= self.position:
            return b""
        if self.ahead:
            return self._read_blocks(end)
        start = self.position
        if not (self.cached_at <= start and end <= self.cached_at + len(self.cached)):
            fetch_end = min(self.size, end + self.block_size) if self.readahead else end
            data = self._fetch(start, fetch_end)
            if not self.readahead:
                self.position += len(data)
                return data
            self.cached, self.cached_at = data, start
        offset = start - self.cached_at
        data = self.cached[offset : offset + end - start]
        self.position += len(data)
        return data

    def _read_blocks(self, end: int) -> bytes:
        """``read`` with ``ahead``: the bytes up to ``end`` from the blocks holding them."""
        parts = []
        while self.position < end:
            if not self.cached_at <= self.position < self.cached_at + len(self.cached):
                self._load(self.position // self.block_size)
            offset = self.position - self.cached_at
            part = self.cached[offset : offset + end - self.position]
            if not part:  # the object is shorter than its size said
                break
            parts.append(part)
            self.position += len(part)
        return b"".join(parts)

    def _load(self, number: int) -> None:
        """Make block ``number`` the cached one (from its fetch ahead, if started), and start
        fetching the ``ahead`` blocks after it."""
        for stale in [n for n in self.coming if n < number or n > number + self.ahead]:
            self.coming.pop(stale).cancel()  # a seek elsewhere: not needed now
        start = number * self.block_size
        coming = self.coming.pop(number, None)
        data = None
        if coming is not None:
            try:
                data = coming.result()
            except Exception:  # fetched again below, in this thread: its retries apply
                data = None
        if data is None:
            data = self._fetch(start, min(self.size, start + self.block_size))
        self.cached, self.cached_at = data, start
        for later in range(number + 1, number + 1 + self.ahead):
            at = later * self.block_size
            if at < self.size and later not in self.coming:
                self.coming[later] = submit(self._fetch, at, min(self.size, at + self.block_size))

    def _fetch(self, start: int, end: int) -> bytes:
        """One ranged GET."""
        data: bytes = self.handle.read_at(end - start, start)
        return data

    def readinto(self, buffer: Any, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.cached = b""
        for coming in self.coming.values():
            coming.cancel()  # one already running ends by itself; its bytes are dropped
        self.coming.clear()

    def __enter__(self) -> ArrowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_object(
    url: str,
    size: int,
    version: str,
    options: Mapping[str, Any],
    block_size: int,
    readahead: bool,
    ahead: int = 0,
) -> ArrowFile | None:
    """The object ``url`` as a file of Arrow's client (``ArrowFile``), or ``None`` when
    ``options`` are not for Arrow."""
    handle = _handle(url, size, version, options)
    return None if handle is None else ArrowFile(handle, size, block_size, readahead, ahead)
