"""The default backend: items run one after another in the caller's thread, as in PocketFlow."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .base import Backend, Chunk, Slot, Task, run_chunk


class SequentialBackend(Backend):
    """Runs each item in order in the calling thread; ``exec`` sees the caller's node object.

    ``timeout`` is not enforced here: an item cannot be interrupted in the caller's own thread.
    Use the thread or process backend when a per-item timeout matters.
    """

    name = "sequential"
    parallel = False

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(workers=1)

    def map(
        self,
        task: Task,
        items: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        fail_fast: bool = True,
    ) -> Iterator[Chunk]:
        slot = Slot()
        for index, item in enumerate(items):
            chunk = run_chunk(task, [item], index, 0, slot, fail_fast)
            yield chunk
            if fail_fast and chunk.failures:
                return
