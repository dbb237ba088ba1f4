"""The asyncio family: concurrency limits, per-task retry counters, batches in an AsyncFlow."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from faulty import FaultyNode

from batchcore import (
    AsyncFlow,
    AsyncNode,
    AsyncParallelBatchFlow,
    AsyncParallelBatchNode,
    Flow,
    use_backend,
)


class Tracker:
    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    async def work(self, seconds: float) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(seconds)
        self.running -= 1


@pytest.mark.parametrize(("limit", "peak"), [(None, 10), (1, 1), (3, 3)])
def test_parallel_batch_node_concurrency_limit(limit: int | None, peak: int) -> None:
    tracker = Tracker()

    class Sleepy(AsyncParallelBatchNode):
        async def prep_async(self, shared: Any) -> Any:
            return list(range(10))

        async def exec_async(self, item: int) -> int:
            await tracker.work(0.01)
            return item * 2

        async def post_async(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    shared: dict[str, Any] = {}
    asyncio.run(Sleepy(max_concurrency=limit).run_async(shared))
    assert shared["out"] == [x * 2 for x in range(10)]
    assert tracker.peak == peak


@pytest.mark.parametrize(("limit", "peak"), [(None, 6), (2, 2)])
def test_parallel_batch_flow_concurrency_limit(limit: int | None, peak: int) -> None:
    tracker = Tracker()

    class Step(AsyncNode):
        async def exec_async(self, prep_res: Any) -> None:
            await tracker.work(0.01)

        async def post_async(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            shared.setdefault("seen", []).append(self.params["i"])

    class Many(AsyncParallelBatchFlow):
        async def prep_async(self, shared: Any) -> Any:
            return [{"i": i} for i in range(6)]

    shared: dict[str, Any] = {}
    asyncio.run(Many(start=Step(), max_concurrency=limit).run_async(shared))
    assert sorted(shared["seen"]) == list(range(6))
    assert tracker.peak == peak


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_concurrency_limit_is_rejected(limit: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="max_concurrency"):
        AsyncParallelBatchNode(max_concurrency=limit)


def test_retry_counter_is_per_item_under_asyncio() -> None:
    """PocketFlow HEAD keeps cur_retry on the node, so concurrent items fall back too early."""

    class FlakyOnce(AsyncParallelBatchNode):
        async def prep_async(self, shared: Any) -> Any:
            return ["a", "b"]

        async def exec_async(self, item: str) -> str:
            attempt = self.cur_retry
            await asyncio.sleep(0.01 if item == "a" else 0.02)
            if attempt < 2:
                raise RuntimeError("not yet")
            return f"{item} on attempt {self.cur_retry}"

        async def exec_fallback_async(self, prep_res: Any, exc: Exception) -> str:
            return f"{prep_res} fell back"

        async def post_async(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    shared: dict[str, Any] = {}
    asyncio.run(FlakyOnce(max_retries=3).run_async(shared))
    assert shared["out"] == ["a on attempt 2", "b on attempt 2"]


def test_process_batch_in_async_flow_does_not_block_the_loop() -> None:
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    batch = FaultyNode(backend="process", workers=2, chunksize=1)
    batch.set_params({"kind": "raise", "bad": (), "delay": 0.05})

    async def main() -> dict[str, Any]:
        shared: dict[str, Any] = {"items": list(range(16))}  # ~0.4 s of work on 2 workers
        stop = asyncio.Event()
        tick_task = asyncio.create_task(ticker(stop))
        await AsyncFlow(start=batch).run_async(shared)
        stop.set()
        await tick_task
        return shared

    began = time.monotonic()
    shared = asyncio.run(main())
    elapsed = time.monotonic() - began
    assert shared["out"] == [x * 10 for x in range(16)]
    assert ticks >= elapsed / 0.01 / 4  # the loop kept ticking while the pool worked


def test_sequential_sync_nodes_in_async_flow_run_inline() -> None:
    """PocketFlow semantics: a sync node in an AsyncFlow runs on the loop's thread."""
    import threading

    seen: list[int] = []
    batch = FaultyNode()
    batch.exec = lambda item: seen.append(threading.get_ident())  # type: ignore[method-assign]

    async def main() -> None:
        await AsyncFlow(start=batch).run_async({"items": [1, 2]})

    asyncio.run(main())
    assert set(seen) == {threading.get_ident()}


def test_use_backend_reaches_batches_inside_async_flows() -> None:
    batch = FaultyNode(workers=2)
    batch.set_params({"kind": "raise", "bad": ()})

    async def main() -> dict[str, Any]:
        shared: dict[str, Any] = {"items": list(range(5))}
        with use_backend("process"):
            await AsyncFlow(start=Flow(start=batch)).run_async(shared)
        return shared

    shared = asyncio.run(main())
    assert shared["out"] == [x * 10 for x in range(5)]
    assert batch.batch_stats.backend == "process"
