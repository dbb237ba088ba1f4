"""Errors and retries of remote reads (``processors/storage_errors.py``), against the real S3
server of ``tests/s3server.py``: each failure gets its kind and a message naming the URL, never a
secret; transient failures are retried a bounded number of times with growing waits; a dead or
mute server fails within the documented bound."""

from __future__ import annotations

import http.server
import pickle
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchcore.processors import storage_errors
from batchcore.processors.cli import main
from batchcore.processors.storage_errors import (
    S3FS_RETRIES,
    StorageConnectionError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    classify,
    failure_bound,
    redact,
    retrying,
    storage_error,
    with_s3_defaults,
)

pytest.importorskip("moto")
s3fs = pytest.importorskip("s3fs")

from csv_helpers import SALES  # noqa: E402
from s3server import S3Server, close_s3fs_sessions  # noqa: E402

SECRET = "s3cr3t-Value/with+chars"  # what must never show
DATA = b"0123456789" * 1000


def s3(options: dict[str, Any], **overrides: Any) -> Any:
    """An s3fs filesystem as the storage layer makes one: S3_DEFAULTS, s3fs's retries off."""
    fs = s3fs.S3FileSystem(**with_s3_defaults({**options, **overrides}))
    fs.retries = S3FS_RETRIES
    return fs


def traceback_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


