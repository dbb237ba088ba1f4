"""The checkpoint journal: which items of a batch are done, and their results, in one SQLite file.

A batch with ``checkpoint=PATH`` records each finished item as its result reaches the parent,
keyed by the item's content; a rerun with the same journal skips those items and takes their
results from it, so ``post`` gets every result in input order as if one run had made them all::

    items ──key──> in the journal? ──yes──> its stored result ──────────────┐
                        └──no──> the backend runs it ──> recorded, batched ──┴──> results in order

SQLite (the standard library's) in WAL mode: a commit is durable once ``commit`` returns, a
process killed at any moment (``kill -9``) leaves the last committed state readable, and a full
disk fails the write, not the file. Results are committed in groups, one row each (``GROUP``
results or ``GROUP_SECONDS``), so journaling costs little per item; at most the results of one
group are held, and lost by a kill: those items run again. A result waits at most
``GROUP_SECONDS`` for its commit even when no other result follows it (a long item next): a
helper thread commits what is pending once it is due. Items are looked up ``LOOKUP`` at a
time, so a generator of a million items is never all in memory, nor are the stored results.

The journal also holds a fingerprint of the batch (the node's class and its
``checkpoint_version``): a run whose fingerprint differs refuses to resume rather than mix
results of two versions of ``exec``.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from hashlib import blake2b
from itertools import islice
from pathlib import Path
from typing import Any

from .errors import BatchcoreError

__all__ = ["CheckpointError", "Journal", "item_key", "journal_path"]

GROUP = 4096  # results per committed row (a group), at most
LOOKUP = 4096  # keys looked up at a time
GROUP_SECONDS = 0.2  # a group is committed at least this often while results arrive:
# a kill loses at most this much finished work (a small WAL commit, not fsynced: ~0.03 ms)
KEY_BYTES = 16
SCHEMA = 2

_CREATE = """
create table if not exists meta (name text primary key, value text not null);
create table if not exists groups (
    id integer primary key,
    positions blob not null,  -- int64 each: the items' places in the run that recorded them
    keys blob not null,       -- KEY_BYTES each: item_key(item)
    oks blob not null,        -- one byte each: 1 done, 0 failed (on_error="collect"): rerun
    results blob not null     -- the pickled list of their results (None for a failed one)
);
"""


def journal_path(checkpoint: str | os.PathLike[str], owner: Any) -> Path:
    """The journal file ``checkpoint=`` names for ``owner``: the path itself, or in a folder
    one file per node class (``module.Class.sqlite``)."""
    path = Path(checkpoint)
    if path.is_dir() or os.fspath(checkpoint).endswith(os.sep):
        path = path / f"{type(owner).__module__}.{type(owner).__qualname__}.sqlite"
    return path


class CheckpointError(BatchcoreError):
    """The journal cannot be used for this batch: another batch's, or unreadable, or unwritable."""


def item_key(item: Any, owner: Any = None) -> bytes:
    """What identifies ``item`` across runs: ``owner.checkpoint_key(item)`` when the node has
    one (for items that do not pickle the same way twice), else its pickled bytes; hashed."""
    return key_function(owner)(item)


def key_function(owner: Any) -> Callable[[Any], bytes]:
    """``item_key`` for ``owner``'s items, with the choice of how made once."""
    custom = getattr(owner, "checkpoint_key", None)

    def key(item: Any) -> bytes:
        if custom is not None:
            data = repr(custom(item)).encode()
        else:
            try:
                data = pickle.dumps(item, protocol=5)
            except Exception as exc:
                raise CheckpointError(
                    f"item {item!r:.80} cannot be pickled to make its checkpoint key ({exc}); "
                    "define checkpoint_key(self, item) on the node to name it"
                ) from None
        return blake2b(data, digest_size=KEY_BYTES).digest()

    return key


