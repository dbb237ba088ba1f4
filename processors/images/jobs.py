"""The image job: every image under SRC times every filter chain, each written to
``OUT/<relative folder>/<stem>_<chain label>.<ext>``; ``run_images`` is what the CLI runs.

Two shapes run the same jobs, with pixel-identical outputs on every backend:

- ``ImageJobsNode``, a ``BatchNode`` whose items are images, each with all of its jobs: the
  image is decoded once and every chain runs on that one decode (a chain that starts with
  ``thumbnail`` gets its own reduced-size JPEG decode, which is cheaper still);
- ``ImageBatchFlow``, a ``BatchFlow``: ``LoadImage -> ApplyFilter -> SaveImage`` once per
  ``{input, filter}`` params dict, passing the image through ``shared["image"]`` and
  ``shared["filtered_image"]``, which stay in the worker; only ``shared["image_dropped"]``
  (what an output format could not hold) comes back (``shared_outputs``).

Both report one ``JobResult`` per job and fail only the jobs a bad file, filter or write touches.
Every frame of an animation (every page of a TIFF) goes through the chain; when the output
format cannot hold them all, the result says what was dropped (``JobResult.dropped``). Filter
outputs are capped by ``max_pixels`` like inputs, and outputs are written under OUT without
following symlinks (``io.save_image`` with ``root``).
``plan_images`` checks everything before any work: filter specs, the output format, output
paths that would leave OUT, two jobs writing one file, an output that would overwrite an input.

SRC and OUT may be URLs (``s3://bucket/photos/``): the parent lists SRC (keys keep their
relative folders, as local paths do), each worker reads its own objects and writes each output
in one PUT; ``skip_existing`` checks OUT's objects, from one listing.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batchcore import (
    BaseNode,
    BatchFlow,
    BatchNode,
    Flow,
    ItemTimeoutError,
    Node,
    WorkerCrashedError,
)

from ..errors import FilterError, ImageDecodeError, ImagesUsageError, ImageWriteError
from ..files import remove_stale_temps
from ..outputs import check_key, existing_objects, is_remote, join_url, key_of, local_part
from ..resume import cache_journal
from ..storage import Source, StorageOptions, expand, filesystem, protect_options, protocol_of
from .filters import FilterChain, Size, check_output_size, parse_chain, parse_chains
from .io import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_QUALITY,
    FORMATS,
    Frames,
    decode_frames,
    discover_images,
    discover_remote_images,
    is_image_name,
    load_frames,
    output_format,
    save_image,
)

__all__ = [
    "ApplyFilter",
    "ImageBatchFlow",
    "ImageGroup",
    "ImageJob",
    "ImageJobsNode",
    "ImagesPlan",
    "ImagesSummary",
    "JobResult",
    "LoadImage",
    "SaveImage",
    "apply_chain",
    "create_base_flow",
    "plan_images",
    "prepare_outputs",
    "run_images",
]


# --- jobs and results --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageJob:
    """One output: ``source`` through ``chain`` into ``output`` (a Pillow ``format``), never
    written outside the folder ``root`` ("": ``output``'s own folder). ``source`` and ``output``
    may be URLs: ``size`` is then the source object's and ``options`` reach both stores."""

    source: str
    chain: FilterChain
    output: str
    format: str
    root: str = ""
    size: int = -1
    options: StorageOptions = field(default_factory=dict, compare=False, repr=False)
    version: str = field(default="", compare=False)  # a source object's ETag... (its listing's)

    @property
    def filter(self) -> str:
        return self.chain.spec

    @property
    def input(self) -> str | Source:
        """What the worker decodes: the local path, or the object (read there, by ranged GETs)."""
        if not is_remote(self.source):
            return self.source
        if self.size < 0:  # a job made by hand: its size is read here (one HEAD)
            return expand(self.source, self.options)[0]
        return Source(self.source, self.size, self.options)


@dataclass(frozen=True)
class ImageGroup:
    """The items of ``ImageJobsNode``: one source image and all of its jobs."""

    source: str
    jobs: tuple[ImageJob, ...]


@dataclass(frozen=True)
class JobResult:
    """What became of one job: ``ok``, or the ``reason`` it failed (naming the file);
    ``dropped`` says what of the source the output format could not hold (frames, timing)."""

    source: str
    filter: str
    output: str
    ok: bool
    reason: str = ""
    dropped: str = ""

    @classmethod
    def done(cls, job: ImageJob, dropped: str = "") -> JobResult:
        return cls(job.source, job.filter, job.output, True, dropped=dropped)

    @classmethod
    def failed(cls, job: ImageJob, reason: str) -> JobResult:
        return cls(job.source, job.filter, job.output, False, reason)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "filter": self.filter,
            "output": self.output,
            "reason": self.reason,
        }

    def dropped_json(self) -> dict[str, str]:
        """An entry of the CLI's ``--json`` ``dropped`` list."""
        return {
            "source": self.source,
            "filter": self.filter,
            "output": self.output,
            "dropped": self.dropped,
        }


