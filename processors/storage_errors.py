"""Clear errors and bounded retries for reads and writes of URLs (``s3://``, ``https://``...).

::

    StorageError(BatchcoreError, OSError)            "URL: what went wrong", never a secret
    ├── StorageNotFoundError(FileNotFoundError)      no such bucket / key / file   ("missing")
    ├── StoragePermissionError(PermissionError)      access denied                 ("denied")
    └── StorageConnectionError(ConnectionError)      still failing after retries   ("transient")

    retrying(call, url, secrets=...)   call(); transient errors again with backoff, a bounded
                                       number of times; anything else at once: StorageError
    classify(exc)                      "missing" | "denied" | "transient" | "fatal"

How failures surface (checked against moto's S3 server, s3fs 2026.9 / aiobotocore 3.10 / aiohttp):
s3fs turns botocore's ``ClientError`` into ``FileNotFoundError`` (NoSuchBucket, NoSuchKey; a HEAD
of a missing key has no code at all), ``PermissionError`` (AccessDenied, SignatureDoesNotMatch,
InvalidAccessKeyId; ``"403"`` on a HEAD) or ``OSError`` with an errno (SlowDown 16, InternalError
121, other 5xx 5), with the ``ClientError`` as ``__cause__``. Connection failures come through
untranslated: botocore's ``EndpointConnectionError`` (over aiohttp's ``ClientConnectorError`` /
``ClientOSError`` over ``ConnectionRefusedError`` / ``ConnectionResetError``), ``ReadTimeoutError``,
aiohttp's ``ClientPayloadError`` for a body cut short. fsspec's HTTP filesystem raises aiohttp's
``ClientResponseError`` (``.status``) from ``cat``, and ``FileNotFoundError`` over it from
``open``, whatever the status. So ``classify`` reads the whole chain: a code or status anywhere
decides; the outer exception's type only when nothing does. Types are matched by name, so this
module imports neither fsspec nor botocore nor aiohttp.

Retries must be bounded in one place. By default s3fs tries each call 5 times (timeouts,
``HTTPClientError``, ``IncompleteRead``, ``ClientPayloadError``, SlowDown; waits 0.1 * 1.7**i s)
and botocore (legacy mode) 5 times under it (connection errors, timeouts, throttling, 5xx; waits
up to 2**i s), each waiting up to ``read_timeout`` (15 s) on a server that accepts but never
answers (s3fs nests its loop twice around ``cat_file``): measured, 75 s with
``read_timeout=1``, and no error yet after 20 minutes with the defaults.
``S3_DEFAULTS`` turns botocore's retries off and keeps s3fs's timeouts; set
``fs.retries = S3FS_RETRIES`` on the filesystem (s3fs takes it as an attribute, not an option);
then ``retrying`` is the only loop and a dead server fails within ``failure_bound()`` seconds.
"""

from __future__ import annotations

import errno
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

from batchcore.errors import BatchcoreError

__all__ = [
    "S3FS_RETRIES",
    "S3_CONNECT_TIMEOUT",
    "S3_DEFAULTS",
    "S3_READ_TIMEOUT",
    "StorageConnectionError",
    "StorageError",
    "StorageNotFoundError",
    "StoragePermissionError",
    "classify",
    "failure_bound",
    "redact",
    "retrying",
    "storage_error",
    "with_s3_defaults",
]

Kind = Literal["missing", "denied", "transient", "fatal"]
T = TypeVar("T")

ATTEMPTS = 4
BASE_DELAY = 0.2
MAX_DELAY = 5.0
# s3fs's own defaults, kept: a connection within 5 s, and no silence longer than 15 s while
# reading (a per-read bound, not a bound on a whole large transfer).
S3_CONNECT_TIMEOUT = 5.0
S3_READ_TIMEOUT = 15.0
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": S3_CONNECT_TIMEOUT,
        "read_timeout": S3_READ_TIMEOUT,
        "retries": {"mode": "standard", "total_max_attempts": 1},  # ``retrying`` retries
    }
}
S3FS_RETRIES = 1  # for ``fs.retries``: one try per call inside s3fs too
REDACTED = "***"


