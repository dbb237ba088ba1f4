"""The batch options, and how a node's batch comes to run where it does.

Each option (``BatchOptions``) is resolved on its own, most specific first::

    Square(backend="process", workers=2)      keyword on the node
    class Square(BatchNode): backend = "process"   class attribute
    with use_backend("process", workers=2):   scoped default (a ContextVar, safe in asyncio tasks)
    "sequential"                              when nothing is set

``backend="auto"`` lets batchcore choose per batch (``choose_backend``): sequential for a batch
of one item, threads when the node says its work releases the GIL (``releases_gil``), processes
for per-item Python work, and always processes under ``max_memory=`` (only a process can be
stopped when it grows too big).

``resolve_options`` turns them into a ``BatchPlan``: the backend object and what ``run_batch``
passes to its ``map``. Inside a worker, every batch runs sequentially so nested parallel nodes
never oversubscribe the machine.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypedDict, TypeVar

from .backends import check_backend_name, get_backend
from .backends.base import Backend, in_worker
from .errors import check_positive_int, format_bytes
from .journal import Journal

__all__ = [
    "OPTION_NAMES",
    "BatchOptions",
    "AUTO",
    "BatchPlan",
    "check_options",
    "choose_backend",
    "parse_size",
    "resolve_options",
    "shows_option_keywords",
    "use_backend",
]

ON_ERROR_CHOICES = ("collect", "raise")
AUTO = "auto"  # not a backend: the choice of one, made per batch


class BatchOptions(TypedDict, total=False):
    """The options that choose how a batch runs: keywords of ``BatchNode``, ``BatchFlow`` and
    ``use_backend``, and class attributes of their subclasses. ``None`` means "not set here"."""

    backend: str | Backend | None  # a registered name, "auto", or a Backend instance
    workers: int | None  # workers of the backend named by ``backend``
    chunksize: int | None  # items per job (default: sized from the measured time per item)
    timeout: float | None  # seconds per item attempt (thread, process and Dask backends)
    max_memory: int | str | None  # per process worker: bytes, or a size such as "2GiB" or "512M"
    on_error: str | None  # "raise" (the default) or "collect"
    progress: bool | None  # a progress bar on stderr
    checkpoint: str | os.PathLike[str] | Journal | None  # a journal file (or folder): resumable


OPTION_NAMES: tuple[str, ...] = tuple(BatchOptions.__annotations__)

# Sizes: a bare K/M/G/T is binary, as in ``ulimit``, ``ps`` and Docker's ``--memory``; KB/MB/GB/TB
# are decimal and KiB/MiB/GiB/TiB (or Kubernetes' Ki/Mi/Gi/Ti) binary, as their standards say.
SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", start=1):
    SIZE_UNITS |= {_letter: 1024**_power, _letter + "b": 1000**_power}
    SIZE_UNITS |= {_letter + "i": 1024**_power, _letter + "ib": 1024**_power}
SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
# A worker's interpreter alone is resident in about this much: a smaller cap is a unit mistake
# (``max_memory=512`` meant as MiB), which would fail every item.
MIN_MEMORY = 16 << 20

Init = TypeVar("Init", bound=Callable[..., None])


def shows_option_keywords(init: Init) -> Init:
    """Show ``init``'s ``**options`` as the keyword-only ``BatchOptions`` they are, so ``help()``
    and ``inspect.signature`` list ``backend=None, workers=None, ...`` (as PocketFlow-style
    signature checks and IDEs expect)."""
    signature = inspect.signature(init)
    parameters = [
        p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
        for name in OPTION_NAMES
    ]
    init.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return init


def check_options(options: dict[str, Any], where: str) -> BatchOptions:
    """The options in ``options`` that are set (not ``None``), each checked; ``TypeError`` for an
    unknown name (``where`` says whose), as Python says for an unexpected keyword."""
    unknown = sorted(options.keys() - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"{where} got an unexpected keyword argument {unknown[0]!r}")
    checked: dict[str, Any] = {name: value for name, value in options.items() if value is not None}
    backend = checked.get("backend")
    if backend is not None and not isinstance(backend, Backend):
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a name or a Backend, got {backend!r}")
        if backend != AUTO:
            check_backend_name(backend)
    for name in ("workers", "chunksize"):
        if name in checked:
            check_positive_int(name, checked[name])
    timeout = checked.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if "max_memory" in checked:
        checked["max_memory"] = parse_size(checked["max_memory"])
    on_error = checked.get("on_error")
    if on_error is not None and on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {list(ON_ERROR_CHOICES)}, got {on_error!r}")
    progress = checked.get("progress")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    checkpoint = checked.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str | os.PathLike | Journal):
        raise TypeError(f"checkpoint must be a path or a Journal, got {checkpoint!r}")
    return checked  # type: ignore[return-value]


def parse_size(value: object, name: str = "max_memory", minimum: int = MIN_MEMORY) -> int:
    """Bytes from an int or a size such as ``"2GiB"``, ``"512M"`` or ``"1.5 GB"`` (see
    ``SIZE_UNITS``), at least ``minimum``; ``ValueError`` names ``name``, the value and the units
    it accepts."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{name} must be a number of bytes or a size such as '2GiB', got {value!r}")
    if isinstance(value, str):
        match = SIZE_PATTERN.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in SIZE_UNITS:
            units = ", ".join(sorted({u.upper().replace("I", "i") for u in SIZE_UNITS if u}))
            raise ValueError(
                f"{name} must be a number of bytes or a size such as '512MiB' or '2G' "
                f"(units: {units}), got {value!r}"
            )
        size = int(float(match.group(1)) * SIZE_UNITS[unit])
    else:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be a finite number of bytes, got {value!r}")
        size = int(value)
    if size < minimum and minimum != MIN_MEMORY:
        raise ValueError(f"{name} must be at least {format_bytes(minimum)}, got {value!r}")
    if size < minimum:
        raise ValueError(
            f"{name} must be at least {format_bytes(MIN_MEMORY)} (a worker's interpreter alone "
            f"uses about that; was a unit left out?), got {value!r}"
        )
    return size


