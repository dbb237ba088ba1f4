"""Nodes: PocketFlow's prep -> exec -> post contract, with batches that can run on any backend."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from typing import Any

from .backends import Backend, Settings, resolve_settings
from .batch import BatchStats, run_batch
from .tasks import CUR_RETRY, ITEM_STATE, NodeTask

__all__ = ["BaseNode", "BatchNode", "Node"]


class BaseNode:
    """A step of a flow: ``prep(shared)``, ``exec(prep_res)``, ``post(shared, prep_res, exec_res)``.

    ``post`` returns the action that chooses the next node in a ``Flow``.
    """

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.successors: dict[str, BaseNode] = {}

    def set_params(self, params: dict[str, Any]) -> None:
        """Replace (not merge) this node's params; flows call it before each visit."""
        self.params = params

    def next(self, node: BaseNode, action: str = "default") -> BaseNode:
        """Run ``node`` after this one when ``post`` returns ``action``; returns ``node``."""
        if action in self.successors:
            warnings.warn(f"Overwriting successor for action '{action}'")
        self.successors[action] = node
        return node

    def prep(self, shared: Any) -> Any:
        """Read what ``exec`` needs from ``shared``."""

    def exec(self, prep_res: Any) -> Any:
        """Do the work; must not touch ``shared`` (it may run in another process)."""

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        """Write results to ``shared`` and return the next action."""

    def _exec(self, prep_res: Any) -> Any:
        return self.exec(prep_res)

    def _run(self, shared: Any) -> Any:
        prep_res = self.prep(shared)
        exec_res = self._exec(prep_res)
        return self.post(shared, prep_res, exec_res)

    def run(self, shared: Any) -> Any:
        """Run this node alone (its successors are not run: use a ``Flow`` for that)."""
        if self.successors:
            warnings.warn("Node won't run successors. Use Flow.")
        return self._run(shared)

    def __rshift__(self, other: BaseNode) -> BaseNode:
        return self.next(other)

    def __sub__(self, action: str) -> _ConditionalTransition:
        if isinstance(action, str):
            return _ConditionalTransition(self, action)
        raise TypeError("Action must be a string")


class _ConditionalTransition:
    """The ``node - "action"`` half of ``node - "action" >> next_node``."""

    def __init__(self, src: BaseNode, action: str) -> None:
        self.src = src
        self.action = action

    def __rshift__(self, tgt: BaseNode) -> BaseNode:
        return self.src.next(tgt, self.action)


class Node(BaseNode):
    """A node whose ``exec`` is retried up to ``max_retries`` times, ``wait`` seconds apart.

    After the last failed attempt, ``exec_fallback(prep_res, exc)`` gives the result (by default
    it re-raises). ``self.cur_retry`` is the current 0-based attempt while ``exec`` runs.
    """

    def __init__(self, max_retries: int = 1, wait: float = 0) -> None:
        super().__init__()
        self.max_retries = max_retries
        self.wait = wait

    @property
    def cur_retry(self) -> int:
        """The attempt running now, kept per thread and per asyncio task (never shared)."""
        return CUR_RETRY.get()

    @cur_retry.setter
    def cur_retry(self, value: int) -> None:
        CUR_RETRY.set(value)

    def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
        """Called after the last failed attempt; its return value becomes ``exec_res``."""
        raise exc

    def _exec(self, prep_res: Any) -> Any:
        # PocketFlow's retry loop, reading max_retries, wait and exec afresh at every attempt.
        # Inside a batch, the chunk runner says where to record attempts and which one to start
        # from (a crashed item resumes at its next attempt on a fresh worker).
        state = ITEM_STATE.get()
        if state is not None and state.owner is self:
            first, slot, timed = state.first_attempt, state.slot, state.track_time
        else:
            first, slot, timed = 0, None, False
        for attempt in range(first, self.max_retries):
            if slot is not None:
                if timed:
                    slot.started = 0
                    slot.attempt = attempt
                    slot.started = time.monotonic_ns()
                else:
                    slot.attempt = attempt
            token = CUR_RETRY.set(attempt)
            try:
                return self.exec(prep_res)
            except Exception as exc:
                if attempt == self.max_retries - 1:
                    return self.exec_fallback(prep_res, exc)
                if self.wait > 0:
                    time.sleep(self.wait)
            finally:
                CUR_RETRY.reset(token)
        return None


class BatchNode(Node):
    """A node whose ``exec`` runs once per item of the iterable ``prep`` returns.

    ``post`` gets the list of results in input order. Options, by keyword, by class attribute on
    a subclass, or by ``use_backend``: ``backend`` ("sequential", "thread", "process", or a
    ``Backend``), ``workers``, ``chunksize``, ``timeout`` (seconds per item attempt; thread and
    process backends), ``on_error`` ("raise" or "collect") and ``progress``. ``batch_stats``
    describes the last run.
    """

    backend: str | Backend | None = None
    workers: int | None = None
    chunksize: int | None = None
    timeout: float | None = None
    on_error: str | None = None
    progress: bool | None = None

    def __init__(
        self,
        max_retries: int = 1,
        wait: float = 0,
        *,
        backend: str | Backend | None = None,
        workers: int | None = None,
        chunksize: int | None = None,
        timeout: float | None = None,
        on_error: str | None = None,
        progress: bool | None = None,
    ) -> None:
        super().__init__(max_retries, wait)
        set_batch_options(self, backend, workers, chunksize, timeout, on_error, progress)
        self.batch_stats = BatchStats()

    def _exec(self, items: Iterable[Any] | None) -> list[Any]:
        return run_batch(self, NodeTask(self), items or [], resolve_settings(self))


def set_batch_options(
    node: Any,
    backend: str | Backend | None,
    workers: int | None,
    chunksize: int | None,
    timeout: float | None,
    on_error: str | None,
    progress: bool | None,
) -> None:
    """Validate keyword options and keep them apart from the node's own attributes, so a user
    attribute that happens to be called ``timeout`` or ``progress`` means nothing to batchcore."""
    node._batch_options = Settings(
        backend, workers, chunksize, timeout, on_error, progress
    ).validate()
