"""One progress bar per batch, in the parent process, on stderr (tqdm), or nothing at all."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["ProgressBar", "progress_bar"]


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> None: ...


class _NoBar:
    """Stands in for a bar when progress is off, so callers never branch."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "item") -> ProgressBar:
    """A tqdm bar advanced as results arrive (``total=None`` when the input length is unknown).

    ``unit="B"`` shows bytes with binary prefixes (KiB, MiB, ...).
    """
    if not enabled:
        return _NoBar()
    import sys

    from tqdm.auto import tqdm

    binary = unit == "B"
    bar: ProgressBar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=binary,
        unit_divisor=1024 if binary else 1000,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    return bar
