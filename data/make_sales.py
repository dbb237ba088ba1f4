"""Write a deterministic sales CSV: the same seed and row count always give the same bytes.

Columns ``order_id,ts,region,product,qty,amount,note``. ``note`` is free text that often holds
commas and double quotes (quoted RFC 4180 style by the ``csv`` module) but never a newline, so
every record is one line. Rows are made in numpy batches and written with ``csv.writer.writerows``;
memory stays bounded whatever the size. Bytes are reproducible for a given numpy version.

    python data/make_sales.py                         # data/sales.csv, 5,000 rows
    python data/make_sales.py /tmp/big.csv --size 1GB --seed 7
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER = ("order_id", "ts", "region", "product", "qty", "amount", "note")
REGIONS = ("North", "South", "East", "West", "Central", "Online")
_MATERIALS = (
    "Steel",
    "Oak",
    "Glass",
    "Copper",
    "Linen",
    "Cedar",
    "Nylon",
    "Marble",
    "Wool",
    "Clay",
)
_THINGS = ("Bolt", "Chair", "Lamp", "Kettle", "Basket")
PRODUCTS = tuple(f"{material} {thing}" for material in _MATERIALS for thing in _THINGS)  # 50
# Unit prices in cents, fixed per product (not per seed): 1.99 to about 250.00.
PRICES = np.array([199 + (index * 7_919) % 24_800 for index in range(len(PRODUCTS))])
DISCOUNTS = np.array([100, 100, 100, 100, 95, 90, 80])  # percent of list price actually paid
NOTE_PARTS = (
    "gift wrap, please",
    'customer wrote "thanks!"',
    'size 27" monitor',
    "leave at door",
    'said "ASAP", twice',
    "repeat order",
    "fragile, handle with care",
    '"rush" shipping',
    "paid by card",
    "call before delivery, not after 6pm",
    "backorder",
    'label reads "Sales, Inc."',
)
NOTE_POOL_SIZE = 512
START = np.datetime64("2024-01-01T00:00:00", "s")
BATCH_ROWS = 50_000
DEFAULT_ROWS = 5_000
DEFAULT_SEED = 42
DEFAULT_OUT = Path(__file__).with_name("sales.csv")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


@dataclass
class Written:
    """What one run wrote: where, how many rows and bytes, and how long it took."""

    path: Path
    rows: int
    size: int
    seconds: float


def parse_size(text: str) -> int:
    """``"100MB"`` -> 100_000_000 bytes; KB/MB/GB are powers of 10, KiB/MiB/GiB powers of 2."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"size must look like 500KB, 100MB or 1GB, got {text!r}")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[(unit or "").lower()])
    if size < 1:
        raise ValueError(f"size must be at least 1 byte, got {text!r}")
    return size


def note_pool(rng: np.random.Generator) -> list[str]:
    """Notes to draw from: about a third empty, the rest one to three parts joined by commas."""
    notes: list[str] = []
    for _ in range(NOTE_POOL_SIZE):
        parts = int(rng.integers(0, 4))  # 0 gives an empty note (read back as a missing value)
        picks = rng.choice(len(NOTE_PARTS), size=parts, replace=False)
        notes.append(", ".join(NOTE_PARTS[index] for index in picks))
    assert not any("\n" in note or "\r" in note for note in notes)
    return notes


def iter_batches(seed: int, batch_rows: int = BATCH_ROWS) -> Iterator[list[tuple[object, ...]]]:
    """Yield rows ``batch_rows`` at a time, forever; the stream depends only on ``seed``."""
    rng = np.random.default_rng(seed)
    notes = np.array(note_pool(rng), dtype=object)
    regions = np.array(REGIONS, dtype=object)
    products = np.array(PRODUCTS, dtype=object)
    next_id = 1
    clock = START
    while True:
        n = batch_rows
        product = rng.integers(0, len(PRODUCTS), n)
        qty = rng.integers(1, 13, n)
        cents = qty * PRICES[product] * DISCOUNTS[rng.integers(0, len(DISCOUNTS), n)] // 100
        times = clock + np.cumsum(rng.integers(1, 90, n)).astype("timedelta64[s]")
        clock = times[-1]
        yield list(
            zip(
                range(next_id, next_id + n),
                np.datetime_as_string(times, unit="s").tolist(),
                regions[rng.integers(0, len(REGIONS), n)].tolist(),
                products[product].tolist(),
                qty.tolist(),
                [f"{c // 100}.{c % 100:02d}" for c in cents.tolist()],
                notes[rng.integers(0, len(notes), n)].tolist(),
                strict=True,
            )
        )
        next_id += n


