"""Plain-text tables for reports: the one formatter the CSV statistics (CLI and the pandas-chunk
job) print with."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def _is_number(cell: str) -> bool:
    """Whether a formatted cell holds a number (``1,234.50``, ``-3``, ``inf``) or ``-`` for none."""
    unsigned = cell.lstrip("+-")
    return unsigned[:1].isdigit() or unsigned in ("", "inf", "nan")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """``header`` and ``rows`` as aligned lines, two spaces apart: the first column and text
    columns on the left, numeric columns (header included) on the right."""
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = [
        i > 0 and all(_is_number(row[i]) for row in table[1:] if row[i]) for i in range(len(header))
    ]
    return [
        "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in table
    ]
