"""Log records from exec reach the parent's handlers on every local backend (rule 8 of the
reliability notes: worker logs are not lost)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LOCAL_BACKENDS, backend_params
from faulty import Logs


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected(request: pytest.FixtureRequest) -> Iterator[tuple[str, Collect]]:
    name = f"batchcore.tests.{request.node.name}"
    logger = logging.getLogger(name)
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield name, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


@pytest.mark.parametrize("backend", backend_params(LOCAL_BACKENDS))
def test_exec_logs_reach_the_parents_handlers(backend: str, collected: tuple[str, Collect]) -> None:
    name, handler = collected
    node = Logs(backend=backend, workers=2, chunksize=1)
    node.set_params({"logger": name})
    shared: dict[str, Any] = {"items": list(range(6))}
    node.run(shared)
    messages = [record.getMessage() for record in handler.records]
    for item, pid in enumerate(shared["pids"]):
        assert f"item {item} in pid {pid}" in messages
    assert not any(m.startswith("debug") for m in messages)  # the parent's level applies
    assert "from a thread" in messages
    failed = next(r for r in handler.records if r.getMessage() == "failed on 0")
    assert failed.levelno == logging.ERROR
    text = logging.Formatter().format(failed)
    assert "KeyError: 'boom'" in text and "Traceback" in text  # the worker's traceback, as text
    if backend == "process":
        assert {r.process for r in handler.records} - {os.getpid()}  # they came from workers
        assert all(
            isinstance(r.__dict__["lock"], str) for r in handler.records if "lock" in r.__dict__
        )


def test_worker_levels_follow_the_parent_per_batch(collected: tuple[str, Collect]) -> None:
    name, handler = collected
    logging.getLogger(name).setLevel(logging.DEBUG)
    node = Logs(backend="process", workers=2, chunksize=1)
    node.set_params({"logger": name})
    node.run({"items": [5, 6]})
    assert {"debug 5", "debug 6"} <= {r.getMessage() for r in handler.records}
    handler.records.clear()
    logging.getLogger(name).setLevel(logging.WARNING)  # the same warm pool, a new batch
    node.run({"items": [5, 6]})
    assert [r.getMessage() for r in handler.records] == []