class Sleeps(list[float]):
    """A fake ``sleep`` that records the waits."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fail(
    call: Callable[[], Any], url: str, secrets: tuple[str, ...] = (), attempts: int = 4
) -> tuple[StorageError, Sleeps]:
    sleeps = Sleeps()
    with pytest.raises(StorageError) as caught:
        retrying(call, url, attempts=attempts, secrets=secrets, sleep=sleeps)
    return caught.value, sleeps


def no_secret_in(exc: BaseException, *secrets: str) -> None:
    for text in (str(exc), repr(exc), traceback_text(exc)):
        for secret in secrets:
            assert secret not in text


# --- a stand-in server for what moto cannot do: throttle, fail, cut a body short --------------


@dataclass
class Reply:
    status: int = 200
    code: str = ""
    truncate: bool = False


@contextmanager
def serving(server: http.server.HTTPServer) -> Iterator[str]:
    """``server`` answering on a thread while the block runs; yields its ``http://`` endpoint."""
    # shutdown() waits for serve_forever to poll: every 0.05 s, not the default 0.5 s
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def fake_s3() -> Iterator[tuple[str, Reply]]:
    """An HTTP server answering every request with ``reply`` (an S3 error, or a body cut
    short); yields its endpoint and the reply to set."""
    reply = Reply()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if reply.truncate:
                self.send_response(200)
                self.send_header("Content-Length", str(len(DATA)))
                self.end_headers()
                self.wfile.write(DATA[:100])  # then the connection closes (HTTP/1.0)
                return
            body = f"<Error><Code>{reply.code}</Code><Message>{reply.code}!</Message></Error>"
            self.send_response(reply.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_HEAD = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as endpoint:
        try:
            yield endpoint, reply
        finally:
            close_s3fs_sessions()


@pytest.fixture
def mute_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections (the kernel does) but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        close_s3fs_sessions()
        listener.close()


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


# --- each failure of a real server: kind, type and message ------------------------------------


def test_a_missing_bucket(s3_storage_options: dict[str, Any]) -> None:
    fs = s3(s3_storage_options)
    for call in (
        lambda: fs.cat_file("s3://no-such-bucket-here/k"),
        lambda: fs.info("s3://no-such-bucket-here/k"),
    ):
        exc, sleeps = fail(call, "s3://no-such-bucket-here/k")
        assert isinstance(exc, StorageNotFoundError) and isinstance(exc, FileNotFoundError)
        assert str(exc) == "s3://no-such-bucket-here: no such bucket"
        assert sleeps == []  # not retried


def test_a_missing_key(s3_bucket: str, s3_storage_options: dict[str, Any]) -> None:
    fs = s3(s3_storage_options)
    url = f"s3://{s3_bucket}/no/such.csv"
    # GET says NoSuchKey; HEAD (info, open) says only 404.
    for call in (
        lambda: fs.cat_file(url, start=0, end=4),
        lambda: fs.info(url),
        lambda: fs.open(url).read(),
    ):
        exc, sleeps = fail(call, url)
        assert type(exc) is StorageNotFoundError
        assert str(exc) == f"{url}: no such key"
        assert sleeps == []


@pytest.mark.parametrize(
    ("change", "code"), [("secret", "SignatureDoesNotMatch"), ("key", "InvalidAccessKeyId")]
)
def test_wrong_credentials_are_access_denied(
    s3_auth_server: S3Server, change: str, code: str
) -> None:
    wrong = SECRET if change == "secret" else "AKIAWRONGWRONGWRONG0"
    fs = s3(s3_auth_server.storage_options(), **{change: wrong})
    url = "s3://some-bucket/k.csv"
    for call, said in ((lambda: fs.ls("s3://some-bucket"), code), (lambda: fs.info(url), "403")):
        exc, sleeps = fail(call, url, secrets=(SECRET, s3_auth_server.secret))
        assert type(exc) is StoragePermissionError and isinstance(exc, PermissionError)
        assert str(exc).startswith(f"{url}: access denied (check the credentials: ")
        assert said in str(exc)
        assert sleeps == []
        no_secret_in(exc, SECRET, s3_auth_server.secret)


def test_a_server_not_listening(s3_server: S3Server) -> None:
    url = "s3://bucket/key.csv"
    fs = s3(s3_server.storage_options(endpoint_url=f"http://127.0.0.1:{closed_port()}"))
    exc, sleeps = fail(lambda: fs.cat_file(url), url, attempts=3)
    assert type(exc) is StorageConnectionError and isinstance(exc, ConnectionError)
    assert str(exc).startswith(f"{url}: could not connect after 3 attempts: ")
    assert "EndpointConnectionError" in str(exc) and "ConnectionRefusedError" in str(exc)
    assert len(sleeps) == 2


def test_a_range_past_the_end_is_fatal(s3_put: Any, s3_storage_options: dict[str, Any]) -> None:
    url = s3_put("data.bin", DATA)
    fs = s3(s3_storage_options)
    exc, sleeps = fail(lambda: fs.cat_file(url, start=len(DATA) + 10, end=len(DATA) + 20), url)
    assert type(exc) is StorageError
    assert str(exc).startswith(f"{url}: InvalidRange (HTTP 416)")
    assert sleeps == []


@pytest.mark.parametrize(
    ("status", "code"),
    [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"), (502, "BadGateway")],
)
def test_throttling_and_server_errors_are_retried(
    fake_s3: tuple[str, Reply], s3_server: S3Server, status: int, code: str
) -> None:
    endpoint, reply = fake_s3
    reply.status, reply.code = status, code
    fs = s3(s3_server.storage_options(endpoint_url=endpoint))
    url = "s3://b/k"
    exc, sleeps = fail(lambda: fs.cat_file(url, start=0, end=10), url)
    assert type(exc) is StorageConnectionError
    assert (
        str(exc)
        == f"{url}: the server kept failing after 4 attempts: {code} (HTTP {status}): {code}!"
    )
    assert len(sleeps) == 3


def test_a_body_cut_short_is_a_dropped_connection(
    fake_s3: tuple[str, Reply], s3_server: S3Server
) -> None:
    endpoint, reply = fake_s3
    reply.truncate = True
    fs = s3(s3_server.storage_options(endpoint_url=endpoint))
    exc, sleeps = fail(lambda: fs.cat_file("s3://b/k", start=0, end=len(DATA)), "s3://b/k")
    assert len(sleeps) == 3
    assert type(exc) is StorageConnectionError
    assert str(exc).startswith("s3://b/k: the connection dropped after 4 attempts: ")
    assert "ClientPayloadError" in str(exc)


def test_http_urls_get_the_same_kinds(
    fake_s3: tuple[str, Reply], s3_server: S3Server, s3_put: Any
) -> None:
    from fsspec.implementations.http import HTTPFileSystem

    http = HTTPFileSystem(skip_instance_cache=True)
    try:
        missing = f"{s3_server.endpoint_url}/no-bucket/no-key"  # moto's real 404
        exc, _ = fail(lambda: http.cat_file(missing), missing)
        assert type(exc) is StorageNotFoundError
        assert str(exc) == f"{missing}: not found (HTTP 404)"
        endpoint, reply = fake_s3
        reply.status = 503
        # open() says FileNotFoundError whatever the status; the 503 under it decides.
        exc, sleeps = fail(lambda: http.open(f"{endpoint}/f").read(), f"{endpoint}/f")
        assert type(exc) is StorageConnectionError and len(sleeps) == 3
    finally:
        http.close_session(http.loop, http._session)


# --- a server that stops mid-run or never answers: bounded time -----------------------------


@pytest.mark.timeout(300)
def test_a_server_stopped_mid_run_fails_within_the_bound(
    stoppable_s3_server: S3Server,
) -> None:
    server = stoppable_s3_server
    client = server.client()
    try:
        client.create_bucket(Bucket="bucket")
        client.put_object(Bucket="bucket", Key="k", Body=DATA)
    finally:
        client.close()
    fs = s3(server.storage_options())
    url = "s3://bucket/k"
    assert retrying(lambda: fs.cat_file(url, start=0, end=10), url) == DATA[:10]
    server.kill()
    started = time.monotonic()
    with pytest.raises(StorageConnectionError) as caught:
        retrying(lambda: fs.cat_file(url, start=10, end=20), url)  # real sleeps
    elapsed = time.monotonic() - started
    assert str(caught.value).startswith(f"{url}: ")
    assert "after 4 attempts" in str(caught.value)
    assert elapsed < failure_bound(), f"took {elapsed:.1f}s, documented {failure_bound():.1f}s"


@pytest.mark.timeout(300)
def test_a_mute_server_times_out_within_the_bound(mute_endpoint: str, s3_server: S3Server) -> None:
    # Short timeouts keep the test short; the bound is the same formula as with the defaults.
    timeouts = {"connect_timeout": 1, "read_timeout": 1}
    fs = s3(s3_server.storage_options(endpoint_url=mute_endpoint, config_kwargs=timeouts))
    started = time.monotonic()
    with pytest.raises(StorageConnectionError) as caught:
        retrying(lambda: fs.cat_file("s3://b/k"), "s3://b/k", attempts=2)
    elapsed = time.monotonic() - started
    assert str(caught.value).startswith("s3://b/k: timed out after 2 attempts: ReadTimeoutError")
    bound = failure_bound(attempts=2, connect_timeout=1, read_timeout=1)
    assert elapsed < bound, f"took {elapsed:.1f}s, documented {bound:.1f}s"


# --- retries: bounded, growing waits, only for transient failures -----------------------------


class Flaky:
    """A call that fails ``failures`` times with ``error``, then returns ``"ok"``."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


@pytest.mark.parametrize("failures", [0, 1, 3])
def test_transient_failures_are_retried_then_succeed(failures: int) -> None:
    call = Flaky(failures, ConnectionResetError(104, "Connection reset by peer"))
    sleeps = Sleeps()
    assert retrying(call, "s3://b/k", attempts=4, base_delay=0.2, max_delay=5, sleep=sleeps) == "ok"
    assert call.calls == failures + 1
    assert len(sleeps) == failures
    for attempt, waited in enumerate(sleeps, start=1):
        step = min(5, 0.2 * 2 ** (attempt - 1))
        assert step / 2 <= waited <= step
    assert sleeps == sorted(sleeps)  # growing


def test_retries_are_bounded_and_capped() -> None:
    call = Flaky(100, TimeoutError("timed out"))
    sleeps = Sleeps()
    with pytest.raises(StorageConnectionError) as caught:
        retrying(call, "s3://b/k", attempts=7, base_delay=1, max_delay=4, sleep=sleeps)
    assert call.calls == 7
    assert len(sleeps) == 6
    assert all(2 <= waited <= 4 for waited in sleeps[2:])  # capped at max_delay
    assert str(caught.value) == "s3://b/k: timed out after 7 attempts: TimeoutError: timed out"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (FileNotFoundError("b/k"), StorageNotFoundError),
        (PermissionError("Forbidden"), StoragePermissionError),
        (OSError(22, "The requested range is not satisfiable"), StorageError),
    ],
)
def test_other_failures_are_not_retried(error: OSError, kind: type[StorageError]) -> None:
    call = Flaky(1, error)
    with pytest.raises(kind):
        retrying(call, "s3://b/k", sleep=Sleeps())
    assert call.calls == 1


def test_what_is_no_storage_failure_passes_through() -> None:
    call = Flaky(1, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug") as caught:
        retrying(call, "s3://b/k", sleep=Sleeps())
    assert not isinstance(caught.value, StorageError)


# --- secrets ----------------------------------------------------------------------------------


def test_a_secret_is_masked_in_every_text_and_not_chained() -> None:
    url = f"https://user:{SECRET}@example.test/data.csv"
    error = ConnectionResetError(f"reset while sending key={SECRET}")
    exc, _ = fail(Flaky(9, error), url, secrets=(SECRET,), attempts=2)
    no_secret_in(exc, SECRET)
    assert str(exc).startswith("https://***@example.test/data.csv: the connection dropped")
    assert "key=***" in str(exc)
    assert exc.__cause__ is None  # the cause shows the secret: not chained


def test_a_cause_without_secrets_stays_chained() -> None:
    error = ConnectionResetError("reset")
    exc, _ = fail(Flaky(9, error), "s3://b/k", secrets=(SECRET,), attempts=1)
    assert exc.__cause__ is error
    assert "ConnectionResetError: reset" in traceback_text(exc)


def test_redact() -> None:
    assert redact("a s3cr3t, s3cr3t%2F and s3cr3t/", ["s3cr3t/"]) == "a s3cr3t, *** and ***"
    assert redact("x", ["", "y"]) == "x"
    assert redact("s3://k:pw@b/o and http://h/p") == "s3://***@b/o and http://h/p"


# --- the rest of the surface ------------------------------------------------------------------


def test_errors_pickle_with_their_type_and_message() -> None:
    for kind in (
        StorageError,
        StorageNotFoundError,
        StoragePermissionError,
        StorageConnectionError,
    ):
        exc = kind("s3://b/k", "what", 3)
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is kind
        assert (str(back), back.url, back.attempts, back.kind) == (
            str(exc),
            "s3://b/k",
            3,
            kind.kind,
        )


def test_classify_by_code_status_and_type() -> None:
    import aiohttp
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    def client_error(code: str, status: int) -> ClientError:
        response: Any = {"Error": {"Code": code, "Message": code}}
        response["ResponseMetadata"] = {"HTTPStatusCode": status}
        return ClientError(response, "GetObject")

    def wrapped(outer: BaseException, cause: BaseException) -> BaseException:
        outer.__cause__ = cause
        return outer

    table: list[tuple[BaseException, str]] = [
        (client_error("NoSuchBucket", 404), "missing"),
        (client_error("NoSuchKey", 404), "missing"),
        (client_error("AccessDenied", 403), "denied"),
        (client_error("InvalidAccessKeyId", 403), "denied"),
        (client_error("SignatureDoesNotMatch", 403), "denied"),
        (client_error("ExpiredToken", 400), "denied"),
        (client_error("SlowDown", 503), "transient"),
        (client_error("InternalError", 500), "transient"),
        (client_error("Whatever", 503), "transient"),
        (client_error("InvalidRange", 416), "fatal"),
        (client_error("403", 403), "denied"),  # s3fs's HEAD
        (wrapped(OSError(16, "SlowDown"), client_error("SlowDown", 503)), "transient"),
        (
            wrapped(FileNotFoundError("u"), aiohttp.ClientResponseError(None, (), status=503)),
            "transient",
        ),  # type: ignore[arg-type]
        (aiohttp.ClientResponseError(None, (), status=404), "missing"),  # type: ignore[arg-type]
        (EndpointConnectionError(endpoint_url="http://h"), "transient"),
        (ReadTimeoutError(endpoint_url="http://h"), "transient"),
        (aiohttp.ServerDisconnectedError(), "transient"),
        (aiohttp.ClientPayloadError("cut"), "transient"),
        (ConnectionRefusedError(111, "refused"), "transient"),
        (TimeoutError(), "transient"),
        (FileNotFoundError("b/k"), "missing"),
        (PermissionError("no"), "denied"),
        (OSError(22, "bad"), "fatal"),
        (ValueError("x"), "fatal"),
    ]
    assert [(repr(e), classify(e)) for e, _ in table] == [(repr(e), k) for e, k in table]


def test_storage_error_keeps_a_storage_error() -> None:
    exc = StorageNotFoundError("s3://b/k", "no such key")
    assert storage_error(exc, "s3://other") is exc


def test_s3_defaults_bound_the_retries_and_yield_to_the_user() -> None:
    merged = with_s3_defaults({"key": "k", "config_kwargs": {"read_timeout": 60}})
    assert merged["key"] == "k"
    assert merged["config_kwargs"]["read_timeout"] == 60
    assert merged["config_kwargs"]["connect_timeout"] == storage_errors.S3_CONNECT_TIMEOUT
    assert merged["config_kwargs"]["retries"] == {"mode": "standard", "total_max_attempts": 1}
    assert with_s3_defaults(None) == storage_errors.S3_DEFAULTS
    assert failure_bound() == 4 * (5 + 15) + 0.2 + 0.4 + 0.8


# --- the same failures through Arrow's S3 client (``arrow_s3``: ranges of one object) ----------


def arrow_read(options: dict[str, Any], url: str = "s3://b/k", size: int = len(DATA)) -> Any:
    """A ranged read as a CSV worker makes one: ``Source.read``, Arrow's client for ``options``."""
    from batchcore.processors.storage import Source, protect_options

    source = Source(url, size, protect_options(options))

    def read() -> bytes:
        got = source._arrow_read(0, 10)
        assert got is not None, "these options are Arrow's"
        return got

    return read


def test_arrow_a_missing_key_or_bucket(s3_bucket: str, s3_storage_options: dict[str, Any]) -> None:
    for url in (f"s3://{s3_bucket}/no/such.csv", "s3://no-such-bucket-here/k"):
        exc, sleeps = fail(arrow_read(s3_storage_options, url), url)
        assert type(exc) is StorageNotFoundError and sleeps == []
        assert str(exc) == f"{url}: no such key"  # a HEAD cannot tell which (s3fs's neither)


def test_arrow_wrong_credentials_are_access_denied(s3_auth_server: S3Server) -> None:
    url = "s3://some-bucket/k.csv"
    for change in ("secret", "key"):
        wrong = SECRET if change == "secret" else "AKIAWRONGWRONGWRONG0"
        options = s3_auth_server.storage_options(**{change: wrong})
        exc, sleeps = fail(arrow_read(options, url), url, secrets=(SECRET,))
        assert type(exc) is StoragePermissionError and sleeps == []
        assert str(exc).startswith(f"{url}: access denied (check the credentials: ")
        no_secret_in(exc, SECRET, s3_auth_server.secret)


def test_arrow_a_server_not_listening(s3_server: S3Server) -> None:
    options = s3_server.storage_options(endpoint_url=f"http://127.0.0.1:{closed_port()}")
    exc, sleeps = fail(arrow_read(options), "s3://b/k", attempts=3)
    assert type(exc) is StorageConnectionError and len(sleeps) == 2
    assert str(exc).startswith("s3://b/k: could not connect after 3 attempts: ")
    assert "NETWORK_CONNECTION" in str(exc)


@pytest.mark.parametrize(
    ("status", "code"),
    [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"), (502, "BadGateway")],
)
def test_arrow_throttling_and_server_errors_are_retried(
    fake_s3: tuple[str, Reply], s3_server: S3Server, status: int, code: str
) -> None:
    """Arrow opens the object with a HEAD, whose error has no body: only the status shows."""
    endpoint, reply = fake_s3
    reply.status, reply.code = status, code
    exc, sleeps = fail(arrow_read(s3_server.storage_options(endpoint_url=endpoint)), "s3://b/k")
    assert type(exc) is StorageConnectionError and len(sleeps) == 3
    assert str(exc).startswith(f"s3://b/k: the server kept failing after 4 attempts: HTTP {status}")


def test_arrow_a_body_cut_short_is_a_dropped_connection(
    fake_s3: tuple[str, Reply], s3_server: S3Server
) -> None:
    from batchcore.processors.storage import Source, protect_options

    endpoint, reply = fake_s3
    reply.truncate = True
    options = protect_options(s3_server.storage_options(endpoint_url=endpoint))
    source = Source("s3://b/k", len(DATA), options)
    exc, sleeps = fail(lambda: source._arrow_read(0, len(DATA)), "s3://b/k")
    assert type(exc) is StorageConnectionError and len(sleeps) == 3
    assert str(exc).startswith("s3://b/k: the connection dropped after 4 attempts: ")


@pytest.mark.timeout(300)
def test_arrow_a_mute_server_times_out_within_the_bound(
    mute_endpoint: str, s3_server: S3Server
) -> None:
    timeouts = {"connect_timeout": 1, "read_timeout": 1}
    options = s3_server.storage_options(endpoint_url=mute_endpoint, config_kwargs=timeouts)
    started = time.monotonic()
    with pytest.raises(StorageConnectionError) as caught:
        retrying(arrow_read(options), "s3://b/k", attempts=2)
    elapsed = time.monotonic() - started
    assert str(caught.value).startswith("s3://b/k: timed out after 2 attempts: ")
    # Arrow leaves the read timeout to the AWS SDK on Linux (3 s without a byte)
    bound = failure_bound(attempts=2, connect_timeout=1, read_timeout=3)
    assert elapsed < bound, f"took {elapsed:.1f}s, documented {bound:.1f}s"


def test_classify_arrows_errors() -> None:
    def arrow(kind: str, detail: str = "msg") -> OSError:
        return OSError(
            f"When reading 'k' in bucket 'b': AWS Error {kind} during GetObject operation: {detail}"
        )

    table: list[tuple[BaseException, str]] = [
        (arrow("NO_SUCH_KEY"), "missing"),
        (arrow("NO_SUCH_BUCKET"), "missing"),
        (arrow("ACCESS_DENIED"), "denied"),
        (arrow("INVALID_ACCESS_KEY_ID"), "denied"),
        (arrow("SIGNATURE_DOES_NOT_MATCH"), "denied"),
        (arrow("SLOW_DOWN"), "transient"),
        (arrow("THROTTLING"), "transient"),
        (arrow("INTERNAL_FAILURE"), "transient"),
        (arrow("SERVICE_UNAVAILABLE"), "transient"),
        (arrow("NETWORK_CONNECTION", "curlCode: 7, Could not connect"), "transient"),
        (arrow("NETWORK_CONNECTION", "curlCode: 18, Transferred a partial file"), "transient"),
        (arrow("UNKNOWN (HTTP status 503)"), "transient"),
        (arrow("UNKNOWN (HTTP status 404)"), "missing"),
        (arrow("UNKNOWN (HTTP status 416)"), "fatal"),
    ]
    assert [(repr(e), classify(e)) for e, _ in table] == [(repr(e), k) for e, k in table]
    said = storage_error(arrow("SLOW_DOWN", "Please slow down."), "s3://b/k", attempts=4)
    assert (
        str(said)
        == "s3://b/k: the server kept failing after 4 attempts: SlowDown: Please slow down."
    )


# --- a server without ranged reads ------------------------------------------------------------


@pytest.fixture
def rangeless_server(tmp_path: Path) -> Iterator[str]:
    """Python's own file server: it answers a ranged GET with the whole file (status 200)."""
    (tmp_path / "sales.csv").write_bytes(SALES.read_bytes())

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # the client hangs up on the whole file it did not ask for: expected

    with serving(Server(("127.0.0.1", 0), Handler)) as endpoint:
        yield endpoint


@pytest.mark.parametrize("backend", ["sequential", "process"])
def test_a_server_without_ranged_reads_is_named_with_what_to_do(
    rangeless_server: str, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """fsspec's own words were a bare ValueError advising ``block_size=0``, naming no URL."""
    url = f"{rangeless_server}/sales.csv"
    argv = ["csv", "stats", url, "--sum", "amount", "--chunk-bytes", "64KiB"]
    assert main([*argv, "--backend", backend]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"batchcore: error: {url}: the server does not answer ranged reads")
    assert "curl -o" in err
    assert "block_size" not in err
