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


# --- timeouts and cancellation (each test bounded by pytest-timeout: nothing here may hang) ---


@pytest.mark.timeout(60)
def test_async_node_timeout_is_retried_then_falls_back() -> None:
    attempts: list[int] = []

    class Slow(AsyncNode):
        async def exec_async(self, prep_res: Any) -> str:
            attempts.append(self.cur_retry)
            await asyncio.sleep(600 if self.cur_retry < 2 else 0)
            return f"done on attempt {self.cur_retry}"

    began = time.monotonic()
    node = Slow(max_retries=3, timeout=0.2)
    assert asyncio.run(node._exec(None)) == "done on attempt 2"
    assert attempts == [0, 1, 2]
    assert time.monotonic() - began < 20

    class Fallback(Slow):
        async def exec_fallback_async(self, prep_res: Any, exc: Exception) -> str:
            return f"{type(exc).__name__}: {exc}"

    attempts.clear()
    result = asyncio.run(Fallback(max_retries=2, timeout=0.2)._exec(None))
    assert result == (
        "TimeoutError: Fallback.exec_async ran longer than timeout=0.2 seconds; "
        "gave up after 2 attempts"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_async_batch_timeout_names_the_item(parallel: bool) -> None:
    from batchcore import AsyncBatchNode, ItemTimeoutError

    base: Any = AsyncParallelBatchNode if parallel else AsyncBatchNode

    class Hangs(base):  # type: ignore[misc,valid-type]
        async def prep_async(self, shared: Any) -> Any:
            return ["a", "b", "hang"]

        async def exec_async(self, item: str) -> str:
            await asyncio.sleep(600 if item == "hang" else 0)
            return item

    began = time.monotonic()
    with pytest.raises(ItemTimeoutError, match=r"item 2 \('hang'\) ran longer than timeout=0.2"):
        asyncio.run(Hangs(timeout=0.2).run_async({}))
    assert time.monotonic() - began < 20


@pytest.mark.timeout(60)
def test_exec_asyncs_own_timeout_error_is_not_the_deadline() -> None:
    class OwnTimeout(AsyncNode):
        async def exec_async(self, prep_res: Any) -> None:
            raise TimeoutError("the server did not answer")

    with pytest.raises(TimeoutError, match="the server did not answer"):
        asyncio.run(OwnTimeout(timeout=30)._exec(None))


@pytest.mark.parametrize("timeout", [0, -1.0, "1", True])
def test_bad_async_timeout_is_rejected(timeout: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="timeout"):
        AsyncNode(timeout=timeout)


@pytest.mark.timeout(60)
def test_a_failing_parallel_batch_cancels_its_siblings() -> None:
    """The error reaches the caller only after the siblings still running were cancelled."""
    events: list[str] = []

    class OneFails(AsyncParallelBatchNode):
        async def prep_async(self, shared: Any) -> Any:
            return [0, 1, 2]

        async def exec_async(self, item: int) -> int:
            if item == 1:
                await asyncio.sleep(0.1)
                raise ValueError("item 1 is bad")
            try:
                await asyncio.sleep(600)
            except asyncio.CancelledError:
                events.append(f"cancelled {item}")
                raise
            return item

    async def main() -> None:
        try:
            await OneFails().run_async({})
        except ValueError as exc:
            events.append(f"caller got {exc}")

    began = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - began < 20
    # the siblings are cancelled in no set order, both before the caller sees the error
    assert sorted(events[:2]) == ["cancelled 0", "cancelled 2"]
    assert events[2:] == ["caller got item 1 is bad"]


@pytest.mark.timeout(60)
def test_a_failing_parallel_batch_flow_cancels_its_siblings() -> None:
    events: list[str] = []

    class Step(AsyncNode):
        async def exec_async(self, prep_res: Any) -> None:
            if self.params["i"] == 0:
                raise KeyError("run 0")
            try:
                await asyncio.sleep(600)
            except asyncio.CancelledError:
                events.append(f"cancelled {self.params['i']}")
                raise

    class Many(AsyncParallelBatchFlow):
        async def prep_async(self, shared: Any) -> Any:
            return [{"i": i} for i in range(3)]

    async def main() -> None:
        try:
            await Many(start=Step()).run_async({})
        except KeyError:
            events.append("caller got KeyError")

    asyncio.run(main())
    assert sorted(events[:2]) == ["cancelled 1", "cancelled 2"]
    assert events[2:] == ["caller got KeyError"]
