"""A real S3-compatible server for the tests: moto's server, in a process of its own on loopback.

::

    start_server(auth=False) -> S3Server      python s3server.py --parent PID  (the child)
        .endpoint_url  http://127.0.0.1:PORT      moto's Flask app on werkzeug, port 0 -> PORT
        .key, .secret  credentials to sign with   printed on stdout once it listens
        .stop()        SIGTERM, then SIGKILL      dies with its parent: PR_SET_PDEATHSIG, and EOF
                                                  on the stdin pipe the parent holds

A process of its own (not moto's ``ThreadedMotoServer``) so the server does not share the test
process's GIL, can be killed to simulate an outage, and dies even when pytest is SIGKILLed.
Moto accepts any credentials unless IAM checks are on; ``auth=True`` creates an IAM user with an
access key allowed ``s3:*``, then turns the checks on (``/moto-api/reset-auth``), so a wrong key
or secret is refused as AWS would refuse it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds for the child to import moto and listen (slow on a loaded machine)
STOP_TIMEOUT = 10.0
REGION = "us-east-1"
# Any key and secret do when IAM checks are off; the secret is distinctive so tests can look for it.
FAKE_KEY = "batchcore-test-key"
FAKE_SECRET = "batchcore-test-secret-do-not-show"

# What the tests set so that no AWS client ever reads the developer's configuration or reaches
# a real AWS endpoint (instance metadata included); the values to remove are listed as None.
AWS_SANDBOX: dict[str, str | None] = {
    "AWS_CONFIG_FILE": "/nonexistent/batchcore-tests/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/batchcore-tests/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_SECURITY_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_DEFAULT_PROFILE": None,
    "AWS_ENDPOINT_URL": None,
    "AWS_ENDPOINT_URL_S3": None,
    "AWS_ROLE_ARN": None,
    "AWS_WEB_IDENTITY_TOKEN_FILE": None,
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
}


_SESSION_LOCK = threading.Lock()


@functools.cache
def _botocore_session() -> Any:
    """One botocore session for every client the tests make: a new session loads the service
    models from disk again (about 0.1 s a client), one session loads them once. Credentials and
    the endpoint are given to each client, so nothing a session could read from the environment
    is used (and ``AWS_SANDBOX`` is set before the first server starts)."""
    import botocore.session

    return botocore.session.get_session()


@dataclass
class S3Server:
    """A running server: where it listens, the credentials it accepts, and its process."""

    endpoint_url: str
    key: str
    secret: str
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def storage_options(self, **overrides: Any) -> dict[str, Any]:
        """What a user passes to fsspec/s3fs for this server (``storage_options=``)."""
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret} | (
            overrides
        )

    def client(self, service: str = "s3", **credentials: str) -> Any:
        """A plain (synchronous) botocore client for setting up and checking data; close it."""
        import botocore.config

        config = botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=5)
        with _SESSION_LOCK:  # a botocore session is not safe to share between threads
            return _botocore_session().create_client(
                service,
                region_name=REGION,
                endpoint_url=self.endpoint_url,
                aws_access_key_id=credentials.get("key", self.key),
                aws_secret_access_key=credentials.get("secret", self.secret),
                config=config,
            )

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL if it lingers) and reap it; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        """Kill the server at once (an outage: connections drop, nothing answers); reaps it."""
        if self.process.poll() is None:
            self.process.kill()
        self.stop()


def start_server(*, auth: bool = False, timeout: float = START_TIMEOUT) -> S3Server:
    """Start a server on a free loopback port and wait until it answers; with ``auth``, only the
    returned key and secret are accepted."""
    # The child picks its port itself (port 0) and prints it: no race for a "free" port.
    process = subprocess.Popen(
        [sys.executable, "-u", __file__, "--parent", str(os.getpid())],
        stdin=subprocess.PIPE,  # never written: its EOF tells the child that we are gone
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_server_env(),
        close_fds=True,
    )
    try:
        port = _read_port(process, timeout)
        server = S3Server(f"http://{HOST}:{port}", FAKE_KEY, FAKE_SECRET, process)
        _wait_until_it_answers(server, timeout)
        if auth:
            server = _enforce_auth(server)
        return server
    except BaseException:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        raise


def _server_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env["MOTO_CALL_RESET_API"] = "true"
    return env


def _read_port(process: subprocess.Popen[bytes], timeout: float) -> int:
    """The port the child printed; an error naming the exit code if it died or hung first."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        raise RuntimeError(
            f"moto server did not start within {timeout:.0f}s "
            f"(exit code {process.poll()}, said {line[:200]!r})"
        )
    return int(line)