@dataclass(frozen=True)
class BatchPlan:
    """The options with every choice made: the backend a batch runs on and how."""

    backend: Backend
    chunksize: int | None
    timeout: float | None
    fail_fast: bool
    progress: bool
    reason: str = ""  # why this backend, when batchcore chose it (backend="auto")
    max_memory: int | None = None  # bytes a process worker may hold (checked: ``parse_size``)
    checkpoint: str | os.PathLike[str] | Journal | None = None  # where finished items are kept


_SCOPE: ContextVar[BatchOptions] = ContextVar("batchcore_options")  # unset: read with .get({})


@contextmanager
def use_backend(backend: str | Backend | None = None, **options: Any) -> Iterator[SimpleNamespace]:
    """Run every batch in the block on ``backend`` unless a node chooses otherwise.

    ``options`` are the other ``BatchOptions`` (``workers=2``, ``on_error="collect"``...); unset
    ones inherit from an enclosing block. Any other keyword configures the backend itself
    (``use_backend("dask", address="tcp://scheduler:8786")``). Yields the options in force in the
    block, as attributes (``None`` where unset). The pools outlive the block (they are shared and
    warm); ``batchcore.shutdown()`` closes them.
    """
    batch_options = {name: options.pop(name) for name in OPTION_NAMES if name in options}
    if options:
        if not isinstance(backend, str):
            raise TypeError(
                f"backend options {sorted(options)} need a backend name, got {backend!r}"
            )
        backend = get_backend(backend, batch_options.get("workers"), **options)
    inner = check_options({"backend": backend, **batch_options}, "use_backend()")
    merged: BatchOptions = {**_SCOPE.get({}), **inner}
    token = _SCOPE.set(merged)
    try:
        yield SimpleNamespace(**{name: merged.get(name) for name in OPTION_NAMES})
    finally:
        _SCOPE.reset(token)


