"""Compare batchcore's image jobs with the tools a user would pick instead, on generated JPEGs.

Job sets (from /work/shared/anchors.md): 200 x 1920x1080 and 1000 x 320x240 photo-like JPEGs
(``data/make_images.py --bench``), each image x [grayscale, blur:radius=2, sepia,
thumbnail:size=256], load -> filter -> save as JPEG quality 85.

Engines: batchcore ``run_images`` on the sequential, thread and process backends, with the
decode-once node (``grouped=True``) and the seed-shaped flow (``grouped=False``: one
``LoadImage -> ApplyFilter -> SaveImage`` run per image x filter); a plain loop over the jobs
(the baseline, 1.00x); ``ThreadPoolExecutor`` and ``ProcessPoolExecutor`` (chunksize 1, and in
chunks) mapping the same per-job function; joblib ``Parallel``. The peers' per-job function calls
what batchcore's nodes call: ``load_image`` (with the JPEG ``draft`` decode the chain asks for,
which is what Pillow's own ``thumbnail()`` does on a freshly opened JPEG), ``FilterChain.apply``
(the registry's filters) and ``save_image`` (quality 85), so every engine does the same work.

Every (engine, image set) run is a fresh child process (``--one ENGINE SET``) writing into its
own fresh output folder. The child imports, starts and warms its pool (reported as start-up,
not timed), then times the job; the parent samples the RSS of the child and all its
descendants, then checks that every output was written and that each engine's files are
byte-identical to the plain loop's (pixel differences are measured where they are not)::

    parent --rm -rf OUT/ENGINE--> child (imports; [start + warm pool]; t0; job; t1) --JSON-->
       \\-- sampler thread: sum of RSS over the child's process tree, every 20 ms --/
    parent: every expected output present, sha256 against the plain loop's, pixels if they differ

    python benchmarks/bench_images.py            # 200 x 1080p, 1000 x 240p: results/images.md
    python benchmarks/bench_images.py --quick    # smoke test: 12 x 1080p, 60 x 240p, 1 repeat
    python benchmarks/bench_images.py --only 240p --engines plain,process,ppe-chunks
    python benchmarks/bench_images.py --one process 240p --src DIR --out DIR   # JSON out
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from harness import (
    DATA_DIR,
    ROOT,
    Cell,
    Measured,
    Run,
    Session,
    add_child_options,
    check_counts,
    default_output,
    emit,
    env_line,
    fmt,
    leftover_problems,
    package_versions,
    parse_env,
    parse_list,
    progress,
    run_child,
    sampler_line,
    speedup,
    start_batchcore,
    table,
    take_turns,
    times,
    tree_usage,
    warm_workers,
    write_report,
)
from PIL import Image

from batchcore.processors.errors import FilterSpecError
from batchcore.processors.files import is_temp_name
from batchcore.processors.images.filters import FilterChain, get_filter, parse_chain
from batchcore.processors.images.io import load_image, save_image

MAKE_IMAGES = ROOT / "data" / "make_images.py"

FILTERS = ["grayscale", "blur:radius=2", "sepia", "thumbnail:size=256"]
QUALITY = 85
SETS = "200x1920x1080,1000x320x240"
QUICK_SETS = "12x1920x1080,60x320x240"
DEFAULT_FOLDERS = {(200, 1920, 1080): "images-1080p", (1000, 320, 240): "images-240p"}

ENGINES = {
    "plain": "plain loop (baseline)",
    "seq": "batchcore sequential, decode once",
    "seq-flow": "batchcore sequential, seed flow",
    "thread": "batchcore thread, decode once",
    "thread-flow": "batchcore thread, seed flow",
    "process": "batchcore process, decode once",
    "process-flow": "batchcore process, seed flow",
    "tpe": "ThreadPoolExecutor",
    "ppe": "ProcessPoolExecutor, chunksize 1",
    "ppe-chunks": "ProcessPoolExecutor, chunked",
    "joblib": "joblib Parallel (loky)",
}
BATCHCORE = {  # engine -> (backend, grouped)
    "seq": ("sequential", True),
    "seq-flow": ("sequential", False),
    "thread": ("thread", True),
    "thread-flow": ("thread", False),
    "process": ("process", True),
    "process-flow": ("process", False),
}
PEERS = ("plain", "tpe", "ppe", "ppe-chunks", "joblib")
POOLED = ("thread", "thread-flow", "process", "process-flow", "tpe", "ppe", "ppe-chunks", "joblib")
PACKAGES = ["batchcore", "pillow", "numpy", "joblib", "psutil"]
BUSY_CORES = 0.25  # other processes using more than this during a run: warn

HOW = {
    "plain": "`for job in jobs: process_job(job)` in the child: `load_image(src, "
    "draft_size=chain.draft_size)` -> `chain.apply(image)` -> `save_image(out, quality={q})`",
    "seq": "`run_images(src, out, filters, backend='sequential', quality={q})`: `ImageJobsNode`, "
    "one item per image, one full decode shared by its chains plus a reduced-size (`draft`) "
    "decode for the thumbnail",
    "seq-flow": "`run_images(..., backend='sequential', grouped=False)`: the seed's "
    "`ImageBatchFlow`, `LoadImage -> ApplyFilter -> SaveImage` once per image x filter",
    "thread": "`run_images(..., backend='thread', workers=W)` (decode once) after "
    "`get_backend('thread', W).start()`",
    "thread-flow": "`run_images(..., backend='thread', workers=W, grouped=False)` after "
    "`get_backend('thread', W).start()`",
    "process": "`run_images(..., backend='process', workers=W)` (decode once) after "
    "`get_backend('process', W).start()` and warm-up batches until every worker has answered "
    "(each imports `batchcore.processors.images.jobs`); chunk sizes are batchcore's own (adaptive)",
    "process-flow": "`run_images(..., backend='process', workers=W, grouped=False)`, "
    "started and warmed the same way",
    "tpe": "`ThreadPoolExecutor(W).map(process_job, jobs)`, threads started before timing",
    "ppe": "`ProcessPoolExecutor(W).map(process_job, jobs)` (chunksize 1, default start method); "
    "warmed until every worker answered",
    "ppe-chunks": "`ProcessPoolExecutor(W).map(process_job, jobs, chunksize=C)`, C = jobs / "
    "(8 x W) unless `--ppe-chunksize`; warmed the same way",
    "joblib": "`with Parallel(n_jobs=W) as parallel: parallel(delayed(process_job)(job) for job "
    "in jobs)` (loky, default `batch_size='auto'`); warmed inside the same `with` block",
}

Job = tuple[str, FilterChain, str]  # (source, chain, output)


@dataclass(frozen=True)
class ImageSet:
    """``count`` generated JPEGs of ``width`` x ``height``; ``key`` names it (``1080p``)."""

    count: int
    width: int
    height: int

    @property
    def key(self) -> str:
        return f"{self.height}p"

    @property
    def title(self) -> str:
        return f"{self.count} x {self.width}x{self.height}"

    def folder(self, data_dir: Path) -> Path:
        name = DEFAULT_FOLDERS.get((self.count, self.width, self.height))
        return data_dir / (name or f"images-{self.width}x{self.height}-{self.count}")


def parse_sets(text: str) -> list[ImageSet]:
    """``200x1920x1080,1000x320x240`` -> image sets (``ValueError`` naming the bad part)."""
    sets = []
    for part in text.split(","):
        numbers = part.strip().lower().split("x")
        if len(numbers) != 3 or not all(n.isdigit() and int(n) > 0 for n in numbers):
            raise ValueError(f"expected COUNTxWIDTHxHEIGHT such as 200x1920x1080, got {part!r}")
        sets.append(ImageSet(*(int(n) for n in numbers)))
    keys = [s.key for s in sets]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two sets with the same height: {keys}")
    return sets


# --- the child: one engine, one image set, one fresh process ----------------------------------


def process_job(job: Job, quality: int = QUALITY) -> str:
    """One job as batchcore's nodes do it: decode (at reduced size when the chain starts with
    ``thumbnail``), run the chain, save atomically with the source's ICC profile."""
    source, chain, output = job
    image = load_image(source, draft_size=chain.draft_size)
    result = chain.apply(image, source)
    save_image(result, output, quality=quality, icc_profile=image.info.get("icc_profile"))
    return output