class Journal:
    """One batch's record of finished items (see the module's docstring). ``open`` it with the
    batch's fingerprint; ``done`` looks up keys; ``record`` adds results, committed a group (one
    row) at a time; ``close`` commits the rest.

    At ``open`` the keys of every recorded item are read into a sorted array (16 bytes and two
    ints each: ~32 MB for a million items); results stay in the file until looked up, a row at
    a time (rows of consecutive items are cached, as a rerun reads them in order)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.connection: sqlite3.Connection | None = None
        # Recorded, not yet committed: each item's position, key, ok (1 or 0) and result.
        self.positions = array("q")
        self.keys: list[bytes] = []
        self.oks = bytearray()
        self.results: list[Any] = []
        self.last_commit = 0.0
        self.index: Any = None  # numpy: sorted keys, and each one's row and place in the row
        self.cached: tuple[int, list[Any]] | None = None  # the last row whose results were read
        # The connection and what is pending are shared with the flusher: a thread that commits
        # what is pending once GROUP_SECONDS have passed, when no further result comes to.
        self.lock = threading.Lock()
        self.due = threading.Condition(self.lock)
        self.flusher: threading.Thread | None = None
        self.closing = False
        self.failed: CheckpointError | None = None  # the flusher's commit that failed

    def open(self, fingerprint: str) -> Journal:
        """Open (or create) the file; ``CheckpointError`` if it belongs to another batch."""
        connection: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute("pragma journal_mode=wal")
            connection.execute("pragma synchronous=normal")  # WAL: durable against a crash
            connection.executescript(_CREATE)
            rows = dict(connection.execute("select name, value from meta").fetchall())
            if not rows:
                connection.execute("begin")
                connection.executemany(
                    "insert into meta values (?, ?)",
                    [("schema", str(SCHEMA)), ("fingerprint", fingerprint)],
                )
                connection.execute("commit")
            elif rows.get("fingerprint") != fingerprint:
                raise CheckpointError(
                    f"{self.path} was written by another batch ({rows.get('fingerprint')}), not "
                    f"this one ({fingerprint}): its results would not be this exec's. To start "
                    "over, delete the file or pass another checkpoint path; if exec did not "
                    "change, keep the old checkpoint_version"
                )
            self.index = _read_index(connection)
        except (OSError, sqlite3.Error) as exc:
            if connection is not None:
                connection.close()
            raise CheckpointError(f"{self.path}: not a usable checkpoint journal ({exc})") from None
        except CheckpointError:
            if connection is not None:
                connection.close()
            raise
        self.connection = connection
        self.last_commit = time.monotonic()
        self.closing = False
        self.failed = None
        return self

    def done(self, keys: list[bytes]) -> dict[bytes, Any]:
        """The stored results of those of ``keys`` that are done (failed items are not)."""
        assert self.connection is not None, "open the journal first"
        found: dict[bytes, Any] = {}
        if self.index is None or not len(keys):
            return found
        import numpy as np

        sorted_keys, rows, places = self.index
        wanted = np.array(keys, dtype=f"S{KEY_BYTES}")
        at = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
        hits = np.flatnonzero(sorted_keys[at] == wanted)
        for hit in hits.tolist():
            found[keys[hit]] = self._result(int(rows[at[hit]]), int(places[at[hit]]))
        return found

    def _result(self, row: int, place: int) -> Any:
        if self.cached is None or self.cached[0] != row:
            assert self.connection is not None
            with self.lock:
                query = "select results from groups where id = ?"
                blob = self.connection.execute(query, (row,)).fetchone()[0]
            self.cached = (row, pickle.loads(blob))
        return self.cached[1][place]

    def record(self, records: Iterable[tuple[int, bytes, bool, Any]]) -> None:
        """Add finished items: ``(position, key, ok, result)`` each (``ok=False``: a failure, to
        be run again on resume); a group is committed once full or old enough."""
        with self.lock:
            was_empty = self._check()
            for position, key, ok, result in records:
                self.positions.append(position)
                self.keys.append(key)
                self.oks.append(1 if ok else 0)
                self.results.append(result)
            self._maybe_commit(was_empty)

    def record_run(self, first: int, keys: list[bytes], results: list[Any]) -> None:
        """Add finished items at consecutive positions from ``first``, all done: ``record``
        without a tuple per item (the common case, kept cheap)."""
        with self.lock:
            was_empty = self._check()
            self.positions.extend(range(first, first + len(keys)))
            self.keys += keys
            self.oks += b"\x01" * len(keys)
            self.results += results
            self._maybe_commit(was_empty)

    def _check(self) -> bool:
        """(Under ``lock``) raise what the flusher could not commit; whether nothing is pending."""
        if self.failed is not None:
            raise self.failed
        return not self.keys

    def _maybe_commit(self, was_empty: bool) -> None:
        if len(self.keys) >= GROUP or time.monotonic() - self.last_commit >= GROUP_SECONDS:
            self._commit()
        elif was_empty and self.keys:  # due GROUP_SECONDS after the last commit, at most
            if self.flusher is None:
                self.flusher = threading.Thread(
                    target=self._flush, name="batchcore-journal", daemon=True
                )
                self.flusher.start()
            self.due.notify()

    def _flush(self) -> None:
        """The flusher's loop: commit what is pending once it is GROUP_SECONDS old."""
        with self.lock:
            while not self.closing:
                wait = self.last_commit + GROUP_SECONDS - time.monotonic()
                if not self.keys or wait > 0:
                    self.due.wait(None if not self.keys else wait)
                    continue
                try:
                    self._commit()
                except CheckpointError as exc:  # raised by the next record() or close()
                    self.failed = exc
                    return

    def commit(self) -> None:
        """Write the pending results as one row, in one transaction."""
        with self.lock:
            self._commit()

    def _commit(self) -> None:
        if not self.keys or self.connection is None:
            return
        row = (
            self.positions.tobytes(),
            b"".join(self.keys),
            bytes(self.oks),
            pickle.dumps(self.results, protocol=5),
        )
        try:
            self.connection.execute(
                "insert into groups (positions, keys, oks, results) values (?, ?, ?, ?)", row
            )
        except sqlite3.Error as exc:
            raise CheckpointError(
                f"{self.path}: could not record {len(self.keys)} finished item(s) ({exc}); "
                "the journal keeps what it had, and a rerun resumes from there"
            ) from None
        self.positions, self.keys, self.oks, self.results = array("q"), [], bytearray(), []
        self.last_commit = time.monotonic()

    def count(self) -> int:
        """How many items the journal holds as done (committed)."""
        return 0 if self.index is None else len(self.index[0])

    def close(self) -> None:
        """Commit what is pending and close the file (safe to call twice)."""
        flusher, self.flusher = self.flusher, None
        if flusher is not None:
            with self.lock:
                self.closing = True
                self.due.notify()
            flusher.join()
        try:
            self.commit()
        finally:
            if self.connection is not None:
                self.connection.close()
                self.connection = None