def _wait_until_it_answers(server: S3Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{server.endpoint_url}/", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline or not server.running():
                raise
            time.sleep(0.1)


def _enforce_auth(server: S3Server) -> S3Server:
    """Create an IAM user allowed ``s3:*`` with an access key, then turn IAM checks on."""
    iam = server.client("iam")
    try:
        name = f"batchcore-test-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17", "Statement": [_ALLOW_S3]}
        iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
        created = iam.create_access_key(UserName=name)["AccessKey"]
    finally:
        iam.close()
    # From now on every request is signed and checked (0 requests left without checks).
    request = urllib.request.Request(
        f"{server.endpoint_url}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},  # a form body would be parsed away by Flask
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    return S3Server(
        server.endpoint_url, created["AccessKeyId"], created["SecretAccessKey"], server.process
    )


_ALLOW_S3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}


def new_bucket_name() -> str:
    """A fresh bucket name (S3's rules: lowercase, digits, dashes; 3 to 63 characters)."""
    return f"test-{uuid.uuid4().hex[:16]}"


def create_bucket(server: S3Server, bucket: str) -> None:
    client = server.client()
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()


def delete_bucket(server: S3Server, bucket: str) -> None:
    """Empty and delete ``bucket``; quiet when the server or the bucket is already gone."""
    if not server.running():
        return
    client = server.client()
    try:
        with contextlib.suppress(client.exceptions.NoSuchBucket):
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            client.delete_bucket(Bucket=bucket)
    finally:
        client.close()


def put_object(server: S3Server, bucket: str, key: str, data: bytes | str | Path) -> str:
    """Upload ``data`` (bytes, or a local file's path) to ``bucket/key``; returns its URL."""
    body = Path(data).read_bytes() if isinstance(data, str | Path) else data
    client = server.client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    finally:
        client.close()
    return f"s3://{bucket}/{key}"


def close_s3fs_sessions() -> None:
    """Close the connections of every cached ``s3fs.S3FileSystem`` (each reconnects when next
    used), so a test leaves no socket behind; a no-op while s3fs was never imported."""
    s3fs = sys.modules.get("s3fs")
    if s3fs is None:
        return
    from fsspec.asyn import sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        client = getattr(fs, "_s3", None)
        if client is None or fs.loop is None or not fs.loop.is_running():
            continue
        with contextlib.suppress(Exception):
            sync(fs.loop, client.close, timeout=STOP_TIMEOUT)
        fs._s3 = None  # the next call makes a new client


def warm_s3fs(server: S3Server) -> None:
    """One s3fs call, then its connections closed: starts the threads s3fs keeps for the whole
    program (fsspec's event loop, and the loop's executor thread aiobotocore builds SSL contexts
    in), so they are no test's leak; a no-op without s3fs."""
    try:
        import s3fs
    except ImportError:
        return
    fs = s3fs.S3FileSystem(**server.storage_options())
    fs.ls("", refresh=True)
    close_s3fs_sessions()


# --- the child ---------------------------------------------------------------------------------


def _die_with(parent: int) -> None:
    """Exit when ``parent`` dies, even by SIGKILL: the kernel's parent-death signal (Linux), and
    EOF on stdin (the parent holds the pipe's other end; any OS)."""
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve(parent: int) -> None:
    _die_with(parent)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    try:  # moto >= 5.2.5 has its own handler (it fixes keep-alive details); werkzeug's works
        from moto.moto_server.werkzeug_app import MotoRequestHandler
    except ImportError:
        MotoRequestHandler = WSGIRequestHandler  # type: ignore[misc,assignment]

    class QuietHandler(MotoRequestHandler):
        """No line on stderr per request (nobody reads it)."""

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(HOST, 0, app, threaded=True, request_handler=QuietHandler)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="moto's S3 server for batchcore's tests")
    parser.add_argument("--parent", type=int, required=True, help="exit when this pid dies")
    _serve(parser.parse_args().parent)
