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

    ``desc`` labels it (a node's ``progress_label``: what the user asked for, such as
    ``sales.csv``). ``unit="B"`` counts bytes with SI prefixes, the counts carrying the unit as
    the rate does: ``420kB/1.2MB [..., 3.1MB/s]`` (tqdm alone prints ``420k/1.2M ... 3.1MB/s``).
    """
    if not enabled:
        return _NoBar()
    import sys

    from tqdm.auto import tqdm

    in_bytes = unit == "B"
    bar_format: str | None = None
    if in_bytes:
        counts = "{n_fmt}B/{total_fmt}B" if total is not None else "{n_fmt}B"
        middle = "{l_bar}{bar}| " if total is not None else "{desc}: "
        bar_format = middle + counts + " [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    bar: ProgressBar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=in_bytes,
        unit_divisor=1000,
        file=sys.stderr,
        dynamic_ncols=True,
        bar_format=bar_format,
    )
    return bar