def group_jobs(jobs: Iterable[ImageJob]) -> list[ImageGroup]:
    """Jobs grouped by source image, in first-seen order (jobs keep their order too)."""
    groups: dict[str, list[ImageJob]] = {}
    for job in jobs:
        groups.setdefault(job.source, []).append(job)
    return [ImageGroup(source, tuple(members)) for source, members in groups.items()]


def failure_reason(source: str, exc: BaseException) -> str:
    """One line for a failed job: our own errors already name the file; others get it added."""
    if isinstance(exc, ImageDecodeError | FilterError | ImageWriteError):
        return str(exc)
    if isinstance(exc, WorkerCrashedError):
        return f"{source}: the worker process crashed on this image ({exc})"
    if isinstance(exc, ItemTimeoutError):
        return f"{source}: timed out ({exc})"
    return f"{source}: {type(exc).__name__}: {exc}"


# --- the decode-once node ----------------------------------------------------------------------


class _Decoder:
    """Decodes of one source, made on demand and kept for its other chains: one full decode,
    plus one reduced-size decode per thumbnail size when the source is a JPEG."""

    def __init__(self, source: str | Source, max_pixels: int | None) -> None:
        self.source = source
        self.max_pixels = max_pixels
        self.jpeg: bool | None = None  # unknown until the first decode
        self.images: dict[Size | None, Frames | ImageDecodeError] = {}

    def image(self, draft_size: Size | None) -> Frames:
        key = None if self.jpeg is False else draft_size  # only JPEG decodes at reduced size
        if key not in self.images:
            try:
                image, self.jpeg = decode_frames(
                    self.source, max_pixels=self.max_pixels, draft_size=key
                )
                self.images[key] = image
            except ImageDecodeError as exc:
                self.images[key] = exc
        found = self.images[key]
        if isinstance(found, ImageDecodeError):
            raise found
        return found