class StorageError(BatchcoreError, OSError):
    """A read or write of a URL that failed: ``"URL: what went wrong"``, never a secret."""

    kind: Kind = "fatal"

    def __init__(self, url: str, what: str, attempts: int = 1) -> None:
        super().__init__(f"{url}: {what}")
        self.url = url
        self.what = what
        self.attempts = attempts

    def __str__(self) -> str:  # OSError would show errno and strerror if it had them
        return f"{self.url}: {self.what}"

    def __reduce__(self) -> Any:
        return (type(self), (self.url, self.what, self.attempts))


class StorageNotFoundError(StorageError, FileNotFoundError):
    """No such bucket, key or file."""

    kind: Kind = "missing"


class StoragePermissionError(StorageError, PermissionError):
    """The server refused the credentials, or they may not do this."""

    kind: Kind = "denied"


class StorageConnectionError(StorageError, ConnectionError):
    """The connection failed, timed out or the server kept failing, through every attempt."""

    kind: Kind = "transient"


_ERROR_TYPES: dict[Kind, type[StorageError]] = {
    "missing": StorageNotFoundError,
    "denied": StoragePermissionError,
    "transient": StorageConnectionError,
    "fatal": StorageError,
}

# --- classification ---------------------------------------------------------------------------

# S3's error codes (and those of the services sharing its protocol), by kind; s3fs's HEAD errors
# carry the status as the code ("403", "404").
MISSING_CODES = frozenset(
    {"NoSuchBucket", "NoSuchKey", "NoSuchVersion", "NoSuchUpload", "NotFound"}
)
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "Forbidden",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "UnrecognizedClientException",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "BandwidthLimitExceeded",
        "InternalError",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "XAmzContentSHA256Mismatch",  # a body damaged on the way; s3fs retries it too
    }
)
# Exception types that mean the connection failed or timed out, by class name anywhere in the MRO:
# the builtins, botocore's, aiohttp's, fsspec's, http.client's and urllib3's.
TRANSIENT_TYPES = frozenset(
    {
        "ConnectionError",  # builtins (refused, reset, aborted, broken pipe) and botocore's own
        "TimeoutError",
        "timeout",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "HTTPClientError",
        "ClientConnectionError",  # aiohttp: ClientConnectorError, ServerDisconnectedError...
        "ClientPayloadError",  # aiohttp: a body cut short
        "ServerTimeoutError",
        "FSTimeoutError",
        "IncompleteRead",
        "RemoteDisconnected",
        "ProtocolError",
    }
)
TIMEOUT_TYPES = frozenset(
    {"TimeoutError", "timeout", "ReadTimeoutError", "ConnectTimeoutError", "FSTimeoutError"}
)
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,  # s3fs's translation of SlowDown
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EPIPE,
        errno.EREMOTEIO,  # s3fs's translation of InternalError
        errno.ETIMEDOUT,
    }
)


