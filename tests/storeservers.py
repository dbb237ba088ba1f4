"""Real servers on loopback for the https://, gs:// and az:// tests, each a process of its own.

::

    start_http(root, cert, key) -> Server   python storeservers.py http --root DIR ...
        a folder served over HTTPS (TLS, self-signed) with single byte ranges (206,
        Content-Range), Content-Length, HEAD and 404; GET /_requests lists every request
        served (method, path, Range, bytes of body sent); DELETE /_requests clears the list
    start_gcs() -> Server                   python storeservers.py gcs
        gcp-storage-emulator's request handler and in-memory storage (PyPI), on a threading
        HTTPServer (the emulator's own serves one connection at a time)
    start_azurite(folder) -> Server         azurite-blob (npm), installed into ``folder`` on
        first use with ``npm install --prefix``; telemetry off, in-memory

Like ``s3server.py``: each child picks its port (0) and reports it, and dies with the test
process (``PR_SET_PDEATHSIG``, set before azurite's ``exec`` too, and EOF on stdin for the
Python children); ``.stop()`` is SIGTERM, then SIGKILL, then reap.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus, server
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
AZURITE = "azurite@3.35.0"  # the last release whose engines allow node 20 (3.36 asks for 21)
# Azurite's well-known development account (public, in Microsoft's documentation).
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass
class Server:
    """A running server: its URL (``http(s)://127.0.0.1:PORT``) and its process."""

    url: str
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, SIGKILL if it lingers; reaped; idempotent."""
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


def _start(argv: list[str], pattern: str, timeout: float = START_TIMEOUT) -> Server:
    """Start ``argv`` and wait for the line matching ``pattern`` (group 1: the URL)."""
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,  # never written: its EOF tells a Python child we are gone
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        close_fds=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        said = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
            line = process.stdout.readline() if ready else b""
            if not line:
                break
            said += line
            match = re.search(pattern, line.decode(errors="replace"))
            if match:
                return Server(match.group(1), process)
        raise RuntimeError(
            f"{argv[0]} did not start within {timeout:.0f}s "
            f"(exit code {process.poll()}, said {said[-500:]!r})"
        )
    except BaseException:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        raise


def _python_child(*args: str) -> list[str]:
    kind, *rest = args
    return [sys.executable, "-u", __file__, kind, "--parent", str(os.getpid()), *rest]


def start_http(root: Path, cert: Path, key: Path) -> Server:
    argv = _python_child("http", "--root", str(root), "--cert", str(cert), "--key", str(key))
    return _start(argv, r"^LISTENING (\S+)")


def start_gcs() -> Server:
    return _start(_python_child("gcs"), r"^LISTENING (\S+)")


def install_azurite(folder: Path) -> Path:
    """``azurite-blob`` of ``AZURITE``, installed into ``folder`` by npm the first time."""
    program = folder / "node_modules" / ".bin" / "azurite-blob"
    if program.exists():
        return program
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm")
    folder.mkdir(parents=True, exist_ok=True)
    flags = ["--no-audit", "--no-fund", "--no-save", "--no-package-lock", "--loglevel=error"]
    subprocess.run(
        [npm, "install", "--prefix", str(folder), *flags, AZURITE],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        timeout=300,
    )
    return program


def start_azurite(program: Path) -> Server:
    argv = _python_child("exec", "--", str(program))
    argv += ["--blobHost", HOST, "--blobPort", "0", "--inMemoryPersistence"]
    argv += ["--disableTelemetry", "--silent", "--skipApiVersionCheck", "--loose"]
    return _start(argv, r"listens on (http://\S+)")


def azure_connection_string(server: Server) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY};"
        f"BlobEndpoint={server.url}/{AZURE_ACCOUNT};"
    )


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files in ``folder``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    where = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(where, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# --- the children ------------------------------------------------------------------------------


def _die_with(parent: int, watch_stdin: bool = True) -> None:
    """Exit when ``parent`` dies, even by SIGKILL (parent-death signal; it survives ``exec``),
    and on EOF of stdin (the parent holds the pipe's other end)."""
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    if watch_stdin:

        def watch() -> None:
            sys.stdin.buffer.read()
            os._exit(0)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _Threading(server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # workers and the parent connect at once


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _ranged_handler(root: Path) -> type[server.BaseHTTPRequestHandler]:
    served: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Ranged(server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _note(self, sent: int) -> None:
            entry = {
                "method": self.command,
                "path": self.path,
                "range": self.headers.get("Range"),
                "sent": sent,
            }
            with lock:
                served.append(entry)

        def _requests(self) -> bool:
            if self.path != "/_requests":
                return False
            with lock:
                body = json.dumps(served).encode()
                if self.command == "DELETE":
                    served.clear()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True

        def do_DELETE(self) -> None:
            if not self._requests():
                self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            if not self._requests():
                self._serve(body=True)

        def _serve(self, body: bool) -> None:
            relative = self.path.split("?", 1)[0].lstrip("/")
            path = (root / relative).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                self._note(0)
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            data = path.read_bytes()
            size = len(data)
            start, end = 0, size
            status = HTTPStatus.OK
            asked = self.headers.get("Range")
            match = _RANGE.match(asked.strip()) if asked else None
            if asked and match is None:
                self._note(0)
                self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                return
            if match is not None:
                start = int(match.group(1))
                end = min(size, int(match.group(2)) + 1) if match.group(2) else size
                if start >= size:
                    self._note(0)
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = HTTPStatus.PARTIAL_CONTENT
            self.send_response(status)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if body:
                self.wfile.write(data[start:end])
            self._note(end - start if body else 0)

    return Ranged


def _serve_http(root: Path, cert: str, key: str) -> None:
    import ssl

    httpd = _Threading((HOST, 0), _ranged_handler(root.resolve()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    print(f"LISTENING https://{HOST}:{httpd.server_port}", flush=True)
    httpd.serve_forever()


def _serve_gcs() -> None:
    import logging
    from functools import partial

    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    logging.disable(logging.CRITICAL)  # one line per request otherwise, read by nobody
    storage = Storage(use_memory_fs=True)
    httpd = _Threading((HOST, 0), partial(RequestHandler, storage))
    print(f"LISTENING http://{HOST}:{httpd.server_port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="servers for batchcore's remote tests")
    parser.add_argument("kind", choices=["http", "gcs", "exec"])
    parser.add_argument("--parent", type=int, required=True, help="exit when this pid dies")
    parser.add_argument("--root", type=Path)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    argv = sys.argv[1:]
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    options = parser.parse_args(argv[: len(argv) - len(command) - (1 if command else 0)])
    if options.kind == "exec":  # azurite: the parent-death signal survives exec
        _die_with(options.parent, watch_stdin=False)
        os.execv(command[0], command)
    _die_with(options.parent)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if options.kind == "http":
        _serve_http(options.root, options.cert, options.key)
    else:
        _serve_gcs()
