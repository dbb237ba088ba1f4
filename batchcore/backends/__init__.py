"""The registry of backends by name, and the shared (warm) instance per name and worker count.

The built-in backends, ``sequential``, ``thread``, ``process`` and ``dask`` (with the optional
extra), are registered by name and imported on first use: a worker process, or a program that
only runs sequentially, never imports the others. ``register_backend`` adds more.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from .base import Backend, default_workers

__all__ = [
    "Backend",
    "available_backends",
    "check_backend_name",
    "get_backend",
    "register_backend",
    "shutdown",
]

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
    # ``workers=None`` means the CPU count: one backend for both, not a second pool beside it.
    key = (name, default_workers() if workers is None else workers, tuple(sorted(options.items())))
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


def _imported_on_first_use(module: str, class_name: str, **defaults: Any) -> BackendFactory:
    """A factory for a built-in backend whose module is imported when the first one is made
    (Dask's raises ``ImportError`` then, saying which extra to install); ``defaults`` are
    keywords every backend it makes gets."""

    def factory(**options: Any) -> Backend:
        backend_class = getattr(importlib.import_module(module, __name__), class_name)
        return backend_class(**defaults, **options)  # type: ignore[no-any-return]

    return factory


register_backend("sequential", _imported_on_first_use(".sequential", "SequentialBackend"))
register_backend("thread", _imported_on_first_use(".thread", "ThreadBackend"))
# Backends by name share one warm process pool, resized to each batch (``ProcessBackend``).
register_backend("process", _imported_on_first_use(".process", "ProcessBackend", program_pool=True))
register_backend("dask", _imported_on_first_use(".dask", "DaskBackend"))