# Arrow's S3 client (``arrow_s3``) raises a plain ``OSError`` whose text names the AWS SDK's
# error type: "AWS Error NO_SUCH_KEY during GetObject operation: ...", "AWS Error UNKNOWN (HTTP
# status 502) during ...", "AWS Error NETWORK_CONNECTION during ...: curlCode: 7, ...". These are
# the S3 codes of those types (the SDK's names for the codes above); NETWORK_CONNECTION is a
# connection failure, whose curl code says which (7: could not connect, 28: timed out).
_ARROW_ERROR = re.compile(r"AWS Error ([A-Z_]+)(?: \(HTTP status (\d+)\))?")
_ARROW_CODES = {
    "NO_SUCH_KEY": "NoSuchKey",
    "NO_SUCH_BUCKET": "NoSuchBucket",
    "NO_SUCH_UPLOAD": "NoSuchUpload",
    "RESOURCE_NOT_FOUND": "NotFound",
    "ACCESS_DENIED": "AccessDenied",
    "INVALID_ACCESS_KEY_ID": "InvalidAccessKeyId",
    "INVALID_CLIENT_TOKEN_ID": "InvalidClientTokenId",
    "SIGNATURE_DOES_NOT_MATCH": "SignatureDoesNotMatch",
    "INVALID_SIGNATURE": "SignatureDoesNotMatch",
    "INCOMPLETE_SIGNATURE": "SignatureDoesNotMatch",
    "MISSING_AUTHENTICATION_TOKEN": "InvalidToken",
    "EXPIRED_TOKEN": "ExpiredToken",
    "UNRECOGNIZED_CLIENT": "UnrecognizedClientException",
    "SLOW_DOWN": "SlowDown",
    "THROTTLING": "Throttling",
    "SERVICE_UNAVAILABLE": "ServiceUnavailable",
    "INTERNAL_FAILURE": "InternalError",
    "REQUEST_TIMEOUT": "RequestTimeout",
}
_CURL_CODE = re.compile(r"curlCode: (\d+)")
CURL_COULD_NOT_CONNECT = 7
CURL_TIMED_OUT = 28