def list_jobs(src: Path, out: Path, specs: list[str]) -> list[Job]:
    """Every image x chain, named as ``run_images`` names its outputs; creates ``out``."""
    chains = [parse_chain(spec) for spec in specs]
    out.mkdir(parents=True, exist_ok=True)
    return [
        (str(path), chain, str(out / f"{path.stem}_{chain.label}{path.suffix}"))
        for path in sorted(src.glob("*.jpg"))
        for chain in chains
    ]


def worker_pid(_: int) -> int:
    """Warm-up item: import the image engine (as the first real job would), report the pid."""
    import batchcore.processors.images.jobs  # noqa: F401

    time.sleep(0.05)  # long enough that the other workers get the next items
    return os.getpid()


class Stopwatch:
    """``with watch:`` times the block (wall, tree CPU and page faults) into ``timed``."""

    def __init__(self, timed: Measured) -> None:
        self.timed = timed

    def __enter__(self) -> Stopwatch:
        self.cpu, self.faults = tree_usage()
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timed.seconds = time.perf_counter() - self.began
        cpu, faults = tree_usage()
        self.timed.details["cpu_seconds"] = round(cpu - self.cpu, 3)
        self.timed.details["minor_faults"] = faults - self.faults


def run_batchcore(engine: str, args: argparse.Namespace) -> Measured:
    import batchcore
    from batchcore.processors.images.jobs import run_images

    backend, grouped = BATCHCORE[engine]
    workers = None if backend == "sequential" else args.workers
    timed = Measured()
    try:
        began = time.perf_counter()
        if backend != "sequential":
            rounds = start_batchcore(
                backend, args.workers, worker_pid if backend == "process" else None
            )
            if rounds:
                timed.details["warmup_rounds"] = rounds
        timed.startup = time.perf_counter() - began
        with Stopwatch(timed):
            summary = run_images(
                args.src,
                args.out,
                args.filters,
                backend=backend,
                workers=workers,
                quality=args.quality,
                grouped=grouped,
            )
    finally:
        batchcore.shutdown()
    timed.result = {
        "jobs": len(summary.results),
        "ok": summary.ok,
        "failed": [f"{r.source} {r.filter}: {r.reason}" for r in summary.failed[:5]],
    }
    timed.details["run_images_seconds"] = round(summary.seconds, 3)
    return timed


