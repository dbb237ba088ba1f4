"""The S3-compatible test server itself (``tests/s3server.py`` and its fixtures): it answers, data
round-trips through s3fs, ranged reads are exact, credentials are checked when asked, and no
server process outlives its fixture or a SIGKILLed pytest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("moto")
s3fs = pytest.importorskip("s3fs")

from s3server import S3Server, start_server  # noqa: E402

DATA = bytes(range(256)) * 40  # 10 240 bytes, every byte value at a known offset


def gone(pid: int, within: float = 30.0) -> bool:
    """Whether ``pid`` is gone (or a zombie) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_the_server_answers_on_loopback(s3_server: S3Server) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{s3_server.endpoint_url}/", timeout=10) as r:
        assert r.status == 200
    client = s3_server.client()
    try:
        assert "Buckets" in client.list_buckets()
    finally:
        client.close()


def test_bytes_round_trip_through_s3fs(s3_bucket: str, s3_storage_options: dict[str, Any]) -> None:
    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.pipe(f"{s3_bucket}/dir/data.bin", DATA)
    assert fs.cat_file(f"s3://{s3_bucket}/dir/data.bin") == DATA
    assert fs.ls(f"{s3_bucket}/dir") == [f"{s3_bucket}/dir/data.bin"]


def test_s3_put_uploads_bytes_and_files(
    s3_put: Any, s3_bucket: str, s3_storage_options: dict[str, Any], tmp_path: Path
) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(DATA[:100])
    assert s3_put("a.bin", b"abc") == f"s3://{s3_bucket}/a.bin"
    assert s3_put("b.bin", local) == f"s3://{s3_bucket}/b.bin"
    fs = s3fs.S3FileSystem(**s3_storage_options)
    assert fs.cat_file(f"{s3_bucket}/a.bin") == b"abc"
    assert fs.cat_file(f"{s3_bucket}/b.bin") == DATA[:100]


def test_each_test_gets_a_fresh_empty_bucket(
    s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    # The round-trip test above wrote into its own bucket, deleted after it.
    fs = s3fs.S3FileSystem(**s3_storage_options)
    assert fs.ls(s3_bucket, refresh=True) == []
    assert fs.ls("", refresh=True) == [s3_bucket]


@pytest.mark.parametrize(
    ("start", "end"), [(0, 1), (5, 15), (255, 257), (10_000, 10_240), (4096, 8192)]
)
def test_a_ranged_read_returns_exactly_those_bytes(
    s3_put: Any, s3_storage_options: dict[str, Any], start: int, end: int
) -> None:
    url = s3_put("data.bin", DATA)
    fs = s3fs.S3FileSystem(**s3_storage_options)
    # s3fs's cat_file takes version_id third: start and end must be named.
    assert fs.cat_file(url, start=start, end=end) == DATA[start:end]


def test_a_stopped_server_leaves_no_process() -> None:
    server = start_server()
    pid = server.process.pid
    assert psutil.Process(pid).is_running()
    server.stop()
    assert not psutil.pid_exists(pid)  # reaped: not even a zombie
    server.stop()  # idempotent


def test_a_killed_server_leaves_no_process(stoppable_s3_server: S3Server) -> None:
    pid = stoppable_s3_server.process.pid
    stoppable_s3_server.kill()
    assert not stoppable_s3_server.running()
    assert not psutil.pid_exists(pid)


# A pytest stand-in: starts a server, says its pid, then waits to be SIGKILLed.
ORPHAN_MAKER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from s3server import start_server
    server = start_server()
    print(server.process.pid, flush=True)
    time.sleep(600)
    """
)


def test_the_server_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    script = ORPHAN_MAKER.format(tests=str(Path(__file__).parent))
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(server_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        assert gone(server_pid), f"server {server_pid} outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_the_auth_server_takes_its_credentials(s3_auth_server: S3Server) -> None:
    fs = s3fs.S3FileSystem(**s3_auth_server.storage_options(), skip_instance_cache=True)
    bucket = "auth-round-trip"
    fs.mkdir(bucket)
    fs.pipe(f"{bucket}/k", b"ok")
    assert fs.cat_file(f"{bucket}/k") == b"ok"
    fs.rm(bucket, recursive=True)
    fs.close_session(fs.loop, fs._s3)


@pytest.mark.parametrize(
    ("change", "code"),
    [("secret", "SignatureDoesNotMatch"), ("key", "InvalidAccessKeyId")],
)
def test_the_auth_server_refuses_wrong_credentials(
    s3_auth_server: S3Server, change: str, code: str
) -> None:
    from botocore.exceptions import ClientError

    wrong = {change: "wrong-" + getattr(s3_auth_server, change)}
    client = s3_auth_server.client(**wrong)
    try:
        with pytest.raises(ClientError) as caught:
            client.list_buckets()
    finally:
        client.close()
    assert caught.value.response["Error"]["Code"] == code
    options = s3_auth_server.storage_options(**wrong)
    with pytest.raises(PermissionError):
        s3fs.S3FileSystem(**options, skip_instance_cache=True).ls("")


def test_the_session_server_accepts_any_credentials(s3_server: S3Server) -> None:
    client = s3_server.client(key="anything", secret="at-all")
    try:
        assert "Buckets" in client.list_buckets()
    finally:
        client.close()


def test_aws_configuration_is_sandboxed() -> None:
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    assert not Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).exists()
    assert not Path(os.environ["AWS_CONFIG_FILE"]).exists()
    assert "AWS_ACCESS_KEY_ID" not in os.environ
    assert "AWS_PROFILE" not in os.environ