def _arrow_error(exc: BaseException) -> tuple[str, int | None] | None:
    """The AWS SDK error type and HTTP status an Arrow ``OSError`` names, or ``None``."""
    if type(exc) is not OSError or exc.errno is not None:
        return None
    found = _ARROW_ERROR.search(str(exc))
    if found is None:
        return None
    return found.group(1), (int(found.group(2)) if found.group(2) else None)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its causes and contexts, outermost first (each once)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _code_and_status(exc: BaseException) -> tuple[str | None, int | None]:
    """A botocore ``ClientError``'s code and HTTP status, or an aiohttp/HTTP error's status."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error") or {}
        meta = response.get("ResponseMetadata") or {}
        code = error.get("Code")
        status = meta.get("HTTPStatusCode")
        return (str(code) if code else None), (int(status) if status else None)
    status = getattr(exc, "status", None)
    if isinstance(status, int) and "ClientResponseError" in _type_names(exc):
        return None, status
    arrow = _arrow_error(exc)
    if arrow is not None and arrow[0] != "NETWORK_CONNECTION":
        kind, status = arrow
        return _ARROW_CODES.get(kind), status
    return None, None


def _kind_of_code(code: str | None, status: int | None) -> Kind | None:
    if code in MISSING_CODES:
        return "missing"
    if code in DENIED_CODES:
        return "denied"
    if code in TRANSIENT_CODES:
        return "transient"
    if code is not None and code.isdigit() and status is None:
        status = int(code)
    if status is None:
        return None
    if status == 404:
        return "missing"
    if status in (401, 403):
        return "denied"
    if status in (408, 429) or 500 <= status < 600:
        return "transient"
    return "fatal"


def _decided_by(exc: BaseException) -> tuple[Kind, BaseException] | None:
    """The kind one exception proves by itself (a code, a status, a connection type)."""
    if isinstance(exc, StorageError):
        return exc.kind, exc
    code, status = _code_and_status(exc)
    kind = _kind_of_code(code, status)
    if kind is not None:
        return kind, exc
    if _type_names(exc) & TRANSIENT_TYPES:
        return "transient", exc
    arrow = _arrow_error(exc)
    if arrow is not None and arrow[0] == "NETWORK_CONNECTION":
        return "transient", exc
    return None


def _evidence(exc: BaseException) -> tuple[Kind, BaseException]:
    for link in _chain(exc):
        decided = _decided_by(link)
        if decided is not None:
            return decided
    # Nothing in the chain names a code: the outer type says what it can.
    if isinstance(exc, FileNotFoundError):
        return "missing", exc
    if isinstance(exc, PermissionError):
        return "denied", exc
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return "transient", exc
    return "fatal", exc


def classify(exc: BaseException) -> Kind:
    """What a failed read or write means: ``missing`` (no such bucket/key/file), ``denied``
    (credentials refused or not allowed), ``transient`` (worth retrying: connection, timeout,
    throttling, 5xx) or ``fatal`` (anything else: retrying would not help)."""
    return _evidence(exc)[0]


# --- messages ---------------------------------------------------------------------------------


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret (also URL-quoted) and any ``user:password@`` of a URL masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}:
            text = text.replace(form, REDACTED)
    return _USERINFO.sub(rf"\1{REDACTED}@", text)


def _reason(exc: BaseException) -> str:
    """One line on what ``exc`` says: code, status and message, or type and message."""
    code, status = _code_and_status(exc)
    response = getattr(exc, "response", None)
    if code is not None or status is not None:
        message = ""
        if isinstance(response, Mapping):
            message = str((response.get("Error") or {}).get("Message") or "")
        message = message or str(getattr(exc, "message", "") or "")
        if not message and _arrow_error(exc):  # "... during GetObject operation: MESSAGE"
            message = str(exc).split(" operation: ", 1)[-1].strip()
        where = f" (HTTP {status})" if status is not None and str(status) != code else ""
        head = f"{code}{where}" if code else f"HTTP {status}"
        return f"{head}: {message}" if message else head
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _root(exc: BaseException) -> BaseException:
    """The innermost cause (the socket's own error under botocore's and aiohttp's)."""
    last = exc
    for link in _chain(exc):
        last = link
    return last


def _transient_what(decisive: BaseException, attempts: int) -> str:
    root = _root(decisive)
    reason = _reason(decisive)
    if root is not decisive:
        reason = f"{reason} ({_reason(root)})"
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    names = _type_names(decisive) | _type_names(root)
    if _code_and_status(decisive) != (None, None):
        return f"the server kept failing {tries}: {reason}"
    curl = _CURL_CODE.search(str(decisive)) if _arrow_error(decisive) else None
    if "ConnectionRefusedError" in names or (curl and int(curl[1]) == CURL_COULD_NOT_CONNECT):
        return f"could not connect {tries}: {reason}"
    if names & TIMEOUT_TYPES or (curl and int(curl[1]) == CURL_TIMED_OUT):
        return f"timed out {tries}: {reason}"
    return f"the connection dropped {tries}: {reason}"


def _bucket_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def _missing_what(url: str, decisive: BaseException) -> tuple[str, str]:
    code, status = _code_and_status(decisive)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if code == "NoSuchBucket":
        return _bucket_url(url), "no such bucket"
    if scheme in ("http", "https"):
        return url, f"not found (HTTP {status or 404})"
    if scheme in ("", "file", "local"):
        return url, "no such file"
    return url, "no such key"


def storage_error(
    exc: BaseException, url: str, *, attempts: int = 1, secrets: Iterable[str] = ()
) -> StorageError:
    """``exc`` (raised reading or writing ``url``) as a ``StorageError`` of its kind, whose
    message names the URL and the reason in plain words, with ``secrets`` masked. ``exc`` stays
    chained as the cause only when no secret shows in it; raise the result as it is."""
    if isinstance(exc, StorageError):
        return exc
    secrets = [s for s in secrets if s]
    kind, decisive = _evidence(exc)
    if kind == "missing":
        url, what = _missing_what(url, decisive)
    elif kind == "denied":
        what = (
            "access denied (check the credentials: key and secret or token, for this "
            f"endpoint, allowed on this bucket; the server said {_reason(decisive)})"
        )
    elif kind == "transient":
        what = _transient_what(decisive, attempts)
    elif _no_ranges(decisive):
        what = NO_RANGES
    else:
        what = _reason(decisive)
    error = _ERROR_TYPES[kind](redact(url, secrets), redact(what, secrets), attempts)
    error.__cause__ = exc if _shows_no_secret(exc, secrets) else None
    error.__suppress_context__ = True
    return error


def _shows_no_secret(exc: BaseException, secrets: list[str]) -> bool:
    for link in _chain(exc):
        for text in (str(link), repr(link), *getattr(link, "__notes__", ())):
            if redact(text, secrets) != text:
                return False
    return True


# --- retries ----------------------------------------------------------------------------------


def backoff(attempt: int, base_delay: float = BASE_DELAY, max_delay: float = MAX_DELAY) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential, capped,
    with "equal jitter" (between half and all of the step), so waits never shrink."""
    step = min(max_delay, base_delay * 2.0 ** (attempt - 1))
    return step / 2 + random.uniform(0, step / 2)


def retrying(
    call: Callable[[], T],
    url: str,
    *,
    attempts: int = ATTEMPTS,
    base_delay: float = BASE_DELAY,
    max_delay: float = MAX_DELAY,
    secrets: Iterable[str] = (),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``; a transient failure is tried again after a growing wait, ``attempts`` times
    in all; then, or at once for any other storage failure, a ``StorageError`` naming ``url``.
    Exceptions that are no storage failure (not an ``OSError``, not from a storage library)
    pass through unchanged."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts!r}")
    secrets = list(secrets)
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except StorageError:
            raise  # already retried and worded by an inner call
        except Exception as exc:
            kind = classify(exc)
            if kind == "fatal" and not _from_storage(exc):
                raise  # not a storage failure (a bug, a parse error): unchanged
            if attempt == attempts or kind != "transient":
                # The cause is chained by storage_error only when it shows no secret.
                raise storage_error(exc, url, attempts=attempt, secrets=secrets)  # noqa: B904
        sleep(backoff(attempt, base_delay, max_delay))
    raise AssertionError("unreachable")  # pragma: no cover


# Top-level packages whose exceptions are storage failures even when their kind is "fatal"
# (botocore's InvalidRange or InvalidBucketName, an aiohttp 400...).
STORAGE_PACKAGES = frozenset(
    {"aiobotocore", "aiohttp", "adlfs", "azure", "botocore", "fsspec", "gcsfs", "google", "s3fs"}
)


def _from_storage(exc: BaseException) -> bool:
    return (
        isinstance(exc, OSError)
        or type(exc).__module__.split(".")[0] in STORAGE_PACKAGES
        or _no_ranges(exc)
    )


# fsspec's HTTP filesystem raises a bare ValueError when a server answers a ranged GET with the
# whole file (status 200): its advice (``block_size=0``) is for fsspec's callers, not our users.
NO_RANGES = (
    "the server does not answer ranged reads (HTTP Range requests), which reading a file in "
    "parts needs: download the file first (e.g. curl -o FILE URL) and give its path, or serve "
    "it from a server that supports ranges"
)


def _no_ranges(exc: BaseException) -> bool:
    return type(exc) is ValueError and "support range requests" in str(exc)


def failure_bound(
    attempts: int = ATTEMPTS,
    base_delay: float = BASE_DELAY,
    max_delay: float = MAX_DELAY,
    connect_timeout: float = S3_CONNECT_TIMEOUT,
    read_timeout: float = S3_READ_TIMEOUT,
) -> float:
    """Seconds within which ``retrying`` gives up on a server that is down or never answers,
    with ``S3_DEFAULTS`` and ``S3FS_RETRIES``: each attempt waits at most a connection timeout
    and one read timeout, then the backoff between attempts."""
    waits = sum(min(max_delay, base_delay * 2.0 ** (n - 1)) for n in range(1, attempts))
    return attempts * (connect_timeout + read_timeout) + waits


def with_s3_defaults(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``options`` over ``S3_DEFAULTS``: what the user set wins, key by key (in
    ``config_kwargs`` too)."""
    return _merged(S3_DEFAULTS, options or {})


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """One level deep: a user's ``config_kwargs={"retries": ...}`` replaces ours whole."""
    merged = dict(base)
    for name, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged
