"""The asyncio family, with PocketFlow's semantics: ``*_async`` hooks awaited on one event loop.

Additions: ``AsyncNode`` and the async batch nodes take ``timeout`` (seconds per attempt of
``exec_async``, retried like a failure); ``AsyncParallelBatchNode`` and ``AsyncParallelBatchFlow``
take ``max_concurrency`` and, when one item fails, cancel the items still running before the
error reaches the caller; inside an ``AsyncFlow`` a sync ``BatchNode``/``BatchFlow`` on a
parallel backend runs in a thread, so its pool works while the event loop stays free.
"""

from __future__ import annotations

import asyncio
import copy
import warnings
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, TypeVar

from .backends.base import CUR_RETRY
from .errors import ItemTimeoutError, count_attempts, short_repr
from .flows import BatchFlow, Flow
from .nodes import BaseNode, BatchNode, Node
from .options import resolve_options

__all__ = [
    "AsyncBatchFlow",
    "AsyncBatchNode",
    "AsyncFlow",
    "AsyncNode",
    "AsyncParallelBatchFlow",
    "AsyncParallelBatchNode",
]

T = TypeVar("T")

# The index of the batch item whose ``exec_async`` runs in this asyncio task (None: not a batch).
_ITEM_INDEX: ContextVar[int | None] = ContextVar("batchcore_async_item_index", default=None)


def _check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds per attempt: ``None`` (no limit) or a number > 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    return timeout  # as given, so messages show the user's own value


