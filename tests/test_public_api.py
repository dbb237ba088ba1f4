"""The public surface of ``batchcore``: ``__all__`` is pinned, PocketFlow's names all import."""

from __future__ import annotations

import importlib

import pytest

import batchcore

# The 11 classes ``pocketflow`` 0.0.3 exports (it has no ``__all__``).
POCKETFLOW_CLASSES = [
    "BaseNode",
    "Node",
    "BatchNode",
    "Flow",
    "BatchFlow",
    "AsyncNode",
    "AsyncBatchNode",
    "AsyncParallelBatchNode",
    "AsyncFlow",
    "AsyncBatchFlow",
    "AsyncParallelBatchFlow",
]

EXPECTED_ALL = [
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


def test_all_is_pinned() -> None:
    """Adding or removing a public name is a deliberate change: update this list with it."""
    assert sorted(batchcore.__all__) == sorted(EXPECTED_ALL)
    assert len(batchcore.__all__) == len(set(batchcore.__all__))


def test_every_name_in_all_exists() -> None:
    missing = [name for name in batchcore.__all__ if not hasattr(batchcore, name)]
    assert missing == []


@pytest.mark.parametrize("name", POCKETFLOW_CLASSES)
def test_pocketflow_class_imports_from_batchcore(name: str) -> None:
    module = importlib.import_module("batchcore")
    cls = getattr(module, name)
    assert isinstance(cls, type)
    assert cls.__name__ == name
    assert name in batchcore.__all__


def test_from_import_of_every_pocketflow_class() -> None:
    from batchcore import (  # noqa: F401
        AsyncBatchFlow,
        AsyncBatchNode,
        AsyncFlow,
        AsyncNode,
        AsyncParallelBatchFlow,
        AsyncParallelBatchNode,
        BaseNode,
        BatchFlow,
        BatchNode,
        Flow,
        Node,
    )


def test_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from batchcore import *", namespace)
    exported = {name for name in namespace if name != "__builtins__"}
    assert exported == set(batchcore.__all__)
    assert set(POCKETFLOW_CLASSES) <= exported
    for name in POCKETFLOW_CLASSES:
        assert namespace[name] is getattr(batchcore, name)


def test_pocketflow_classes_match_pocketflow_names() -> None:
    """Every class name PocketFlow exports exists in batchcore (and nothing is misspelt here)."""
    pocketflow = pytest.importorskip("pocketflow")
    pocketflow_classes = sorted(
        name
        for name, value in vars(pocketflow).items()
        if isinstance(value, type) and not name.startswith("_")
    )
    assert pocketflow_classes == sorted(POCKETFLOW_CLASSES)
    assert all(hasattr(batchcore, name) for name in pocketflow_classes)
