"""The one seam: a backend maps a task over items and yields ordered chunks of results.

Choosing a backend, most specific first::

    Square(backend="process", workers=2)      keyword on the node
    class Square(BatchNode): backend = "process"   class attribute
    with use_backend("process", workers=2):   scoped default (a ContextVar, safe in asyncio tasks)
    "sequential"                              when nothing is set

Each option (backend, workers, chunksize, timeout, on_error, progress) is resolved the same way on
its own. Backends are registered by name (``register_backend``); the built-in ones are
``sequential``, ``thread``, ``process`` and ``dask`` (with the optional extra). Inside a worker,
every batch runs sequentially so
nested parallel nodes never oversubscribe the machine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from ..tasks import Chunk, Task

__all__ = [
    "Backend",
    "Settings",
    "available_backends",
    "current_settings",
    "get_backend",
    "in_worker",
    "register_backend",
    "resolve_settings",
    "shutdown",
    "use_backend",
]

ON_ERROR_CHOICES = ("collect", "raise")


class Backend:
    """Runs ``task`` over ``items`` and yields ``Chunk`` objects covering every item, in order.

    Contract for implementations:
    - consume ``items`` lazily, keeping a bounded number of chunks in flight;
    - yield chunks in input order, each item exactly once (a failed item is a ``Failure``);
    - with ``fail_fast``, stop starting new items after the first failure;
    - when the generator is closed early, cancel or stop the work still in flight;
    - ``close()`` releases every worker; a backend is also a context manager.
    """

    name: ClassVar[str] = ""
    parallel: ClassVar[bool] = True  # False only for sequential: BatchFlow then shares `shared`

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None:
            check_positive_int("workers", workers)
        self.workers = workers or default_workers()

    def map(
        self,
        task: Task,
        items: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        fail_fast: bool = True,
    ) -> Iterator[Chunk]:
        raise NotImplementedError(f"{type(self).__name__}.map")

    def close(self) -> None:
        """Release workers; the backend starts new ones if it is used again."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"


def default_workers() -> int:
    """The CPUs this process may use (affinity-aware on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


# --- registry -------------------------------------------------------------------------------

BackendFactory = Callable[..., Backend]
_FACTORIES: dict[str, BackendFactory] = {}
_SHARED: dict[tuple[str, int | None, tuple[tuple[str, Any], ...]], Backend] = {}
_SHARED_LOCK = threading.Lock()


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``factory(workers=...)`` available as ``backend=name`` everywhere."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"backend name must be a non-empty str, got {name!r}")
    _FACTORIES[name] = factory


def available_backends() -> list[str]:
    """Registered backend names, sorted."""
    return sorted(_FACTORIES)


def check_backend_name(name: str) -> None:
    if name not in _FACTORIES:
        raise ValueError(f"unknown backend {name!r}; valid names are {available_backends()}")


def get_backend(name: str, workers: int | None = None, **options: Any) -> Backend:
    """Return the shared backend for ``(name, workers, options)``, so pools stay warm across
    batches. ``options`` go to the backend's factory (``address=`` for Dask, for instance)."""
    check_backend_name(name)
    key = (name, workers, tuple(sorted(options.items())))
    with _SHARED_LOCK:
        backend = _SHARED.get(key)
        if backend is None:
            try:
                backend = _FACTORIES[name](workers=workers, **options)
            except TypeError as exc:
                if not options:
                    raise
                raise TypeError(
                    f"backend {name!r} does not take options {sorted(options)}: {exc}"
                ) from None
            _SHARED[key] = backend
        return backend


def shutdown() -> None:
    """Close every shared backend (their worker pools); they restart on next use."""
    with _SHARED_LOCK:
        backends = list(_SHARED.values())
        _SHARED.clear()
    for backend in backends:
        backend.close()


# --- settings: keyword > class attribute > use_backend() context > default ------------------


@dataclass(frozen=True)
class Settings:
    """Options that choose how a batch runs; ``None`` means "not set here"."""

    backend: str | Backend | None = None
    workers: int | None = None
    chunksize: int | None = None
    timeout: float | None = None
    on_error: str | None = None
    progress: bool | None = None

    def validate(self) -> Settings:
        if self.backend is not None and not isinstance(self.backend, Backend):
            if not isinstance(self.backend, str):
                raise TypeError(f"backend must be a name or a Backend, got {self.backend!r}")
            check_backend_name(self.backend)
        if self.workers is not None:
            check_positive_int("workers", self.workers)
        if self.chunksize is not None:
            check_positive_int("chunksize", self.chunksize)
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds, got {self.timeout!r}")
            if not self.timeout > 0:
                raise ValueError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.on_error is not None and self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(
                f"on_error must be one of {list(ON_ERROR_CHOICES)}, got {self.on_error!r}"
            )
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True or False, got {self.progress!r}")
        return self

    def over(self, outer: Settings) -> Settings:
        """These settings, with every unset field taken from ``outer``."""
        changes = {
            f.name: getattr(outer, f.name) for f in fields(self) if getattr(self, f.name) is None
        }
        return replace(self, **changes)