def run_plain(args: argparse.Namespace) -> Measured:
    timed = Measured()
    by_filter: dict[str, float] = {}
    with Stopwatch(timed):
        jobs = list_jobs(args.src, args.out, args.filters)
        for job in jobs:
            began = time.perf_counter()
            process_job(job, args.quality)
            spec = job[1].spec
            by_filter[spec] = by_filter.get(spec, 0.0) + time.perf_counter() - began
    per_image = len(jobs) // max(len(by_filter), 1)
    timed.details["ms_per_job"] = {k: round(v * 1000 / per_image, 2) for k, v in by_filter.items()}
    timed.result = {"jobs": len(jobs), "ok": len(jobs), "failed": []}
    return timed


def run_tpe(args: argparse.Namespace) -> Measured:
    from concurrent.futures import ThreadPoolExecutor

    timed = Measured()
    began = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as executor:
        list(executor.map(time.sleep, [0.01] * args.workers))  # threads start on submit
        timed.startup = time.perf_counter() - began
        with Stopwatch(timed):
            jobs = list_jobs(args.src, args.out, args.filters)
            done = list(executor.map(partial(process_job, quality=args.quality), jobs))
    timed.result = {"jobs": len(jobs), "ok": len(done), "failed": []}
    return timed


def run_ppe(args: argparse.Namespace, chunksize: int) -> Measured:
    from concurrent.futures import ProcessPoolExecutor

    timed = Measured(details={"chunksize": chunksize})
    began = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as executor:
        rounds = warm_workers(lambda items: executor.map(worker_pid, items), args.workers)
        timed.startup = time.perf_counter() - began
        timed.details["warmup_rounds"] = rounds
        with Stopwatch(timed):
            jobs = list_jobs(args.src, args.out, args.filters)
            job = partial(process_job, quality=args.quality)
            done = list(executor.map(job, jobs, chunksize=chunksize))
    timed.result = {"jobs": len(jobs), "ok": len(done), "failed": []}
    return timed


def run_joblib(args: argparse.Namespace) -> Measured:
    from joblib import Parallel, delayed  # type: ignore[import-untyped]
    from joblib.externals.loky import get_reusable_executor  # type: ignore[import-untyped]

    timed = Measured()
    try:
        began = time.perf_counter()
        with Parallel(n_jobs=args.workers) as parallel:
            rounds = warm_workers(
                lambda items: parallel(delayed(worker_pid)(i) for i in items), args.workers
            )
            timed.startup = time.perf_counter() - began
            timed.details["warmup_rounds"] = rounds
            with Stopwatch(timed):
                jobs = list_jobs(args.src, args.out, args.filters)
                done = parallel(delayed(process_job)(job, args.quality) for job in jobs)
    finally:
        get_reusable_executor().shutdown(wait=True)  # loky's workers would idle for 300 s
    timed.result = {"jobs": len(jobs), "ok": len(done), "failed": []}
    return timed


def one(args: argparse.Namespace) -> int:
    """Child side: run one engine on one image set once and print one JSON line."""
    engine = args.one[0]
    if engine in BATCHCORE:
        timed = run_batchcore(engine, args)
    elif engine == "plain":
        timed = run_plain(args)
    elif engine == "tpe":
        timed = run_tpe(args)
    elif engine == "ppe":
        timed = run_ppe(args, 1)
    elif engine == "ppe-chunks":
        timed = run_ppe(args, args.ppe_chunksize)
    else:
        timed = run_joblib(args)
    emit(timed, engine=engine, set=args.one[1])
    return 0


# --- the parent: images, children, checks ------------------------------------------------------


