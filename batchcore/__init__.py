"""batchcore: PocketFlow's nodes and flows, with batches on threads, processes or a cluster.

A drop-in for ``pocketflow``: ``from batchcore import Node, Flow, BatchNode, ...`` keeps the same
contract. Batches run sequentially unless a backend is chosen, by keyword
(``MyNode(backend="process", workers=2)``), class attribute (``backend = "process"``) or scope
(``with batchcore.use_backend("process"): flow.run(shared)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backends import available_backends, get_backend, register_backend, shutdown
from .backends.base import Backend
from .batch import BatchStats, ItemFailure
from .errors import (
    BatchcoreError,
    ItemMemoryError,
    ItemTimeoutError,
    RemoteItemError,
    SerializationError,
    WorkerCrashedError,
    WorkerStartupError,
)
from .flows import BatchFlow, Flow, RunResult
from .journal import CheckpointError, Journal
from .nodes import BaseNode, BatchNode, Node
from .options import use_backend
from .sealed import Secret

if TYPE_CHECKING:
    from .async_nodes import (
        AsyncBatchFlow,
        AsyncBatchNode,
        AsyncFlow,
        AsyncNode,
        AsyncParallelBatchFlow,
        AsyncParallelBatchNode,
    )

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The asyncio family loads on first use: worker processes (and programs that never touch
    # it) skip importing asyncio, a sizeable part of a worker's start-up.
    if name in _ASYNC:
        from . import async_nodes

        return getattr(async_nodes, name)
    raise AttributeError(f"module 'batchcore' has no attribute {name!r}")


__all__ = [
    "AsyncBatchFlow",
    "AsyncBatchNode",
    "AsyncFlow",
    "AsyncNode",
    "AsyncParallelBatchFlow",
    "AsyncParallelBatchNode",
    "Backend",
    "BaseNode",
    "BatchFlow",
    "BatchNode",
    "BatchStats",
    "BatchcoreError",
    "CheckpointError",
    "Flow",
    "ItemFailure",
    "ItemMemoryError",
    "ItemTimeoutError",
    "Journal",
    "Node",
    "RemoteItemError",
    "RunResult",
    "Secret",
    "SerializationError",
    "WorkerCrashedError",
    "WorkerStartupError",
    "available_backends",
    "get_backend",
    "register_backend",
    "shutdown",
    "use_backend",
]

# The lazily loaded names: every exported ``Async*`` class lives in ``async_nodes``.
_ASYNC = frozenset(name for name in __all__ if name.startswith("Async"))
