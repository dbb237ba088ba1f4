"""The checkpoint journal: which items of a batch are done, and their results, in one SQLite file.

A batch with ``checkpoint=PATH`` records each finished item as its result reaches the parent,
keyed by the item's content; a rerun with the same journal skips those items and takes their
results from it, so ``post`` gets every result in input order as if one run had made them all::

    items ──key──> in the journal? ──yes──> its stored result ──────────────┐
                        └──no──> the backend runs it ──> recorded, batched ──┴──> results in order

SQLite (the standard library's) in WAL mode: a commit is durable once ``commit`` returns, a
process killed at any moment (``kill -9``) leaves the last committed state readable, and a full
disk fails the write, not the file. Results are committed in groups, one row each (``GROUP``
results, or what is pending once ``GROUP_SECONDS`` have passed), so journaling costs little per
item; at most the results of one group are held, and lost by a kill: those items run again. A
helper thread commits what is due, so a result waits at most ``GROUP_SECONDS`` for its commit
even when no other result follows it (a long item next). Items are looked up ``LOOKUP`` at a
time, so a generator of a million items is never all in memory, nor are the stored results.

An item's key (``content_key``) is 16 bytes made from its content alone: an int of 64 bits or
a float is written out (a group of them by one numpy call: no pickling nor hashing per item),
a str or bytes item is hashed as it is, anything else by its pickle (BLAKE2b).

The journal also holds its format (``SCHEMA``; a journal of another one is refused: its keys
would not be this version's) and a fingerprint of the batch (the node's class and its
``checkpoint_version``): a run whose fingerprint differs refuses to resume rather than mix
results of two versions of ``exec``.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from hashlib import blake2b
from itertools import islice
from pathlib import Path
from typing import Any

from .errors import BatchcoreError

__all__ = ["CheckpointError", "Journal", "content_key", "item_key", "journal_path"]

GROUP = 4096  # results per committed row (a group), at most
LOOKUP = 4096  # keys looked up at a time
GROUP_SECONDS = 0.2  # a group is committed at least this often while results arrive:
# a kill loses at most this much finished work (a small WAL commit, not fsynced: ~0.03 ms)
KEY_BYTES = 16
SCHEMA = 3  # the file's format (its keys' too): a journal of another format is refused

_CREATE = """
create table if not exists meta (name text primary key, value text not null);
create table if not exists groups (
    id integer primary key,
    spans blob not null,      -- int64 pairs: (position, count) of each run of consecutive items
                              -- (their places in the run that recorded them), in order
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
    one (for items that do not pickle the same way twice), else its content (``content_key``)."""
    return key_function(owner)(item)


def key_function(owner: Any) -> Callable[[Any], bytes]:
    """``item_key`` for ``owner``'s items, with the choice of how made once."""
    custom = getattr(owner, "checkpoint_key", None)
    if custom is None:
        return content_key

    def key(item: Any) -> bytes:
        return blake2b(repr(custom(item)).encode(), digest_size=KEY_BYTES).digest()

    return key


# An int of 64 bits or a float is its own key, written out: a tag (8 bytes), then its 8 bytes.
# A str or bytes item is hashed as it is, anything else by its pickle; the three hashes are told
# apart by BLAKE2b's personalisation (a hash of a pickle has none). Written this way, an int's key
# takes no pickling nor hashing, and a group of ints is keyed by numpy in one call.
_INT_TAG = 1
_FLOAT_TAG = 2
_INT_PREFIX = _INT_TAG.to_bytes(8, "little")
_FLOAT_PREFIX = _FLOAT_TAG.to_bytes(8, "little")
_INT64 = range(-(1 << 63), 1 << 63)
_STR_HASH = blake2b(digest_size=KEY_BYTES, person=b"batchcore.str")
_BYTES_HASH = blake2b(digest_size=KEY_BYTES, person=b"batchcore.bytes")
_pack_double = struct.Struct("<d").pack
_OWN_KEYS = {int, float, str, bytes}  # the kinds content_key does not key by their pickle


def content_key(item: Any) -> bytes:
    """``item``'s key from its content alone (the same item gives the same key in any run, in
    any group): its own bytes for an int of 64 bits or a float, else a 16-byte BLAKE2b hash
    of its UTF-8 (a str), itself (bytes) or its pickle (anything else)."""
    kind = type(item)
    if kind is int and item in _INT64:
        return _INT_PREFIX + int.to_bytes(item, 8, "little", signed=True)
    if kind is float:
        return _FLOAT_PREFIX + _pack_double(item)
    if kind is str:
        return _digest(_STR_HASH, item.encode("utf-8", "surrogatepass"))
    if kind is bytes:
        return _digest(_BYTES_HASH, item)
    try:
        data = pickle.dumps(item, protocol=5)
    except Exception as exc:
        raise CheckpointError(
            f"item {item!r:.80} cannot be pickled to make its checkpoint key ({exc}); "
            "define checkpoint_key(self, item) on the node to name it"
        ) from None
    return blake2b(data, digest_size=KEY_BYTES).digest()


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
        # Recorded, not yet committed: spans of items and their results, in the order recorded.
        # A span is ``[first, keys, start, stop, ok]``: the items whose keys are ``keys[start *
        # KEY_BYTES : stop * KEY_BYTES]``, at positions ``first + start`` to ``first + stop``,
        # all done (``ok``) or all failed; a record that continues the last span extends it, so
        # one item at a time (the sequential backend's chunks) costs no new object per item.
        self.spans: list[list[Any]] = []
        self.results: list[Any] = []
        self.last_commit = 0.0
        self.index: Any = None  # numpy: sorted keys, and each one's row and place in the row
        self.cached: tuple[int, list[Any]] | None = None  # the last row whose results were read
        # The connection and what is pending are shared with the flusher: a thread that commits
        # what is pending once GROUP_SECONDS have passed since the last commit.
        self.lock = threading.Lock()
        self.due = threading.Condition(self.lock)
        self.flusher: threading.Thread | None = None
        self.closing = False
        self.failed: CheckpointError | None = None  # the flusher's commit that failed

    def open(self, fingerprint: str) -> Journal:
        """Open (or create) the file; ``CheckpointError`` if it belongs to another batch, or
        another version of batchcore wrote it (its keys would not be this one's)."""
        connection: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute("pragma synchronous=normal")  # WAL: durable against a crash
            connection.execute("pragma page_size=16384")  # a new file's: rows of ~90 KB blobs
            connection.execute("pragma journal_mode=wal")
            connection.executescript(_CREATE)
            rows = dict(connection.execute("select name, value from meta").fetchall())
            if not rows:
                connection.execute("begin")
                connection.executemany(
                    "insert into meta values (?, ?)",
                    [("schema", str(SCHEMA)), ("fingerprint", fingerprint)],
                )
                connection.execute("commit")
            elif rows.get("schema") != str(SCHEMA):
                raise CheckpointError(
                    f"{self.path} is a journal of format {rows.get('schema')}, written by another "
                    f"version of batchcore; this one reads format {SCHEMA} only. To start over, "
                    "delete the file or pass another checkpoint path"
                )
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

    def done(self, keys: bytes) -> dict[int, Any]:
        """The stored results of the items of ``keys`` (``KEY_BYTES`` each, end to end) that
        are done, by the item's place in ``keys``, in that order (failed items are not done)."""
        assert self.connection is not None, "open the journal first"
        found: dict[int, Any] = {}
        if self.index is None or not keys:
            return found
        import numpy as np

        sorted_keys, rows, places = self.index
        wanted = np.frombuffer(keys, dtype=f"S{KEY_BYTES}")
        at = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
        hits = np.flatnonzero(sorted_keys[at] == wanted)
        at = at[hits]
        row, stored = self.cached if self.cached is not None else (-1, [])
        for hit, hit_row, place in zip(
            hits.tolist(), rows[at].tolist(), places[at].tolist(), strict=True
        ):
            if hit_row != row:
                row, stored = hit_row, self._row(hit_row)
            found[hit] = stored[place]
        return found

    def _row(self, row: int) -> list[Any]:
        """The results of a committed row, kept as ``cached``."""
        assert self.connection is not None
        with self.lock:
            query = "select results from groups where id = ?"
            blob = self.connection.execute(query, (row,)).fetchone()[0]
        self.cached = (row, pickle.loads(blob))
        return self.cached[1]

    def record(self, records: Iterable[tuple[int, bytes, bool, Any]]) -> None:
        """Add finished items: ``(position, key, ok, result)`` each (``ok=False``: a failure, to
        be run again on resume); a group is committed once full or old enough."""
        with self.lock:
            self._ready()
            for position, key, ok, result in records:
                self.spans.append([position, key, 0, 1, bool(ok)])
                self.results.append(result)
            if len(self.results) >= GROUP:
                self._commit()

    def record_run(self, first: int, keys: bytes, start: int, results: list[Any]) -> None:
        """Add finished items, all done: those whose keys are ``keys`` from the ``start``-th on,
        at positions ``first + start`` on. ``record`` without a tuple per item (the common case,
        kept cheap)."""
        with self.lock:
            if self.failed is not None or self.flusher is None:
                self._ready()
            stop = start + len(results)
            last = self.spans[-1] if self.spans else None
            if last is not None and last[3] == start and last[1] is keys and last[0] == first:
                last[3] = stop  # the same run of keys, continued: the usual case
            else:
                self.spans.append([first, keys, start, stop, True])
            self.results += results
            if len(self.results) >= GROUP:
                self._commit()

    def _ready(self) -> None:
        """(Under ``lock``) raise what the flusher could not commit; start the flusher."""
        if self.failed is not None:
            raise self.failed
        if self.flusher is None:
            self.flusher = threading.Thread(
                target=self._flush, name="batchcore-journal", daemon=True
            )
            self.flusher.start()

    def _flush(self) -> None:
        """The flusher's loop: commit what is pending once GROUP_SECONDS have passed since the
        last commit. It looks again every GROUP_SECONDS when nothing is pending, so a result
        never waits longer than that, and ``record`` never has to wake it."""
        with self.lock:
            while not self.closing:
                wait = self.last_commit + GROUP_SECONDS - time.monotonic()
                if not self.results:
                    self.due.wait(GROUP_SECONDS)
                elif wait > 0:
                    self.due.wait(wait)
                else:
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
        if not self.results or self.connection is None:
            return
        spans = array("q")  # (position, count) pairs, consecutive positions merged
        keys, oks = [], []
        for first, run, start, stop, ok in self.spans:
            if spans and spans[-2] + spans[-1] == first + start:
                spans[-1] += stop - start
            else:
                spans += array("q", (first + start, stop - start))
            keys.append(run[start * KEY_BYTES : stop * KEY_BYTES])
            oks.append((b"\x01" if ok else b"\x00") * (stop - start))
        row = (
            spans.tobytes(),
            b"".join(keys),
            b"".join(oks),
            pickle.dumps(self.results, protocol=5),
        )
        try:
            self.connection.execute(
                "insert into groups (spans, keys, oks, results) values (?, ?, ?, ?)", row
            )
        except sqlite3.Error as exc:
            raise CheckpointError(
                f"{self.path}: could not record {len(self.results)} finished item(s) ({exc}); "
                "the journal keeps what it had, and a rerun resumes from there"
            ) from None
        self.spans, self.results = [], []
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


def keyed(items: Iterable[Any], owner: Any) -> Iterator[tuple[list[Any], bytes]]:
    """``items`` in groups of ``LOOKUP``, each group with its items' keys end to end
    (``KEY_BYTES`` each); a generator is read a group at a time, never all at once."""
    iterator = iter(items)
    hashed = _group_keys(owner)
    while group := list(islice(iterator, LOOKUP)):
        yield group, hashed(group)


def _group_keys(owner: Any) -> Callable[[list[Any]], bytes]:
    """The keys of a group of ``owner``'s items, end to end: a group of ints (or of floats) in
    one numpy call, a group of anything else item by item (in one comprehension when the items
    are all of one kind: a call per item costs as much as the hashing). The same keys as
    ``key_function``'s, so an item's key does not depend on its neighbours."""
    key = key_function(owner)
    if key is not content_key:
        return lambda group: b"".join(map(key, group))
    dumps, hasher, size = pickle.dumps, blake2b, KEY_BYTES

    def keys(group: list[Any]) -> bytes:
        kinds = set(map(type, group))
        if kinds == {int}:
            import numpy as np

            try:
                return _tagged(_INT_TAG, np.array(group, dtype="<i8"))
            except OverflowError:  # beyond 64 bits: these ints are hashed by their pickle
                pass
        elif kinds == {float}:
            import numpy as np

            return _tagged(_FLOAT_TAG, np.array(group, dtype="<f8"))
        elif kinds == {str}:
            base = _STR_HASH
            return b"".join(
                [_digest(base, item.encode("utf-8", "surrogatepass")) for item in group]
            )
        elif kinds.isdisjoint(_OWN_KEYS):
            try:
                return b"".join(
                    [hasher(dumps(item, 5), digest_size=size).digest() for item in group]
                )
            except Exception:  # content_key finds the item that does not pickle, and says which
                pass
        return b"".join(map(content_key, group))

    return keys


def _digest(base: Any, data: bytes) -> bytes:
    """``data`` hashed by a copy of ``base`` (a BLAKE2b with its personalisation)."""
    hasher = base.copy()
    hasher.update(data)
    digest: bytes = hasher.digest()
    return digest


def _tagged(tag: int, values: Any) -> bytes:
    """``content_key`` of each of ``values`` (a numpy array of 8-byte numbers), end to end."""
    import numpy as np

    out = np.empty((len(values), 2), dtype="<u8")
    out[:, 0] = tag
    out[:, 1] = values.view("<u8")
    return out.tobytes()