def apply_chain(
    chain: FilterChain, frames: Frames, source: str, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Frames:
    """``chain`` on every frame; ``max_pixels`` caps each step's output and, from the first
    frame's output size, all the frames' together (before the others are filtered)."""
    first = chain.apply(frames.first, source, max_pixels)
    if len(frames) > 1:
        check_output_size(source, chain.steps[-1], first.size, max_pixels, frames=len(frames))
    rest = [chain.apply(image, source, max_pixels) for image in frames.images[1:]]
    return replace(frames, images=(first, *rest))


def run_job(
    job: ImageJob,
    image_for: Callable[[Size | None], Frames],
    quality: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> JobResult:
    """Decode (through ``image_for``), filter and save one job; failures become its result."""
    try:
        frames = image_for(job.chain.draft_size)
        result = apply_chain(job.chain, frames, job.source, max_pixels)
        dropped = save_image(
            result,
            job.output,
            fmt=job.format,
            quality=quality,
            icc_profile=frames.first.info.get("icc_profile"),
            root=job.root or None,
            storage_options=job.options,
        )
    except Exception as exc:  # one bad file, filter or write fails only this job
        return JobResult.failed(job, failure_reason(job.source, exc))
    return JobResult.done(job, dropped)


class ImageJobsNode(BatchNode):
    """Runs image jobs grouped by source, so each image is decoded once for all its chains.

    Items are ``ImageGroup``s; ``exec`` returns one ``JobResult`` per job and never raises for
    a bad input, filter or write; a worker crash fails the jobs of the image it was on. ``post``
    writes every result, in job order, to ``shared["image_results"]``.
    """

    releases_gil = True  # Pillow decodes, filters and encodes without the GIL: auto picks threads

    on_error = "collect"
    progress_unit = "job"
    progress_label = ""  # the progress bar's label: SRC's last part ("images"), from run_images

    def __init__(
        self,
        jobs: Iterable[ImageJob] = (),
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        quality: int = DEFAULT_QUALITY,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.jobs = list(jobs)
        self.max_pixels = max_pixels
        self.quality = quality
        self.existing_outputs: set[str] | None = None  # a URL output's objects, listed once

    def progress_units(self, group: ImageGroup) -> int:
        return len(group.jobs)

    def checkpoint_key(self, group: ImageGroup) -> Any:
        """What names an image's jobs across runs (``checkpoint=``): the source's path or URL,
        size and version (mtime, ETag...), and each job's chain, output and format. So an
        image rewritten since, or given other filters, runs again."""
        first = group.jobs[0]
        size, version = first.size, first.version
        if not is_remote(first.source):
            try:
                info = os.stat(first.source)
                size, version = info.st_size, str(info.st_mtime_ns)
            except OSError:  # gone: its jobs fail in the worker, saying so
                version = "missing"
        jobs = tuple((job.filter, job.output, job.format) for job in group.jobs)
        return (group.source, size, version, jobs)

    def checkpoint_fingerprint(self) -> str:
        return f"quality={self.quality} max_pixels={self.max_pixels}"

    def checkpoint_usable(self, group: ImageGroup, results: list[JobResult]) -> bool:
        """A recorded image is done only if every job succeeded and its output is still
        there: a deleted output, or a failed job, runs again."""
        return all(result.ok and self._exists(result.output) for result in results)

    def _exists(self, output: str) -> bool:
        if not is_remote(output):
            return os.path.isfile(output)
        if self.existing_outputs is not None:
            return output in self.existing_outputs
        options = self.jobs[0].options if self.jobs else None
        return bool(filesystem(output, options).exists(output))

    def prep(self, shared: dict[str, Any]) -> list[ImageGroup]:
        return group_jobs(self.jobs)

    def exec(self, group: ImageGroup) -> list[JobResult]:
        decoder = _Decoder(group.jobs[0].input, self.max_pixels)
        return [run_job(job, decoder.image, self.quality, self.max_pixels) for job in group.jobs]

    def post(
        self, shared: dict[str, Any], prep_res: list[ImageGroup], exec_res: list[list[JobResult]]
    ) -> str:
        # on_error="collect": exec_res holds the groups that ran, batch_stats the ones that did
        # not (a crashed worker, a timeout); results go back in job order either way
        failed = {failure.index: failure.exception for failure in self.batch_stats.failures}
        ran = iter(exec_res)
        results: list[JobResult] = []
        for index, group in enumerate(prep_res):
            if index in failed:
                reason = failure_reason(group.source, failed[index])
                results.extend(JobResult.failed(job, reason) for job in group.jobs)
            else:
                results.extend(next(ran))
        shared["image_results"] = results
        return "default"


# --- one job per run: LoadImage -> ApplyFilter -> SaveImage in a BatchFlow ---------------------


def as_chain(spec: FilterChain | str) -> FilterChain:
    """``params["filter"]`` as a chain: already parsed, or a spec such as ``"grayscale"``."""
    return spec if isinstance(spec, FilterChain) else parse_chain(spec)


class LoadImage(Node):
    """Decodes ``self.params["input"]`` (checked, upright, working mode, every frame) to
    ``shared["image"]``, a ``Frames``."""

    def __init__(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__()
        self.max_pixels = max_pixels

    def prep(self, shared: dict[str, Any]) -> tuple[str | Source, Size | None]:
        path = self.params.get("read", self.params["input"])  # "read": a URL's Source
        return path, as_chain(self.params["filter"]).draft_size

    def exec(self, inputs: tuple[str | Source, Size | None]) -> Frames:
        path, draft_size = inputs
        return load_frames(path, max_pixels=self.max_pixels, draft_size=draft_size)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Frames) -> str:
        shared["image"] = exec_res
        return "apply_filter"


class ApplyFilter(Node):
    """Runs ``self.params["filter"]`` (a chain or a spec) on every frame of ``shared["image"]``,
    each output capped at ``max_pixels``."""

    def __init__(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__()
        self.max_pixels = max_pixels

    def prep(self, shared: dict[str, Any]) -> tuple[Frames, FilterChain | str]:
        return shared["image"], self.params["filter"]

    def exec(self, inputs: tuple[Frames, FilterChain | str]) -> Frames:
        frames, spec = inputs
        return apply_chain(as_chain(spec), frames, self.params["input"], self.max_pixels)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Frames) -> str:
        shared["filtered_image"] = exec_res
        return "save"


class SaveImage(Node):
    """Writes ``shared["filtered_image"]`` to ``self.params["output"]``, atomically, inside
    ``self.params["root"]`` when given; what the format dropped goes to
    ``shared["image_dropped"][output]``."""

    def __init__(self, quality: int = DEFAULT_QUALITY) -> None:
        super().__init__()
        self.quality = quality

    def prep(self, shared: dict[str, Any]) -> tuple[Frames, bytes | None, dict[str, Any]]:
        profile = shared["image"].first.info.get("icc_profile")
        return shared["filtered_image"], profile, self.params

    def exec(self, inputs: tuple[Frames, bytes | None, dict[str, Any]]) -> str:
        frames, profile, params = inputs
        return save_image(
            frames,
            params["output"],
            fmt=params.get("format"),
            quality=self.quality,
            icc_profile=profile,
            root=params.get("root") or None,
            storage_options=params.get("storage_options"),
        )

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> str:
        if exec_res:
            shared.setdefault("image_dropped", {})[self.params["output"]] = exec_res
        return "default"


def create_base_flow(
    max_pixels: int | None = DEFAULT_MAX_PIXELS, quality: int = DEFAULT_QUALITY
) -> Flow:
    """The sub-flow for one image and one filter: load, apply the filter, save."""
    load = LoadImage(max_pixels)
    filter_node = ApplyFilter(max_pixels)
    save = SaveImage(quality)
    load - "apply_filter" >> filter_node
    filter_node - "save" >> save
    return Flow(start=load)


class ImageBatchFlow(BatchFlow):
    """The per-job flow: the sub-flow once per ``{input, filter, output, format}``.

    ``start`` defaults to ``create_base_flow(max_pixels, quality)``. A failing run fails only
    its job; ``post`` writes every result, in job order, to ``shared["image_results"]``.
    """

    # Its runs' results are built from sub-flows' writes: ImageJobsNode (the default) resumes.
    checkpoint_refused = (
        "its jobs are one sub-flow each; run the grouped job (ImageJobsNode, no --per-job) "
        "to resume"
    )

    releases_gil = True  # as ImageJobsNode: the sub-flows' work is Pillow's

    shared_outputs = ("image_dropped",)  # the decoded images are scratch: they stay in the worker
    on_error = "collect"
    progress_unit = "job"
    progress_label = ""  # as ImageJobsNode's

    def __init__(
        self,
        start: BaseNode | None = None,
        *,
        jobs: Iterable[ImageJob] = (),
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        quality: int = DEFAULT_QUALITY,
        **options: Any,
    ) -> None:
        super().__init__(start or create_base_flow(max_pixels, quality), **options)
        self.jobs = list(jobs)

    def prep(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "input": job.source,
                "filter": job.chain,
                "output": job.output,
                "format": job.format,
                "root": job.root,
                "read": job.input,
                "storage_options": job.options,
            }
            for job in self.jobs
        ]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared.pop("image", None)  # on the sequential backend the runs shared the caller's dict
        shared.pop("filtered_image", None)
        dropped: dict[str, str] = shared.pop("image_dropped", None) or {}
        failed = {failure.index: failure.exception for failure in self.batch_stats.failures}
        shared["image_results"] = [
            JobResult.failed(job, failure_reason(job.source, failed[index]))
            if index in failed
            else JobResult.done(job, dropped.get(job.output, ""))
            for index, job in enumerate(self.jobs)
        ]
        return "default"


# --- planning ----------------------------------------------------------------------------------


@dataclass
class ImagesPlan:
    """Every job of a run, checked; ``skipped`` are those whose output already exists.
    ``src`` and ``out`` are paths, or URLs (text)."""

    src: Path | str
    out: Path | str
    chains: list[FilterChain]
    jobs: list[ImageJob] = field(default_factory=list)
    skipped: list[ImageJob] = field(default_factory=list)

    @property
    def remote_out(self) -> bool:
        return isinstance(self.out, str)

    @property
    def folders(self) -> list[Path]:
        """The local output folders of the plan's jobs (skipped ones included); none for a URL."""
        if self.remote_out:
            return []
        return sorted({Path(job.output).parent for job in [*self.jobs, *self.skipped]})


# An image found: a local file or an object, and its folder relative to SRC ("/"-separated).
_Found = tuple[Path | Source, str]


def _find_sources(src: str, out: str, options: StorageOptions) -> tuple[list[_Found], Path | str]:
    """The images under ``src`` (a path or a URL), each with its relative folder; the output
    folder (or prefix) is left out when it lies inside ``src``, and refused when it is ``src``."""
    same_store = is_remote(out) and protocol_of(out) == protocol_of(src)
    if is_remote(src):
        if same_store and key_of(src, options) == key_of(out, options):
            raise ImagesUsageError(
                f"the output prefix {out} is the source prefix; choose another one "
                "(a prefix inside it is fine: it is left out of the inputs)"
            )
        found = discover_remote_images(src, options, exclude=out if same_store else None)
        return [(source, folder) for source, folder in found], src
    if GLOB.search(src):
        return _glob_sources(src, out), src
    src_path = Path(src)
    if not src_path.exists():
        raise FileNotFoundError(2, "no such file or folder", str(src_path))
    if is_remote(out):
        local = discover_images(src_path)
    else:
        if src_path.is_dir() and Path(os.path.realpath(src_path)) == Path(os.path.realpath(out)):
            raise ImagesUsageError(
                f"the output folder {out} is the source folder; choose another one "
                "(a folder inside it is fine: it is left out of the inputs)"
            )
        local = discover_images(src_path, exclude=Path(out))
    return [(path, relative.as_posix()) for path, relative in local], src_path


GLOB = re.compile(r"[*?\[]")


def _glob_sources(pattern: str, out: str) -> list[_Found]:
    """The images a local glob matches (``photos/2024-*/*.jpg``), each with its folder relative
    to the pattern's fixed part (``photos``), the output folder left out."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if GLOB.search(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    excluded = os.path.realpath(out) if not is_remote(out) else None
    found: list[_Found] = []
    for name in sorted(glob.glob(pattern, recursive=True)):
        path = Path(name)
        hidden = any(part.startswith(".") for part in path.relative_to(base).parts)
        if not path.is_file() or hidden or not is_image_name(path.name):
            continue
        real = os.path.realpath(path)
        if excluded is not None and (real + os.sep).startswith(excluded + os.sep):
            continue
        found.append((path, path.parent.relative_to(base).as_posix()))
    if not found:
        raise FileNotFoundError(2, "no image matches this pattern", pattern)
    return found


def _name_of(source: Path | Source) -> str:
    return source.name if isinstance(source, Path) else source.url.rsplit("/", 1)[-1]


def plan_images(
    src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    filters: str | Iterable[str],
    *,
    fmt: str | None = None,
    skip_existing: bool = False,
    storage_options: StorageOptions | None = None,
) -> ImagesPlan:
    """Every (image, chain) job with its output path, checked before any work; writes nothing.

    ``src`` and ``out`` may be URLs (``storage_options`` reach them): a source prefix is listed
    (no image is read), and an output prefix is listed once for ``skip_existing``.
    Raises ``FilterSpecError`` (a bad filter), ``FileNotFoundError`` (no SRC),
    ``NotADirectoryError`` (OUT is a file) or ``ImagesUsageError`` (no images; a path that
    would leave OUT, ``..`` in a key included; two jobs writing one file; an output overwriting
    an input).
    """
    chains = parse_chains([filters] if isinstance(filters, str) else filters)
    if not chains:
        raise ImagesUsageError("no filter given")
    ext = None if fmt is None else fmt.lower().lstrip(".")
    if ext is not None:
        output_format(ext)
    options = protect_options(storage_options)
    srcs = [src] if isinstance(src, str | os.PathLike) else list(src)
    if not srcs:
        raise ImagesUsageError("no source given")
    out_text = local_part(os.fspath(out))
    remote_out = is_remote(out_text)
    out_path = Path(out_text)
    if not remote_out and out_path.exists() and not out_path.is_dir():
        raise NotADirectoryError(20, "exists and is not a folder", str(out_path))
    sources: list[_Found] = []
    given: list[Path | str] = []
    for each in srcs:
        found, as_given = _find_sources(local_part(os.fspath(each)), out_text, options)
        sources += found
        given.append(as_given)
    src_as_given = given[0] if len(given) == 1 else ", ".join(map(str, given))
    if not sources:
        raise ImagesUsageError(
            f"{src_as_given}: no images found (looked for {', '.join(sorted(FORMATS))}, "
            "skipping hidden files)"
        )
    inputs = {
        os.path.realpath(source) if isinstance(source, Path) else source.url
        for source, _ in sources
    }
    existing = existing_objects(out_text, options) if remote_out and skip_existing else set()
    real_out = Path(os.path.realpath(out_path))
    # Jobs name absolute paths: a worker's current folder (a Dask worker started elsewhere)
    # is not the caller's. The plan keeps OUT as given, for the summary.
    abs_out = Path(os.path.abspath(out_path))
    claimed: dict[str, ImageJob] = {}
    plan = ImagesPlan(src_as_given, out_text if remote_out else out_path, chains)
    for source, relative in sources:
        name = _name_of(source)
        source_text = os.path.abspath(source) if isinstance(source, Path) else source.url
        stem, dot_suffix = os.path.splitext(name)
        suffix = ext or dot_suffix[1:]
        if relative != ".":
            try:
                check_key(relative, source_text)
            except ValueError as exc:
                raise ImagesUsageError(f"{exc}: its outputs would leave {out_text}") from None
        if not remote_out:
            folder = abs_out / relative
            real_folder = Path(os.path.realpath(folder))
            if not real_folder.is_relative_to(real_out):
                raise ImagesUsageError(
                    f"{folder} resolves to {real_folder}, outside the output folder {out_path} "
                    "(a symlink?); refusing to write there"
                )
        for chain in chains:
            file_name = f"{stem}_{chain.label}.{suffix}"
            if remote_out:
                output = join_url(out_text, relative, file_name)
                key = real = output  # keys are case-sensitive on object stores
            else:
                local_output = folder / file_name
                output = str(local_output)
                real_path = real_folder / file_name
                if local_output.is_symlink():
                    real_path = Path(os.path.realpath(local_output))
                    if not real_path.is_relative_to(real_out):
                        raise ImagesUsageError(
                            f"{output} is a symlink to {real_path}, outside the output folder "
                            f"{out_path}"
                        )
                real = str(real_path)
                key = real.casefold()  # names differing only in case collide on macOS/Windows
            job = ImageJob(
                source_text,
                chain,
                output,
                output_format(suffix),
                out_text if remote_out else str(abs_out),
                source.size if isinstance(source, Source) else -1,
                options,
                source.version if isinstance(source, Source) else "",
            )
            if key in claimed:
                raise ImagesUsageError(
                    f"{claimed[key].source} and {source_text} would both be written to {output} "
                    f"(filter {chain.spec!r}); rename one, or choose another --format"
                )
            if real in inputs:
                raise ImagesUsageError(f"{output} would overwrite the input image {real}")
            claimed[key] = job
            exists = output in existing if remote_out else os.path.isfile(output)
            if skip_existing and exists:
                plan.skipped.append(job)
            else:
                plan.jobs.append(job)
    return plan


def prepare_outputs(plan: ImagesPlan) -> int:
    """Create the output folders and remove temporary files interrupted runs left in them;
    returns how many were removed. Nothing to do for a URL: objects need no folders."""
    removed = 0
    for folder in plan.folders:
        folder.mkdir(parents=True, exist_ok=True)
        removed += remove_stale_temps(folder)
    return removed


# --- the job -----------------------------------------------------------------------------------


@dataclass
class ImagesSummary:
    """A finished run: one result per job run, how many were skipped, time and throughput."""

    results: list[JobResult]
    skipped: int
    seconds: float
    backend: str = ""
    workers: int = 0
    backend_reason: str = ""  # why this backend, when batchcore chose it (backend="auto")
    resumed: int = 0  # images whose results came from the resume journal
    checkpoint: str = ""  # that journal's path, with ``resume``

    @property
    def ok(self) -> int:
        return sum(result.ok for result in self.results)

    @property
    def failed(self) -> list[JobResult]:
        return [result for result in self.results if not result.ok]

    @property
    def dropped(self) -> list[JobResult]:
        """The jobs whose output format could not hold all of the source (frames, timing)."""
        return [result for result in self.results if result.ok and result.dropped]

    @property
    def jobs_per_second(self) -> float:
        return len(self.results) / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """The CLI's ``--json`` object."""
        return {
            "ok": self.ok,
            "failed": [result.as_json() for result in self.failed],
            "dropped": [result.dropped_json() for result in self.dropped],
            "skipped": self.skipped,
            "jobs": len(self.results) + self.skipped,
            "seconds": round(self.seconds, 6),
            "jobs_per_second": round(self.jobs_per_second, 3),
            "backend": self.backend,
            "workers": self.workers,
            "backend_reason": self.backend_reason,
            **({"checkpoint": self.checkpoint_json()} if self.checkpoint else {}),
        }

    def checkpoint_json(self) -> dict[str, Any]:
        return {"path": self.checkpoint, "resumed_images": self.resumed}


def run_images(
    src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    filters: str | Iterable[str],
    *,
    backend: str | None = None,
    workers: int | None = None,
    fmt: str | None = None,
    quality: int = DEFAULT_QUALITY,
    skip_existing: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    grouped: bool = True,
    storage_options: StorageOptions | None = None,
    resume: bool = False,
) -> ImagesSummary:
    """Apply every filter chain to every image under ``src``, writing into ``out``.

    Outputs are ``out/<relative folder>/<stem>_<chain label>.<ext>`` (``ext`` from the input
    unless ``fmt``). Usage problems raise before any work (see ``plan_images``); a bad image,
    filter or write fails only its own jobs, reported in the summary. ``grouped=False`` runs
    the per-job ``ImageBatchFlow`` (one decode per job) instead of ``ImageJobsNode``.

    ``src`` and ``out`` may be URLs (``s3://bucket/photos/``; ``storage_options`` reach them):
    the parent only lists the source prefix; each worker reads its own objects (ranged GETs)
    and writes each output in one PUT, so an output object appears whole or not at all.

    ``resume``: a journal (``checkpoint=``; ``OUT/.batchcore-resume.sqlite``, or under the cache
    folder for a URL output) records each finished image; a rerun with ``resume`` runs only the
    images not recorded, or whose source changed, or whose outputs are gone, or that failed.
    """
    began = time.perf_counter()
    if resume and not grouped:
        raise ImagesUsageError(
            "resuming runs the grouped job (one decode per image): drop grouped=False / --per-job"
        )
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be a whole number from 1 to 100, got {quality!r}")
    if max_pixels is not None and (isinstance(max_pixels, bool) or max_pixels < 1):
        raise ValueError(f"max_pixels must be >= 1 or None (no limit), got {max_pixels!r}")
    plan = plan_images(
        src, out, filters, fmt=fmt, skip_existing=skip_existing, storage_options=storage_options
    )
    prepare_outputs(plan)
    options: dict[str, Any] = {"backend": backend, "workers": workers, "progress": progress}
    shared: dict[str, Any] = {}
    runner: ImageJobsNode | ImageBatchFlow
    if resume:
        options["checkpoint"] = _journal(plan, fmt, quality, max_pixels)
    if grouped:
        runner = ImageJobsNode(plan.jobs, max_pixels=max_pixels, quality=quality, **options)
        if resume and isinstance(plan.out, str):  # a URL: its objects, listed once
            runner.existing_outputs = existing_objects(plan.out, protect_options(storage_options))
    else:
        runner = ImageBatchFlow(jobs=plan.jobs, max_pixels=max_pixels, quality=quality, **options)
    runner.progress_label = os.path.basename(str(plan.src).rstrip("/")) or str(plan.src)
    runner.run(shared)
    stats = runner.batch_stats
    return ImagesSummary(
        results=shared["image_results"],
        skipped=len(plan.skipped),
        seconds=time.perf_counter() - began,
        backend=stats.backend,
        workers=stats.workers,
        backend_reason=stats.reason,
        resumed=stats.resumed,
        checkpoint=stats.checkpoint,
    )


JOURNAL = ".batchcore-resume.sqlite"  # in a local OUT: hidden, so never taken for an image


def _journal(plan: ImagesPlan, fmt: str | None, quality: int, max_pixels: int | None) -> Path:
    """Where ``run_images(resume=True)`` keeps its journal: in OUT, or for a URL output under
    the cache folder, one per job."""
    if not isinstance(plan.out, str):
        return plan.out / JOURNAL
    job = {"src": str(plan.src), "out": plan.out, "filters": [c.spec for c in plan.chains]}
    return cache_journal("images", {**job, "fmt": fmt, "quality": quality, "max": max_pixels})