def render(rows: list[tuple[object, ...]]) -> str:
    """CSV text for ``rows`` (minimal RFC 4180 quoting, ``\\n`` line ends)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_sales(
    out: Path, *, rows: int | None = None, size: int | None = None, seed: int = DEFAULT_SEED
) -> Written:
    """Write exactly ``rows`` rows, or whole rows until the file holds at least ``size`` bytes."""
    batches = (render(batch) for batch in iter_batches(seed))
    return write_csv(out, render([HEADER]), batches, rows=rows, size=size)


def write_csv(
    out: Path, header: str, batches: Iterator[str], *, rows: int | None, size: int | None
) -> Written:
    """Write ``header``, then rows from ``batches`` (ASCII text of whole rows, one line each):
    exactly ``rows`` of them, or whole rows until the file holds at least ``size`` bytes. Every
    generator here yields one batch size for every request, so N rows are a prefix of N+1."""
    if (rows is None) == (size is None):
        raise ValueError("give exactly one of rows= or size=")
    began = time.perf_counter()
    written_rows = 0
    written_bytes = len(header)
    with open(out, "w", encoding="ascii", newline="") as handle:
        handle.write(header)
        while not ((rows is not None and written_rows >= rows) or (size and written_bytes >= size)):
            text = next(batches)
            if rows is not None:
                text = _first_lines(text, rows - written_rows)
            elif size and len(text) > size - written_bytes:  # last batch: cut after the row
                text = text[: text.index("\n", size - written_bytes - 1) + 1]  # that reaches size
            handle.write(text)
            written_rows += text.count("\n")
            written_bytes += len(text)  # ASCII only, so characters are bytes
    return Written(out, written_rows, written_bytes, time.perf_counter() - began)


def _first_lines(text: str, count: int) -> str:
    """The first ``count`` lines of ``text`` (all of it when it has fewer)."""
    end = -1
    for _ in range(count):
        end = text.find("\n", end + 1)
        if end < 0:
            return text
    return text[: end + 1]


def generator_cli(
    argv: list[str] | None,
    description: str,
    write: Callable[..., Written],
    default_out: Path,
    default_rows: int,
    default_seed: int,
) -> int:
    """The command line every CSV generator here shares: OUT, --rows or --size, --seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "out", nargs="?", type=Path, default=default_out, help=f"default: {default_out}"
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--rows", type=int, help=f"number of rows (default {default_rows:,})")
    amount.add_argument("--size", help="write rows until the file reaches SIZE, e.g. 300MB, 1GB")
    parser.add_argument("--seed", type=int, default=default_seed, help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        size = None if args.size is None else parse_size(args.size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rows is not None and args.rows < 0:
        parser.error(f"--rows must be >= 0, got {args.rows}")
    rows = default_rows if args.rows is None and size is None else args.rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = write(args.out, rows=rows, size=size, seed=args.seed)
    rate = done.size / 1e6 / max(done.seconds, 1e-9)
    print(
        f"wrote {done.path}: {done.rows:,} rows, {done.size:,} bytes "
        f"in {done.seconds:.2f} s ({rate:.1f} MB/s)",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return generator_cli(
        argv,
        "Write a deterministic sales CSV (order_id,ts,region,product,qty,amount,note).",
        write_sales,
        DEFAULT_OUT,
        DEFAULT_ROWS,
        DEFAULT_SEED,
    )


if __name__ == "__main__":
    sys.exit(main())
