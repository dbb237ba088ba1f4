"""Writing job outputs to a URL (``s3://``, ``gs://``, ``az://``, ``memory://``, any fsspec
protocol): whole objects in one PUT, and datasets of parts that ``_SUCCESS`` makes visible.

::

    put_object(url, data, options)        one PUT of the whole encoded bytes, from the worker
    existing_objects(prefix, options)     every key under a prefix, in one listing
    RemoteDataset.begin(url, ...)         check the prefix, pick this run's id (parent)
      .put_part(name, data)               part-NNNNN-<run>.parquet, one PUT each (workers)
      .commit(summary)                    _SUCCESS naming this run's parts, then the previous
                                          run's parts deleted (parent)
      .abort()                            this run's parts deleted, best effort (parent)

An object store has no rename, so nothing is written under a temporary name: a PUT (or a
multipart upload, which s3fs uses for large bodies) makes an object appear whole when it
completes, or not at all. Local outputs never come here: they keep ``processors.files``'
fsynced temporary-then-rename writes.

What a reader of a dataset prefix sees (``RemoteDataset``), at each moment of a run:

- **Reading ``_SUCCESS`` and then the parts it names** (``dataset_parts``) always gives one
  whole dataset: the previous one until the new ``_SUCCESS`` is written, the new one after. The
  previous run's parts are deleted only after the new ``_SUCCESS`` replaced the old one (a
  reader that read the old ``_SUCCESS`` just before and opens its parts late may find them gone:
  it must read ``_SUCCESS`` again). Stores with read-after-write consistency (S3 since 2020,
  GCS, Azure) are assumed.
- **Listing the prefix** (``pyarrow.dataset``, Spark, DuckDB's globs; they skip ``_SUCCESS``)
  sees, during an ``overwrite`` run, the previous parts plus the new parts written so far, and
  both sets from ``_SUCCESS`` until the previous parts are deleted: such a reader must wait for
  ``_SUCCESS`` (or read through it). Without ``overwrite`` the prefix starts empty.
- **A failed or interrupted run** writes no ``_SUCCESS``; its parts are deleted by the parent.
  What can remain: a part whose PUT was still in flight in a worker the backend could not stop,
  or every part of a run whose parent was killed (SIGKILL, power loss). Such parts carry that
  run's id, are named by no ``_SUCCESS``, and the next ``overwrite`` run deletes them. A
  resumable run (``resume=True``) keeps its parts when it fails, for the next one, whose
  ``_SUCCESS`` names those its journal holds; it deletes the others after ``_SUCCESS``.
- **Two runs writing one prefix at the same time** are not detected (object stores have no
  lock): do not. Locally the second run is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .storage import StorageOptions, filesystem, is_url, protect_options, protocol_of, secrets_in
from .storage_errors import retrying

__all__ = [
    "RemoteDataset",
    "check_key",
    "dataset_parts",
    "existing_objects",
    "is_remote",
    "join_url",
    "put_object",
    "read_text",
    "scrub",
]

SUCCESS = "_SUCCESS"
_ERRNO = {FileNotFoundError: errno.ENOENT, PermissionError: errno.EACCES}
# Stores whose first path segment is a bucket (container) that a PUT does not create.
BUCKET_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def is_remote(path: object) -> bool:
    """Whether ``path`` is a URL written through fsspec (``file://`` URLs are local paths)."""
    return isinstance(path, str) and is_url(path) and protocol_of(path) != "file"


def local_part(path: str) -> str:
    """``path`` without a ``file://`` scheme: the local path it names."""
    return path.split("://", 1)[1] if is_url(path) and protocol_of(path) == "file" else path


def scrub(text: str, options: Mapping[str, Any] | None) -> str:
    """``text`` with every secret of ``options`` masked: error messages may quote a request.
    Values under 4 characters are left (masking them would garble every message, and no real
    credential is that short)."""
    for value in secrets_in(options):
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def check_key(relative: str, where: str) -> str:
    """``relative`` (a key below a prefix, ``/``-separated) if it stays below it; ``ValueError``
    for ``..`` or ``.`` segments (a store keeps them literally, but they read as leaving the
    folder, and fsspec may normalize them away) and for an empty key."""
    parts = relative.split("/")
    if not relative or any(part in ("..", ".") for part in parts):
        raise ValueError(f"{where}: {relative!r} has '..' or '.' segments or is empty")
    return relative


def join_url(prefix: str, *relative: str) -> str:
    """``prefix/relative/...`` with exactly one ``/`` between parts (``.`` parts dropped)."""
    parts = [part.strip("/") for part in relative if part not in ("", ".")]
    return "/".join([prefix.rstrip("/"), *parts])


def key_of(url: str, options: Mapping[str, Any] | None = None) -> str:
    """``url`` as its filesystem names it (no scheme, no trailing ``/``): what listings return."""
    fs = filesystem(url, options)
    stripped: str = fs._strip_protocol(url)
    return stripped.rstrip("/")


def put_object(url: str, data: bytes, options: Mapping[str, Any] | None = None) -> None:
    """Write ``data`` as the object ``url`` in one PUT: it appears whole, or not at all. An
    ``OSError`` names ``url`` (and no secret of ``options``)."""
    fs = filesystem(url, options)
    # A PUT of the whole object is idempotent: a transient failure is simply made again.
    retrying(lambda: fs.pipe_file(url, data), url, secrets=secrets_in(options))


def existing_objects(prefix: str, options: Mapping[str, Any] | None = None) -> set[str]:
    """The URLs of every object under ``prefix`` (recursively), in one listing; empty when the
    prefix holds nothing."""
    fs = filesystem(prefix, options)
    protocol = protocol_of(prefix)
    root = key_of(prefix, options)
    fs.invalidate_cache(root)  # a listing cached earlier in this process may predate workers' PUTs
    try:
        found = fs.find(prefix)
    except FileNotFoundError:
        return set()
    return {f"{protocol}://{path}" for path in found if path.startswith(root + "/")}


def read_text(url: str, options: Mapping[str, Any] | None) -> str:
    """The object ``url``, as UTF-8 text (``FileNotFoundError`` when there is none)."""
    fs = filesystem(url, options)
    data: bytes = fs.cat_file(url)
    return data.decode("utf-8")


def dataset_parts(url: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The URLs of the parts the ``_SUCCESS`` of the dataset at ``url`` names: the one whole
    dataset to read while another run may be writing there. ``FileNotFoundError`` without
    ``_SUCCESS`` (no complete dataset yet)."""
    options = protect_options(storage_options)
    summary = json.loads(read_text(join_url(url, SUCCESS), options))
    files = summary.get("files")
    if not isinstance(files, list):
        raise ValueError(f"{join_url(url, SUCCESS)}: names no files (written by a local run?)")
    return [join_url(url, name) for name in files]


@dataclass
class RemoteDataset:
    """One run's writes of a dataset at the prefix ``url``: its parts carry the run id ``run``;
    ``previous`` are the objects that were there when the run began (deleted on commit)."""

    url: str
    run: str
    options: StorageOptions = field(repr=False)
    previous: list[str] = field(default_factory=list)

    @classmethod
    def begin(
        cls,
        url: str,
        *,
        overwrite: bool,
        options: Mapping[str, Any] | None,
        ours: Callable[[str], bool],
        resume: bool = False,
    ) -> RemoteDataset:
        """Check ``url`` and start a run there; writes nothing. Refused (``FileExistsError``)
        when the prefix holds objects and not ``overwrite``, or holds anything ``ours`` does not
        recognize (deleting it with the previous dataset would lose it); ``NotADirectoryError``
        when ``url`` is an object. ``resume``: parts with no ``_SUCCESS`` (an interrupted run's)
        are no dataset to overwrite; the next ``commit`` keeps those it names."""
        options = protect_options(options)
        fs = filesystem(url, options)
        fs.invalidate_cache(key_of(url, options))
        protocol = protocol_of(url)
        if protocol in BUCKET_STORES:
            bucket = f"{protocol}://{key_of(url, options).split('/', 1)[0]}"
            if not fs.exists(bucket):
                raise FileNotFoundError(2, "no such bucket (or no access to it)", bucket)
        with contextlib.suppress(FileNotFoundError):
            if fs.isfile(url.rstrip("/")):
                raise NotADirectoryError(20, "is an object, not a prefix", url)
        names = sorted(_relative(key, url, options) for key in existing_objects(url, options))
        interrupted = resume and SUCCESS not in names  # only a killed run's parts, if any
        if names and not overwrite and not interrupted:
            raise FileExistsError(
                17,
                f"is not empty ({', '.join(names[:3])}); pass overwrite=True / --overwrite",
                url,
            )
        for name in names:
            if not ours(name):
                raise FileExistsError(
                    17, f"holds {name!r}, which is not part of a dataset this job wrote", url
                )
        previous = [name for name in names if name != SUCCESS]
        return cls(url, secrets.token_hex(6), options, previous)

    def part_url(self, name: str) -> str:
        return join_url(self.url, name)

    def put_part(self, name: str, data: bytes) -> None:
        """Write the part ``name`` (a worker calls this): one PUT."""
        put_object(self.part_url(name), data, self.options)

    def commit(self, summary: Mapping[str, Any], names: list[str]) -> list[str]:
        """Write ``_SUCCESS`` (``summary`` plus ``files``: ``names``, and ``run``), then delete
        the previous run's parts (but those among ``names``: a resumed run's); ``_SUCCESS`` is
        the last object of the new dataset written. Returns the previous parts that could not
        be deleted (the new dataset is complete)."""
        text = json.dumps({**summary, "files": names, "run": self.run}) + "\n"
        put_object(join_url(self.url, SUCCESS), text.encode(), self.options)
        kept = set(names)
        return self._delete([name for name in self.previous if name not in kept])

    def abort(self) -> list[str]:
        """Delete the parts this run wrote (found by its run id); returns those that could not
        be deleted (an error deleting is not raised: the run's own error is the one to see)."""
        try:
            mine = [name for name in self._names() if self.run in name]
        except Exception:
            return [f"{self.url} (parts of run {self.run}: could not list them)"]
        return self._delete(mine)

    def _names(self) -> list[str]:
        found = existing_objects(self.url, self.options)
        return sorted(_relative(key, self.url, self.options) for key in found)

    def _delete(self, names: list[str]) -> list[str]:
        if not names:
            return []
        fs = filesystem(self.url, self.options)
        urls = [self.part_url(name) for name in names]
        try:
            fs.rm(urls)
        except Exception:
            left = []
            for url in urls:
                try:
                    fs.rm_file(url)
                except FileNotFoundError:
                    pass
                except Exception:
                    left.append(url)
            return left
        return []


def _relative(url: str, prefix: str, options: Mapping[str, Any] | None) -> str:
    """The key of ``url`` below ``prefix`` (``a/b.parquet``)."""
    return key_of(url, options)[len(key_of(prefix, options)) + 1 :]