def _read_index(connection: sqlite3.Connection) -> Any:
    """The done items' keys, sorted, with each one's row and place in it; ``None`` when there
    are none. A key recorded twice (failed, then done) counts by its latest row."""
    import numpy as np

    parts = []
    for row, keys, oks in connection.execute("select id, keys, oks from groups order by id"):
        count = len(oks)
        parts.append(
            (
                np.frombuffer(keys, dtype=f"S{KEY_BYTES}"),
                np.full(count, row, dtype=np.int64),
                np.arange(count, dtype=np.int32),
                np.frombuffer(oks, dtype=np.uint8),
            )
        )
    if not parts:
        return None
    keys, rows, places, oks = (np.concatenate(column) for column in zip(*parts, strict=True))
    parts.clear()  # the rows' blobs: at the peak, only the columns and their sorted copies
    order = np.lexsort((rows, keys))  # by key, then by row: a key's latest record last
    keys, rows, places, oks = keys[order], rows[order], places[order], oks[order]
    latest = np.ones(len(keys), dtype=bool)
    latest[:-1] = keys[1:] != keys[:-1]
    keep = latest & (oks == 1)
    return keys[keep], rows[keep], places[keep]


def keyed(items: Iterable[Any], owner: Any) -> Iterator[tuple[list[Any], list[bytes]]]:
    """``items`` in groups of ``LOOKUP``, each group with its items' keys (a generator is read
    a group at a time, never all at once)."""
    iterator = iter(items)
    hashed = _group_keys(owner)
    while group := list(islice(iterator, LOOKUP)):
        yield group, hashed(group)


def _group_keys(owner: Any) -> Callable[[list[Any]], list[bytes]]:
    """The keys of a group of ``owner``'s items: by pickle, one comprehension for the group (a
    call per item costs as much as the hashing), or each through ``key_function``."""
    if getattr(owner, "checkpoint_key", None) is not None:
        key = key_function(owner)
        return lambda group: [key(item) for item in group]
    dumps, hasher = pickle.dumps, blake2b

    def keys(group: list[Any]) -> list[bytes]:
        try:
            return [hasher(dumps(item, 5), digest_size=KEY_BYTES).digest() for item in group]
        except Exception:  # find the item that does not pickle, and say which
            key = key_function(owner)
            return [key(item) for item in group]

    return keys