class AsyncNode(Node):
    """A node whose hooks are coroutines: ``prep_async``, ``exec_async``, ``post_async``.

    ``timeout`` (seconds) bounds each attempt of ``exec_async``: an attempt past it is cancelled
    and counts as a failure (retried, then ``exec_fallback_async`` gets a ``TimeoutError``).
    """

    def __init__(
        self, max_retries: int = 1, wait: float = 0, *, timeout: float | None = None
    ) -> None:
        super().__init__(max_retries, wait)
        self._exec_timeout = _check_timeout(timeout)

    async def prep_async(self, shared: Any) -> Any:
        """Async twin of ``prep``."""

    async def exec_async(self, prep_res: Any) -> Any:
        """Async twin of ``exec``; retried like it."""

    async def exec_fallback_async(self, prep_res: Any, exc: Exception) -> Any:
        """Async twin of ``exec_fallback``: re-raises by default."""
        raise exc

    async def post_async(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        """Async twin of ``post``."""

    async def _exec(self, prep_res: Any) -> Any:
        for attempt in range(self.max_retries):
            token = CUR_RETRY.set(attempt)  # per asyncio task, so parallel items never share it
            try:
                return await self._attempt(prep_res, attempt)
            except Exception as exc:
                if attempt == self.max_retries - 1:
                    return await self.exec_fallback_async(prep_res, exc)
                if self.wait > 0:
                    await asyncio.sleep(self.wait)
            finally:
                CUR_RETRY.reset(token)
        return None

    async def _attempt(self, prep_res: Any, attempt: int) -> Any:
        """One attempt of ``exec_async``, cancelled after ``timeout`` seconds."""
        timeout = getattr(self, "_exec_timeout", None)  # None on nodes that skip __init__
        if timeout is None:
            return await self.exec_async(prep_res)
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await self.exec_async(prep_res)
        except TimeoutError as exc:
            if not scope.expired():
                raise  # exec_async's own TimeoutError, not this attempt's deadline
            raise self._timeout_error(prep_res, timeout, attempt) from exc

    def _timeout_error(self, prep_res: Any, timeout: float, attempt: int) -> TimeoutError:
        """The error an attempt past ``timeout`` fails with, naming the item in a batch."""
        index = _ITEM_INDEX.get()
        if index is not None:
            return ItemTimeoutError(index, short_repr(prep_res), timeout, attempt + 1)
        tries = count_attempts(attempt + 1)
        return TimeoutError(
            f"{type(self).__name__}.exec_async ran longer than timeout={timeout!r} seconds; "
            f"gave up after {tries}"
        )

    async def run_async(self, shared: Any) -> Any:
        """Run this node alone (use an ``AsyncFlow`` to follow successors)."""
        if self.successors:
            warnings.warn("Node won't run successors. Use AsyncFlow.")
        return await self._run_async(shared)

    async def _run_async(self, shared: Any) -> Any:
        prep_res = await self.prep_async(shared)
        exec_res = await self._exec(prep_res)
        return await self.post_async(shared, prep_res, exec_res)

    def _run(self, shared: Any) -> Any:
        raise RuntimeError("Use run_async.")


class AsyncBatchNode(AsyncNode, BatchNode):
    """Awaits ``exec_async`` for each item, one after another (``timeout`` per attempt)."""

    def __init__(
        self, max_retries: int = 1, wait: float = 0, *, timeout: float | None = None
    ) -> None:
        super().__init__(max_retries, wait, timeout=timeout)

    async def _exec(self, items: Any) -> list[Any]:  # type: ignore[override]
        per_item = super()._exec
        return [await _indexed(index, per_item(item)) for index, item in enumerate(items)]


async def _indexed(index: int, step: Awaitable[T]) -> T:
    """Await one item's step with its batch index known (for a timeout's message)."""
    token = _ITEM_INDEX.set(index)
    try:
        return await step
    finally:
        _ITEM_INDEX.reset(token)


async def _awaited(step: Awaitable[T]) -> T:
    """``step`` as a coroutine, which a task needs (a limited step may be any awaitable)."""
    return await step


async def _all_or_cancel(steps: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``steps`` concurrently, results in order; the first to fail cancels the others and
    its own exception (not an ``ExceptionGroup``) reaches the caller, as ``gather`` would raise."""
    failure: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(step)) for step in steps]
    except BaseExceptionGroup as errors:
        failure = errors.exceptions[0]  # in the order they happened: the one that stopped it
    if failure is not None:
        raise failure
    return [task.result() for task in tasks]


def _limited(limit: int | None) -> Callable[[Awaitable[T]], Awaitable[T]]:
    """Wrap awaitables so that at most ``limit`` run at once (no limit when ``None``)."""
    if limit is None:
        return lambda awaitable: awaitable
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"max_concurrency must be an int or None, got {limit!r}")
    if limit < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {limit!r}")
    semaphore = asyncio.Semaphore(limit)

    async def run(awaitable: Awaitable[T]) -> T:
        async with semaphore:
            return await awaitable

    return run


class AsyncParallelBatchNode(AsyncNode, BatchNode):
    """Runs every item's ``exec_async`` concurrently, results in input order.

    ``max_concurrency`` caps how many items are awaited at once (default: no cap); ``timeout``
    bounds each attempt. An item that fails (after its retries and fallback) cancels the items
    still running, then its exception reaches the caller.
    """

    def __init__(
        self,
        max_retries: int = 1,
        wait: float = 0,
        *,
        max_concurrency: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(max_retries, wait, timeout=timeout)
        _limited(max_concurrency)  # validate now, not at run time
        self._max_concurrency = max_concurrency

    async def _exec(self, items: Any) -> list[Any]:  # type: ignore[override]
        limit = _limited(self._max_concurrency)
        per_item = super()._exec
        return await _all_or_cancel(
            _indexed(index, limit(per_item(item))) for index, item in enumerate(items)
        )


def _offloads(node: BaseNode) -> bool:
    """A sync batch on a parallel backend runs in a thread so it does not block the event loop."""
    return isinstance(node, (BatchNode, BatchFlow)) and resolve_options(node).backend.parallel


class AsyncFlow(Flow, AsyncNode):
    """A flow that awaits async nodes and runs sync ones; ``post_async`` gets the last action."""

    async def _orch_async(self, shared: Any, params: dict[str, Any] | None = None) -> Any:
        curr = copy.copy(self.start_node)
        run_params = params or {**self.params}
        last_action = None
        while curr:
            curr.set_params(run_params)
            if isinstance(curr, AsyncNode):
                last_action = await curr._run_async(shared)
            elif _offloads(curr):
                last_action = await asyncio.to_thread(curr._run, shared)
            else:
                last_action = curr._run(shared)
            curr = copy.copy(self.get_next_node(curr, last_action))
        return last_action

    async def _run_async(self, shared: Any) -> Any:
        prep_res = await self.prep_async(shared)
        last_action = await self._orch_async(shared)
        return await self.post_async(shared, prep_res, last_action)

    async def post_async(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        return exec_res


class AsyncBatchFlow(AsyncFlow, BatchFlow):
    """Runs the sub-flow once per params dict from ``prep_async``, one after another."""

    async def _run_async(self, shared: Any) -> Any:
        batch_params = await self.prep_async(shared) or []
        for params in batch_params:
            await self._orch_async(shared, {**self.params, **params})
        return await self.post_async(shared, batch_params, None)


class AsyncParallelBatchFlow(AsyncFlow, BatchFlow):
    """Runs the sub-flow for every params dict concurrently on the event loop (shared ``shared``).

    ``max_concurrency`` caps how many sub-flows run at once (default: no cap); a sub-flow that
    fails cancels the others still running.
    """

    def __init__(
        self, start: BaseNode | None = None, *, max_concurrency: int | None = None
    ) -> None:
        super().__init__(start)
        _limited(max_concurrency)
        self._max_concurrency = max_concurrency

    async def _run_async(self, shared: Any) -> Any:
        batch_params = await self.prep_async(shared) or []
        limit = _limited(self._max_concurrency)
        await _all_or_cancel(
            limit(self._orch_async(shared, {**self.params, **params})) for params in batch_params
        )
        return await self.post_async(shared, batch_params, None)