def class_options(node: object) -> BatchOptions:
    """The options set as class attributes of ``node``'s class, checked now (they can change).

    Instance attributes are never read (a node's own ``self.timeout`` is its business), and a
    class attribute that is a method or property is not an option either.
    """
    cls = type(node)
    found: dict[str, Any] = {}
    for name in OPTION_NAMES:
        value = getattr(cls, name, None)
        if (callable(value) and not isinstance(value, Backend)) or isinstance(value, property):
            continue
        found[name] = value
    return check_options(found, f"{cls.__name__} class attributes")


def resolve_options(node: object, items: Iterable[Any] | None = None) -> BatchPlan:
    """Decide how ``node`` runs its batch of ``items`` now: keywords over class attributes over
    the ``use_backend`` scope over defaults."""
    unset: BatchOptions = {}
    keywords: BatchOptions = getattr(node, "_batch_options", unset)  # checked by the constructor
    options: BatchOptions = {**_SCOPE.get({}), **class_options(node), **keywords}
    chosen = options.get("backend")
    max_memory = options.get("max_memory")  # bytes, once checked (``parse_size``)
    backend: Backend
    reason = ""
    if in_worker():
        backend = get_backend("sequential")
        max_memory = None  # the worker this nested batch runs in is itself under the cap
    elif isinstance(chosen, Backend):
        backend = chosen
    elif chosen == AUTO:
        name, reason = choose_backend(node, items, max_memory is not None)
        backend = get_backend(name, options.get("workers"))
    else:
        backend = get_backend(chosen or "sequential", options.get("workers"))
    if max_memory is not None and not backend.caps_memory:
        raise ValueError(refuse_max_memory(backend.name, int(max_memory)))
    return BatchPlan(
        backend=backend,
        chunksize=options.get("chunksize"),
        timeout=options.get("timeout"),
        fail_fast=options.get("on_error", "raise") == "raise",
        progress=bool(options.get("progress")),
        reason=reason,
        max_memory=None if max_memory is None else int(max_memory),
        checkpoint=options.get("checkpoint"),
    )


def refuse_max_memory(name: str, max_memory: int) -> str:
    """Why backend ``name`` cannot take ``max_memory=``, and what to do instead."""
    cap = f"max_memory={format_bytes(max_memory)}"
    why = {
        "sequential": "runs items in the caller's own process, which batchcore cannot stop",
        "thread": "runs items in threads of the caller's process: a thread cannot be stopped",
        "dask": (
            "has its own per-worker cap, which governs there: the cluster's memory_limit "
            "(batchcore's own local cluster keeps Dask's default, RAM / CPUs per worker thread)"
        ),
    }.get(name, "cannot stop a worker that grows too big")
    return (
        f"{cap} needs a backend that runs items in worker processes it can stop ('process' or "
        f"'auto'); backend {name!r} {why}"
    )


def choose_backend(
    node: object, items: Iterable[Any] | None, max_memory: bool = False
) -> tuple[str, str]:
    """What ``backend="auto"`` runs ``node``'s batch on, and why (for summaries and logs).

    Under ``max_memory`` only a process worker can be stopped when it grows too big, however few
    the items or whatever releases the GIL. One item has nothing to share out. Work that releases
    the GIL (pyarrow, numpy, Pillow: the node's class says so with ``releases_gil = True``) runs
    on threads, which start at once and copy nothing; any other work is per-item Python, which
    only processes run in parallel.
    """
    if max_memory:
        return "process", "auto: max_memory= caps only process workers"
    try:
        count: int | None = len(items)  # type: ignore[arg-type]
    except TypeError:  # a generator (or no items yet): its length is not known
        count = None
    if count is not None and count < 2:
        return "sequential", f"auto: {count} item{'' if count == 1 else 's'}, nothing to share"
    if getattr(type(node), "releases_gil", False):
        return "thread", f"auto: {type(node).__name__}'s work releases the GIL"
    return "process", "auto: per-item Python work"