@dataclass(frozen=True)
class Resolved:
    """Settings with every choice made: what ``run_batch`` uses."""

    backend: Backend
    chunksize: int | None
    timeout: float | None
    fail_fast: bool
    progress: bool


_NO_SETTINGS = Settings()
_CONTEXT: ContextVar[Settings] = ContextVar("batchcore_settings", default=_NO_SETTINGS)
_IN_WORKER: ContextVar[bool] = ContextVar("batchcore_in_worker", default=False)
WORKER_ENV = "BATCHCORE_WORKER"


def in_worker() -> bool:
    """True inside a backend worker (thread or process), where batches run sequentially."""
    return _IN_WORKER.get() or os.environ.get(WORKER_ENV) == "1"


@contextmanager
def mark_worker() -> Iterator[None]:
    token = _IN_WORKER.set(True)
    try:
        yield
    finally:
        _IN_WORKER.reset(token)


def current_settings() -> Settings:
    """The settings made by the innermost ``use_backend`` block (all ``None`` outside)."""
    return _CONTEXT.get()


@contextmanager
def use_backend(
    backend: str | Backend | None = None,
    *,
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    on_error: str | None = None,
    progress: bool | None = None,
    **backend_options: Any,
) -> Iterator[Settings]:
    """Run every batch in the block on ``backend`` unless a node chooses otherwise.

    Unset options inherit from an enclosing block. ``backend_options`` configure the backend
    itself (``use_backend("dask", address="tcp://scheduler:8786")``). The pools outlive the
    block (they are shared and warm); ``batchcore.shutdown()`` closes them.
    """
    if backend_options:
        if not isinstance(backend, str):
            raise TypeError(
                f"backend options {sorted(backend_options)} need a backend name, got {backend!r}"
            )
        backend = get_backend(backend, workers, **backend_options)
    inner = Settings(backend, workers, chunksize, timeout, on_error, progress).validate()
    merged = inner.over(_CONTEXT.get())
    token = _CONTEXT.set(merged)
    try:
        yield merged
    finally:
        _CONTEXT.reset(token)


def node_settings(node: object) -> Settings:
    """The options a node sets itself: keywords first, then class attributes of its class.

    Instance attributes are never read (a node's own ``self.timeout`` is its business), and a
    class attribute that is a method or property is not an option either.
    """
    keywords = getattr(node, "_batch_options", _NO_SETTINGS)
    cls = type(node)
    by_class: dict[str, Any] = {}
    for option in fields(Settings):
        value = getattr(cls, option.name, None)
        if (callable(value) and not isinstance(value, Backend)) or isinstance(value, property):
            value = None
        by_class[option.name] = value
    return keywords.over(Settings(**by_class))


def resolve_settings(node: object) -> Resolved:
    """Decide how ``node`` runs its batch now: node options over the context over defaults."""
    settings = node_settings(node).validate().over(_CONTEXT.get())
    backend: Backend
    if in_worker():
        backend = get_backend("sequential")
    elif isinstance(settings.backend, Backend):
        backend = settings.backend
    else:
        backend = get_backend(settings.backend or "sequential", settings.workers)
    return Resolved(
        backend=backend,
        chunksize=settings.chunksize,
        timeout=settings.timeout,
        fail_fast=(settings.on_error or "raise") == "raise",
        progress=bool(settings.progress),
    )


def _dask_backend(workers: int | None = None, address: str | None = None) -> Backend:
    """Imported on first use: Dask is an optional extra, and a heavy import."""
    from .dask import DaskBackend  # raises ImportError saying which extra to install

    return DaskBackend(workers=workers, address=address)


def _register_builtins() -> None:
    from .process import ProcessBackend
    from .sequential import SequentialBackend
    from .thread import ThreadBackend

    register_backend("sequential", SequentialBackend)
    register_backend("thread", ThreadBackend)
    register_backend("process", ProcessBackend)
    register_backend("dask", _dask_backend)


_register_builtins()
