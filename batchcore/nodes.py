"""Nodes: PocketFlow's prep -> exec -> post contract, with batches that can run on any backend."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, Unpack

from .backends.base import CUR_RETRY, ITEM_STATE, Task
from .batch import BatchStats, run_batch
from .options import BatchOptions, check_options, resolve_options, shows_option_keywords

__all__ = ["BaseNode", "BatchNode", "Node", "NodeTask"]


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
        if state is not None and state.node is not self:
            state = None  # another node's batch: this one is a plain node inside its exec
        for attempt in range(0 if state is None else state.first_attempt, self.max_retries):
            if state is not None:
                state.record(attempt)
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

    ``post`` gets the list of results in input order. The ``BatchOptions``, by keyword, by class
    attribute on a subclass, or by ``use_backend``: ``backend`` ("sequential", "thread",
    "process", "dask", "auto", or a ``Backend``), ``workers``, ``chunksize``, ``timeout``
    (seconds per item attempt), ``max_memory`` (per process worker: bytes or "2GiB"),
    ``on_error`` ("raise" or "collect") and ``progress``.
    ``batch_stats`` describes the last run.
    """

    releases_gil: ClassVar[bool] = False  # True: exec's heavy work releases the GIL (numpy,
    # pyarrow, Pillow), so backend="auto" runs it on threads rather than processes

    @shows_option_keywords
    def __init__(
        self, max_retries: int = 1, wait: float = 0, **options: Unpack[BatchOptions]
    ) -> None:
        super().__init__(max_retries, wait)
        # Kept apart from the node's own attributes: a user attribute that happens to be called
        # ``timeout`` or ``progress`` means nothing to batchcore.
        self._batch_options = check_options(dict(options), f"{type(self).__name__}()")
        self.batch_stats = BatchStats()

    def _exec(self, items: Iterable[Any] | None) -> list[Any]:
        items = items or []
        return run_batch(self, NodeTask(self), items, resolve_options(self, items))


class NodeTask(Task):
    """A BatchNode's per-item step: ``super(BatchNode, node)._exec(item)``, as in PocketFlow, so
    mixins that wrap ``_exec`` per item keep working; that is ``Node._exec``'s retry loop."""

    def __init__(self, node: BatchNode) -> None:
        self.node = node
        self.label = f"{type(node).__name__}.exec"
        self.call = super(BatchNode, node)._exec  # type: ignore[method-assign,assignment]

    @property
    def max_retries(self) -> int:
        return int(self.node.max_retries)

    @property
    def wait(self) -> float:
        return float(self.node.wait)

    def fallback(self, item: Any, exc: Exception) -> Any:
        return self.node.exec_fallback(item, exc)

    def __getstate__(self) -> dict[str, Any]:
        # Ship the node without its successors (workers run one node, not the rest of the graph)
        # and without a Backend object given as ``backend=`` (workers never use it).
        clone = self.node.__class__.__new__(self.node.__class__)
        clone.__dict__.update(self.node.__dict__)
        clone.successors = {}
        clone.__dict__.pop("_batch_options", None)
        return {"node": clone}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["node"])  # type: ignore[misc]