def ensure_images(image_set: ImageSet, data_dir: Path) -> Path:
    """The set's folder of ``photo_NNNN.jpg``; generated with data/make_images.py if missing
    or different (a folder holding anything else is left alone: an error)."""
    folder = image_set.folder(data_dir)
    wanted = [f"photo_{i:04d}.jpg" for i in range(image_set.count)]
    if folder.is_dir():
        names = sorted(p.name for p in folder.iterdir())
        if names == wanted:
            with Image.open(folder / wanted[0]) as first:
                if first.size == (image_set.width, image_set.height):
                    return folder
        if not all(n.startswith("photo_") and n.endswith(".jpg") for n in names):
            raise SystemExit(f"{folder} holds other files; move it away or use --data-dir")
    partial_dir = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial_dir, ignore_errors=True)
    size = f"{image_set.width}x{image_set.height}"
    print(f"generating {folder} ({image_set.title}) with {MAKE_IMAGES.name}", flush=True)
    command = [sys.executable, str(MAKE_IMAGES), "--bench", str(image_set.count)]
    subprocess.run([*command, "--size", size, str(partial_dir)], check=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial_dir, folder)
    return folder


def output_dir(args: argparse.Namespace, image_set: ImageSet, engine: str) -> Path:
    return Path(args.data_dir, "images-out", image_set.key, engine)


def expected_outputs(folder: Path, specs: list[str]) -> list[str]:
    labels = [parse_chain(spec).label for spec in specs]
    return [f"{p.stem}_{label}{p.suffix}" for p in sorted(folder.glob("*.jpg")) for label in labels]


