"""Flows: route between nodes by the actions their ``post`` returns; ``BatchFlow`` repeats a
sub-flow once per params dict, sequentially in place or isolated on a parallel backend."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Unpack

from .backends.base import Task
from .batch import BatchStats, run_batch
from .nodes import BaseNode
from .options import BatchOptions, check_options, resolve_options, shows_option_keywords
from .pickling import dumps, dumps_checked, loads

__all__ = ["BatchFlow", "Flow", "RunResult", "merge_writes"]


class Flow(BaseNode):
    """Runs ``start_node``, then whichever successor the returned action names, until none.

    Each visit runs a shallow copy of the node with this run's params; ``post`` receives the
    last action, which a ``Flow`` returns by default (so nested flows can branch on it).
    """

    def __init__(self, start: BaseNode | None = None) -> None:
        super().__init__()
        self.start_node = start

    def start(self, start: BaseNode) -> BaseNode:
        """Set the first node; returns it so ``flow.start(a).next(b)`` chains."""
        self.start_node = start
        return start

    def get_next_node(self, curr: BaseNode, action: Any) -> BaseNode | None:
        nxt = curr.successors.get(action or "default")
        if not nxt and curr.successors:
            warnings.warn(f"Flow ends: '{action}' not found in {list(curr.successors)}")
        return nxt

    def _orch(self, shared: Any, params: dict[str, Any] | None = None) -> Any:
        curr = copy.copy(self.start_node)
        run_params = params or {**self.params}
        last_action = None
        while curr:
            curr.set_params(run_params)
            last_action = curr._run(shared)
            curr = copy.copy(self.get_next_node(curr, last_action))
        return last_action

    def _run(self, shared: Any) -> Any:
        prep_res = self.prep(shared)
        last_action = self._orch(shared)
        return self.post(shared, prep_res, last_action)

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        return exec_res


@dataclass
class RunResult:
    """One sub-flow run of a parallel ``BatchFlow``: params, last action, ``shared`` writes."""

    params: dict[str, Any]
    action: Any
    writes: dict[str, Any]


def merge_writes(shared: dict[str, Any], writes: dict[str, Any]) -> None:
    """Apply one run's writes: dicts merge key by key, any other value replaces the old one.

    A dict that is new in ``shared`` goes in as a shallow copy: later runs merge into
    ``shared``'s dict, and the run's own ``RunResult.writes`` must keep showing only its writes.
    """
    for key, value in writes.items():
        current = shared.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            current.update(value)
        elif isinstance(value, dict):
            shared[key] = copy.copy(value)
        else:
            shared[key] = value


class _SharedSubflow(Task):
    """Sequential BatchFlow: each run works on the caller's ``shared`` itself, as in PocketFlow."""

    def __init__(self, flow: BatchFlow, shared: Any) -> None:
        self.flow = flow
        self.shared = shared
        self.label = f"{type(flow).__name__} sub-flow"

    def call(self, item: Any) -> Any:
        return self.flow._orch(self.shared, {**self.flow.params, **item})


class _IsolatedSubflow(Task):
    """Parallel BatchFlow: each run gets a private copy of ``shared`` and reports what it wrote.

    ``shared`` travels pickled, once per worker; every run unpickles a fresh copy of it. A key
    counts as written when its pickled value differs from the original (for dict values, per key).
    """

    def __init__(self, flow: BatchFlow, shared: Any) -> None:
        if not isinstance(shared, dict):
            raise TypeError(
                "a BatchFlow on a parallel backend needs `shared` to be a dict, "
                f"got {type(shared).__name__}"
            )
        name = type(flow).__name__
        self.label = f"{name} sub-flow"
        self.sub = Flow(start=flow.start_node)  # the sub-flow graph, without the outer successors
        self.params = dict(flow.params)
        outputs = flow.shared_outputs
        self.outputs = None if outputs is None else frozenset(outputs)
        self.shared_blob = dumps_checked(
            shared,
            "shared",
            "shared",
            "Keep shared to plain data on parallel BatchFlows "
            "(paths, numbers, dicts); open files and connections inside the nodes.",
        )
        self._base: dict[str, Any] | None = None
        self._base_blobs: dict[tuple[Any, ...], bytes] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "sub": self.sub,
            "params": self.params,
            "outputs": self.outputs,
            "shared_blob": self.shared_blob,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _base=None, _base_blobs={})

    def call(self, item: Any) -> RunResult:
        local = loads(self.shared_blob)
        action = self.sub._orch(local, {**self.params, **item})
        return RunResult(params=item, action=action, writes=self.writes(local))

    def writes(self, after: dict[str, Any]) -> dict[str, Any]:
        if self._base is None:
            self._base = loads(self.shared_blob)
        base = self._base
        writes: dict[str, Any] = {}
        for key, value in after.items():
            if self.outputs is not None and key not in self.outputs:
                continue  # a scratch key: it stays in the worker
            if key not in base:
                writes[key] = value
            elif isinstance(value, dict) and isinstance(base[key], dict):
                old = base[key]
                changed = {
                    k: v
                    for k, v in value.items()
                    if k not in old or self._differs((key, k), old[k], v)
                }
                if changed:
                    writes[key] = changed
            elif self._differs((key,), base[key], value):
                writes[key] = value
        return writes

    def _differs(self, path: tuple[Any, ...], old: Any, new: Any) -> bool:
        """Whether ``new`` pickles unlike base value ``old`` at ``path`` (base pickles cached)."""
        if old is new:
            return False
        blob = self._base_blobs.get(path)
        if blob is None:
            blob = self._base_blobs[path] = dumps(old)
        return dumps(new) != blob


class BatchFlow(Flow):
    """Runs its sub-flow once per params dict that ``prep`` returns (nodes read ``self.params``).

    On the sequential backend every run shares the caller's ``shared`` and ``post`` gets ``None``,
    as in PocketFlow. On a parallel backend each run gets its own copy of ``shared``; afterwards
    the keys each run added or changed are merged into ``shared`` in batch order (dict values key
    by key, otherwise the last run wins) and ``post`` gets one ``RunResult`` per run.
    ``shared_outputs`` (a class attribute) names the keys to merge back; keys a run writes that
    are not named (scratch keys such as a decoded image) then never leave the worker. The
    ``BatchOptions`` are BatchNode's; with ``checkpoint=`` every backend runs as a parallel one
    does (each run on its own copy, its ``RunResult`` journaled and merged in order).
    """

    shared_outputs: tuple[str, ...] | None = None
    releases_gil: ClassVar[bool] = False  # as BatchNode's: backend="auto" then picks threads

    @shows_option_keywords
    def __init__(self, start: BaseNode | None = None, **options: Unpack[BatchOptions]) -> None:
        super().__init__(start)
        self._batch_options = check_options(dict(options), f"{type(self).__name__}()")
        self.batch_stats = BatchStats()

    def _run(self, shared: Any) -> Any:
        batch_params: Iterable[dict[str, Any]] = self.prep(shared) or []
        plan = resolve_options(self, batch_params)
        # With a checkpoint every run keeps its writes apart, so a resumed run can replay them.
        if not plan.backend.parallel and plan.checkpoint is None:
            run_batch(self, _SharedSubflow(self, shared), batch_params, plan)
            return self.post(shared, batch_params, None)
        runs = run_batch(self, _IsolatedSubflow(self, shared), batch_params, plan)
        for run in runs:
            merge_writes(shared, run.writes)
        return self.post(shared, batch_params, runs)