def hash_outputs(out: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``out`` (temporary files included)."""
    hashes = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            hashes[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def check_outputs(run: Run, out: Path, expected: list[str]) -> list[str]:
    """Every expected output written, nothing else left (no temporary files); keeps hashes."""
    hashes = hash_outputs(out)
    run.result["hashes"] = hashes
    problems = []
    missing = sorted(set(expected) - set(hashes))
    extra = sorted(set(hashes) - set(expected))
    if missing:
        problems.append(f"{len(missing)} output(s) missing, e.g. {missing[:3]}")
    temps = [name for name in extra if is_temp_name(Path(name).name)]
    if temps:
        problems.append(f"{len(temps)} temporary file(s) left, e.g. {temps[:3]}")
    if len(extra) > len(temps):
        problems.append(f"{len(extra) - len(temps)} unexpected file(s), e.g. {extra[:3]}")
    failed = run.result.get("failed") or []
    if failed or run.result.get("ok") != run.result.get("jobs"):
        problems.append(f"{run.result.get('ok')} of {run.result.get('jobs')} jobs ok: {failed}")
    return problems


def child_command(
    engine: str, image_set: ImageSet, args: argparse.Namespace, chunksize: int
) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--one", engine, image_set.key]
    command += ["--src", str(args.folders[image_set.key])]
    command += ["--out", str(output_dir(args, image_set, engine))]
    command += ["--workers", str(args.workers), "--quality", str(args.quality)]
    command += ["--ppe-chunksize", str(chunksize), "--filters", *args.filters]
    return command


def chunks_for(args: argparse.Namespace, image_set: ImageSet) -> int:
    if args.ppe_chunksize:
        return int(args.ppe_chunksize)
    jobs = image_set.count * len(args.filters)
    return max(1, jobs // (8 * int(args.workers)))


def run_all(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> list[str]:
    """Every repeat runs every (set, engine); engines take turns. Returns the problems."""
    problems = []
    for repeat in range(args.repeats):
        for image_set in args.sets:
            expected = expected_outputs(args.folders[image_set.key], args.filters)
            active = [e for e in args.engines if not cells[image_set.key, e].error]
            for engine in take_turns(active, repeat):
                out = output_dir(args, image_set, engine)
                shutil.rmtree(out, ignore_errors=True)
                time.sleep(args.pause)
                command = child_command(engine, image_set, args, chunks_for(args, image_set))
                run = run_child(
                    command, timeout=args.timeout, extra_env=args.env, interval=args.interval
                )
                if not run.error:
                    found = check_outputs(run, out, expected)
                    if found:
                        run.error = "; ".join(found)
                cells[image_set.key, engine].runs.append(run)
                if run.error:
                    problems.append(f"{image_set.title}: {ENGINES[engine]}: {run.error}")
                progress(
                    f"{image_set.key} repeat {repeat + 1}: {ENGINES[engine]}",
                    run,
                    f"{len(expected) / run.seconds:.1f} jobs/s",
                    f"other load {run.other_cores:.2f} cores",
                )
    return problems


@dataclass
class Comparison:
    """One engine's last outputs against the reference engine's, file by file."""

    files: int = 0
    identical: int = 0
    pixel_identical: int = 0  # bytes differ, decoded pixels do not
    differing: dict[str, list[tuple[str, int, float]]] = field(default_factory=dict)
    # chain label -> [(file, max level difference, mean absolute difference)]
    unstable: int = 0  # files whose bytes changed between this engine's repeats

    def summary(self) -> str:
        if not self.differing:
            return "-"
        parts = []
        for label, found in sorted(self.differing.items()):
            worst = max(d for _, d, _ in found)
            mean = statistics.fmean(m for _, _, m in found)
            parts.append(f"{label}: {len(found)} file(s), max {worst} levels, mean {mean:.3f}")
        return "; ".join(parts)


def pixel_difference(a: Path, b: Path) -> tuple[int, float]:
    """Max and mean absolute difference of two images' decoded pixels (-1: sizes/modes differ)."""
    with Image.open(a) as first, Image.open(b) as second:
        if first.size != second.size or first.mode != second.mode:
            return -1, math.nan
        x = np.asarray(first, dtype=np.int16)
        y = np.asarray(second, dtype=np.int16)
    diff = np.abs(x - y)
    return int(diff.max()), float(diff.mean())


def compare_outputs(
    args: argparse.Namespace, cells: dict[tuple[str, str], Cell]
) -> tuple[dict[tuple[str, str], Comparison], dict[str, str], list[str]]:
    """Every engine's outputs against the plain loop's (or the first engine's): returns the
    comparisons, the reference engine per set, and the problems (a difference anywhere but in
    the thumbnails of the decode-once node, which may decode differently, is one)."""
    comparisons: dict[tuple[str, str], Comparison] = {}
    references: dict[str, str] = {}
    problems = []
    labels = {parse_chain(spec).label: parse_chain(spec) for spec in args.filters}
    for image_set in args.sets:
        ran = [e for e in args.engines if cells[image_set.key, e].ok]
        if not ran:
            continue
        reference = "plain" if "plain" in ran else ran[0]
        references[image_set.key] = reference
        want = cells[image_set.key, reference].ok[-1].result["hashes"]
        for engine in ran:
            runs = cells[image_set.key, engine].ok
            got = runs[-1].result["hashes"]
            comparison = comparisons[image_set.key, engine] = Comparison(files=len(got))
            for run in runs[:-1]:
                comparison.unstable += sum(got.get(k) != v for k, v in run.result["hashes"].items())
            for name, digest in got.items():
                if want.get(name) == digest:
                    comparison.identical += 1
                    continue
                mine = output_dir(args, image_set, engine) / name
                theirs = output_dir(args, image_set, reference) / name
                worst, mean = pixel_difference(mine, theirs)
                if worst == 0:
                    comparison.pixel_identical += 1
                    continue
                label = next((k for k in labels if name.endswith(f"_{k}.jpg")), "?")
                comparison.differing.setdefault(label, []).append((name, worst, mean))
            if comparison.unstable:
                problems.append(
                    f"{image_set.title}: {ENGINES[engine]}: {comparison.unstable} output(s) "
                    "changed between repeats"
                )
            tolerated = BATCHCORE.get(engine, ("", False))[1]
            for label in comparison.differing:
                chain = labels.get(label)
                if tolerated and chain is not None and chain.draft_size is not None:
                    continue  # the decode-once node's thumbnails: reported, not failed
                problems.append(
                    f"{image_set.title}: {ENGINES[engine]} differs from {ENGINES[reference]} "
                    f"on {label}: {comparison.summary()}"
                )
    return comparisons, references, problems


# --- reporting ----------------------------------------------------------------------------------


def versions() -> list[str]:
    parts = package_versions(PACKAGES)
    with contextlib.suppress(Exception):
        from PIL import features

        parts.append(f"libjpeg-turbo {features.version('libjpeg_turbo')}")
    return parts


def label(engine: str, workers: int) -> str:
    if engine in POOLED:
        return f"{ENGINES[engine]} ({workers} workers)"
    return ENGINES[engine]


def ratio(cells: dict[tuple[str, str], Cell], key: str, engine: str, over: str) -> float:
    """How many times faster ``engine`` ran image set ``key`` than ``over``."""
    return speedup(cells.get((key, over)), cells.get((key, engine)))


def best_peer(args: argparse.Namespace, cells: dict[tuple[str, str], Cell], key: str) -> str | None:
    peers = [e for e in args.engines if e in PEERS and cells[key, e].ok]
    return min(peers, key=lambda e: cells[key, e].median()) if peers else None


def results_table(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> list[str]:
    head = ["engine"]
    for image_set in args.sets:
        k = image_set.key
        head += [f"{k} s", f"{k} jobs/s", f"{k} vs plain", f"{k} peak tree RSS MiB"]
    rows = []
    for engine in args.engines:
        row = [label(engine, args.workers)]
        for image_set in args.sets:
            cell = cells[image_set.key, engine]
            if not cell.ok:
                row += ["ERROR" if cell.error else "-", "-", "-", "-"]
                continue
            jobs = image_set.count * len(args.filters)
            vs_plain = ratio(cells, image_set.key, engine, "plain")
            row += [f"{cell.median():.2f}", f"{jobs / cell.median():.1f}", times(vs_plain)]
            row.append(f"{cell.peak():.0f}")
        rows.append(row)
    return table(head, rows)


def worst_ratios(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> dict[str, float]:
    """For each batchcore engine: its lowest speedup over the best peer across the image sets."""
    peers = {s.key: best_peer(args, cells, s.key) for s in args.sets}
    worst = {}
    for engine in (e for e in args.engines if e in BATCHCORE):
        ratios = [ratio(cells, s.key, engine, peers[s.key] or "") for s in args.sets]
        if ratios and not any(math.isnan(r) for r in ratios):
            worst[engine] = min(ratios)
    return worst


def target_line(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> str:
    """The issue's target for batchcore's best configuration: at least as fast as the best
    peer in the same run, on every image set."""
    worst = worst_ratios(args, cells)
    if not worst:
        return "Not judged: needs a batchcore engine and a peer that ran on every image set."
    best = max(worst, key=lambda e: worst[e])
    verdict = "**pass**" if worst[best] >= 1.0 else "**FAIL**"
    return (
        f"Best batchcore configuration: **{label(best, args.workers)}**, at worst "
        f"{worst[best]:.2f}x the best peer: {verdict} (target: >= 1.00x on every image set)."
    )


def target_section(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> list[str]:
    lines = ["", "## batchcore against the issue's target", ""]
    peers = {s.key: best_peer(args, cells, s.key) for s in args.sets}
    head = ["batchcore configuration"]
    head += [f"{key} vs best peer: {ENGINES[peer] if peer else '-'}" for key, peer in peers.items()]
    worst = worst_ratios(args, cells)
    rows = []
    for engine in (e for e in args.engines if e in BATCHCORE):
        ratios = [ratio(cells, key, engine, peer or "") for key, peer in peers.items()]
        verdict = "-" if engine not in worst else "pass" if worst[engine] >= 1.0 else "FAIL"
        rows.append([label(engine, args.workers), *map(times, ratios), verdict])
    lines += table([*head, "verdict"], rows, align="l" + "r" * len(peers) + "l")
    lines += [
        "",
        target_line(args, cells),
        "",
        "Ratio: the best peer's median seconds / the configuration's median seconds, both "
        "measured in this run with warm pools (start-up not included; it is listed below). "
        "The best peer is the fastest of the plain loop, ThreadPoolExecutor, both "
        "ProcessPoolExecutor variants and joblib on that image set.",
    ]
    return lines


def checks_section(
    args: argparse.Namespace,
    comparisons: dict[tuple[str, str], Comparison],
    references: dict[str, str],
) -> list[str]:
    lines = ["", "## Output checks (each engine's last run)", ""]
    head = ["set", "engine", "files", "byte-identical to reference", "pixel-identical only"]
    head.append("differing (by chain)")
    rows = []
    for image_set in args.sets:
        for engine in args.engines:
            comparison = comparisons.get((image_set.key, engine))
            if comparison is None:
                continue
            reference = " (reference)" if references[image_set.key] == engine else ""
            rows.append(
                [
                    image_set.key,
                    f"{ENGINES[engine]}{reference}",
                    comparison.files,
                    comparison.identical,
                    comparison.pixel_identical,
                    comparison.summary(),
                ]
            )
    lines += table(head, rows, align="llrrrl")
    lines += [
        "",
        "Every expected output (`<stem>_<chain label>.jpg`) must exist in the engine's own fresh "
        "folder, with no other file (no temporary file) beside it. Files that are not "
        "byte-identical to the reference's are decoded and compared pixel by pixel (levels "
        "0-255). Only the decode-once node's thumbnails may differ (a reduced-size JPEG decode); "
        "any other difference is an error.",
    ]
    return lines


def filter_section(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> list[str]:
    found = {s.key: cells[s.key, "plain"] for s in args.sets if cells[s.key, "plain"].ok}
    if not found:
        return []
    lines = ["", "## Per job in the plain loop (load + filter + save), ms", ""]
    rows = []
    for spec in [parse_chain(s).spec for s in args.filters]:
        row = [f"`{spec}`"]
        for cell in found.values():
            per = [run.details["ms_per_job"].get(spec, math.nan) for run in cell.ok]
            row.append(fmt(statistics.median(per), 1))
        rows.append(row)
    return lines + table(["chain", *found], rows)


def detail_section(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> list[str]:
    lines = ["", "## Every run: seconds (min-max), start-up, CPU, memory", ""]
    head = ["set", "engine", "median s (min-max)", "start-up s", "CPU s", "cores busy"]
    head += ["page faults / job", "other load, cores (max)", "child wall s", "peak tree RSS MiB"]
    head += ["peak anon MiB", "processes", "notes"]
    rows = []
    for image_set in args.sets:
        for engine in args.engines:
            cell = cells[image_set.key, engine]
            name = label(engine, args.workers)
            if not cell.ok:
                rows.append([image_set.key, name, "ERROR", *[""] * 10])
                continue
            cpu = cell.median_detail("cpu_seconds")
            faults = cell.median_detail("minor_faults") / (image_set.count * len(args.filters))
            processes = statistics.median(len(run.tree.processes) for run in cell.ok)
            notes = []
            for key in ("chunksize", "warmup_rounds"):
                if key in cell.ok[-1].details:
                    notes.append(f"{key.replace('_', ' ')} {cell.ok[-1].details[key]}")
            rows.append(
                [
                    image_set.key,
                    name,
                    cell.spread(),
                    fmt(cell.median("startup")),
                    fmt(cpu, 1),
                    fmt(cpu / cell.median()),
                    fmt(faults, 0),
                    fmt(max(run.other_cores for run in cell.ok)),
                    fmt(cell.median("wall")),
                    fmt(cell.peak(), 0),
                    fmt(cell.peak_anon(), 0),
                    f"{processes:g}",
                    ", ".join(notes),
                ]
            )
    lines += table(head, rows, align="ll" + "r" * 10 + "l")
    lines += [
        "",
        "Start-up: creating and warming the pool before the timed job (not in its seconds). "
        "CPU s: user + system seconds of the child and its workers during the timed job; "
        "cores busy = CPU s / seconds. Page faults: minor faults of the child and its workers "
        "during the job, per job (each is a fresh page touched; this VM makes them costly, see "
        "the anchors). Other load: the cores other processes on the machine kept busy during "
        "the run (machine busy time minus this benchmark's), highest over repeats. Child "
        "wall: the child process from start to exit (interpreter, imports, start-up, job, "
        "shutdown). Peak anon: the peak tree RSS without "
        "file-backed and shared pages, i.e. the data. Processes: how many processes the tree had "
        "(the child, its workers, loky's resource tracker).",
    ]
    return lines


def other_loads(cells: dict[tuple[str, str], Cell]) -> list[float]:
    """Every run's ``other_cores`` (how busy the rest of the machine was)."""
    loads = [run.other_cores for c in cells.values() for run in c.runs]
    return [load for load in loads if not math.isnan(load)]


def report(
    args: argparse.Namespace,
    header: list[str],
    cells: dict[tuple[str, str], Cell],
    comparisons: dict[tuple[str, str], Comparison],
    references: dict[str, str],
    problems: list[str],
) -> str:
    lines = ["# Images: batchcore's image jobs and the tools a user would pick instead", ""]
    lines += header
    lines += ["", "## Results", ""]
    if args.quick:
        lines += ["Smoke test (`--quick`): few images and one repeat; indicative only.", ""]
    busiest = max(other_loads(cells), default=0.0)
    if busiest > BUSY_CORES:
        lines += [
            f"**The machine was busy**: other processes kept up to {busiest:.2f} cores busy "
            "during some runs (see the last table); ratios are unreliable, run again when it "
            "is quiet.",
            "",
        ]
    lines += results_table(args, cells)
    lines += [
        "",
        "Seconds: median over repeats of the job's time in a fresh child process with a warm "
        "pool (imports and pool start-up excluded; listing the images and planning the jobs "
        "included). Jobs/s: images x chains / seconds. vs plain: the plain loop's median / the "
        "engine's (2.00x is the ceiling on 2 cores for engines doing the same work; decode once "
        "does less). Peak tree RSS: the highest sum of the RSS of the child and all its "
        f"descendants, sampled every {args.interval * 1000:.0f} ms (median over repeats; shared "
        "library pages count once per process, as RSS does).",
    ]
    lines += target_section(args, cells)
    lines += checks_section(args, comparisons, references)
    lines += filter_section(args, cells)
    lines += ["", "## How each engine runs", ""]
    lines += [f"- {label(e, args.workers)}: {HOW[e].format(q=args.quality)}" for e in args.engines]
    lines += detail_section(args, cells)
    if problems:
        lines += ["", "## Errors and mismatches", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sets",
        default=None,
        help=f"image sets COUNTxWxH,... (default {SETS}; --quick {QUICK_SETS})",
    )
    parser.add_argument("--only", default=None, help="image sets to run by key, e.g. 240p")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to run")
    parser.add_argument("--filters", nargs="+", default=FILTERS, metavar="SPEC")
    parser.add_argument("--quality", type=int, default=QUALITY, help="JPEG quality (85)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="workers of every pool")
    parser.add_argument(
        "--ppe-chunksize", type=int, default=0, help="ppe-chunks' chunksize (0: jobs / (8 x W))"
    )
    add_child_options(parser, pause=1.0, interval=0.02, env_example="PILLOW_BLOCKS_MAX=16")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="images and outputs")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the output folders")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SETS}, 1 repeat")
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "SET"), help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        chains = [parse_chain(spec) for spec in args.filters]
    except FilterSpecError as exc:
        parser.error(f"--filters: {exc}")
    if args.one:
        if args.one[0] not in ENGINES or args.src is None or args.out is None:
            parser.error(f"--one ENGINE SET needs --src and --out; engines {sorted(ENGINES)}")
        args.ppe_chunksize = max(1, args.ppe_chunksize)
        return args
    args.chains = chains
    args.env = parse_env(args.env, parser)
    args.engines = parse_list(parser, "--engines", args.engines, ENGINES)
    try:
        args.sets = parse_sets(args.sets or (QUICK_SETS if args.quick else SETS))
    except ValueError as exc:
        parser.error(f"--sets: {exc}")
    if args.only:
        only = [k.strip() for k in args.only.split(",") if k.strip()]
        known = [s.key for s in args.sets]
        if not only or set(only) - set(known):
            parser.error(f"--only: unknown {sorted(set(only) - set(known))}; sets are {known}")
        args.sets = [s for s in args.sets if s.key in only]
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.pause = args.pause if args.pause is not None else (0.2 if args.quick else 1.0)
    args.timeout = args.timeout or (120.0 if args.quick else 900.0)
    check_counts(parser, args)
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be from 1 to 100, got {args.quality}")
    if args.output is None:
        partial_run = args.only or args.sets != parse_sets(QUICK_SETS if args.quick else SETS)
        partial_run = partial_run or args.engines != list(ENGINES) or args.filters != FILTERS
        args.output = default_output("images", args.quick, args.env, bool(partial_run))
    return args


def describe_chains(chains: list[FilterChain]) -> str:
    """Each chain's spec, the registry function(s) it calls with their arguments, and what
    the registry says they do: ``blur:radius=2`` = ``blur(radius=2.0)``, Gaussian blur..."""
    parts = []
    for chain in chains:
        calls, docs = [], []
        for step in chain.steps:
            kwargs = ", ".join(f"{k}={v!r}" for k, v in step.kwargs)
            calls.append(f"{step.function.__name__}({kwargs})")
            docs.append(get_filter(step.name).doc.rstrip(".").replace("``", "`"))
        text = f"`{chain.spec}` = `{' | '.join(calls)}`: {'; '.join(docs)}"
        if chain.draft_size is not None:
            text += f" (JPEG draft decode to >= {chain.draft_size[0]}x{chain.draft_size[1]})"
        parts.append(text)
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return one(args)
    session = Session.start()
    blur = next((c for c in args.chains if c.steps[0].name == "blur"), None)
    if blur is not None and dict(blur.steps[0].kwargs).get("radius", 2.0) != 2.0:
        print("note: blur is not radius 2 as in the anchors", file=sys.stderr)
    args.folders = {s.key: ensure_images(s, args.data_dir) for s in args.sets}
    cells = {(s.key, e): Cell() for s in args.sets for e in args.engines}
    parent_cpu = time.process_time()
    print(f"{args.repeats} repeat(s), pause {args.pause:g} s, workers {args.workers}", flush=True)
    try:
        problems = run_all(args, cells)
    except KeyboardInterrupt:
        print("interrupted: the running child and its workers were killed", file=sys.stderr)
        return 130
    parent_cpu = time.process_time() - parent_cpu
    comparisons, references, found = compare_outputs(args, cells)
    problems += found
    problems += leftover_problems()
    if not args.keep_outputs:
        shutil.rmtree(args.data_dir / "images-out", ignore_errors=True)

    set_lines = []
    for image_set in args.sets:
        folder = args.folders[image_set.key]
        size = sum(p.stat().st_size for p in folder.glob("*.jpg"))
        jobs = image_set.count * len(args.filters)
        set_lines.append(f"{image_set.title} (`{folder}`, {size / 1e6:.0f} MB; {jobs} jobs)")
    outputs = args.data_dir / "images-out"
    start_method = multiprocessing.get_start_method()
    header = session.header(
        versions(), f"multiprocessing start method `{start_method}` (ProcessPoolExecutor)"
    )
    header += [
        "- Image sets: " + "; ".join(set_lines) + " (photo-like JPEGs, quality 90, from "
        "`data/make_images.py --bench N --size WxH`)",
        f"- Jobs: every image x {describe_chains(args.chains)} -> JPEG quality {args.quality}, "
        f"each engine into its own fresh folder under `{outputs}`"
        + ("" if args.keep_outputs else " (removed at the end)"),
        "- Load path (all engines): `batchcore.processors.images.io.load_image` (with "
        "`draft_size=chain.draft_size`: a JPEG draft decode for a chain that starts with "
        "`thumbnail`, as Pillow's own `thumbnail()` does on a freshly opened JPEG) -> "
        f"`FilterChain.apply` (the registry's filters) -> `save_image(quality={args.quality})`",
        f"- Method: every (engine, set) run in a fresh child process after a {args.pause:g} s "
        f"pause; pools started and warmed before timing; {args.repeats} repeat(s), medians; "
        f"engines take turns within each repeat; workers: {args.workers}",
        f"- Children's extra environment: {env_line(args.env)}",
        sampler_line(cells.values(), args.interval, parent_cpu) + " (hashing outputs included)",
        "- Other load: other processes on the machine kept "
        f"{statistics.median(other_loads(cells) or [math.nan]):.2f} cores busy (median over "
        f"runs), {max(other_loads(cells), default=math.nan):.2f} at most",
        "- Outputs: every expected file present, compared with the reference's (sha256, then "
        "pixels); " + (f"{len(problems)} problem(s), see the end" if problems else "all agree"),
    ]
    write_report(args.output, report(args, header, cells, comparisons, references, problems))
    print(target_line(args, cells))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
