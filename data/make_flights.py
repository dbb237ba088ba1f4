"""Write a deterministic, wide, real-world-shaped flights CSV: the same seed and row count always
give the same bytes.

Twenty columns shaped like the US on-time flight data that peers trip over::

    fl_date,day_of_week,carrier,flight_num,tail_num,origin,origin_state,dest,crs_dep_time,dep_time,
    dep_delay,dep_del15,taxi_out,wheels_off,arr_delay,cancelled,cancellation_code,diverted,
    air_time,distance

- integer columns with ``NA`` for missing values (``dep_time``, ``dep_delay``, ``dep_del15``,
  ``taxi_out``, ``arr_delay``): NA on cancelled flights (~2%), and on the arrival side of
  diverted ones (~0.3%). The first ``NA`` comes after the first hundred rows, as in real files:
  polars (which infers types from 100 rows) and DuckDB then fail unless told
  ``null_values="NA"`` / ``nullstr='NA'``; pyarrow's default null values include ``NA``;
- short codes: ``carrier`` (2 characters, some with a digit: ``9E``, ``B6``), ``origin`` and
  ``dest`` (3 letters), ``origin_state`` (2 letters), ``cancellation_code`` (A-D, empty when
  not cancelled);
- timestamps: ``fl_date`` (a date) and ``wheels_off`` (``YYYY-MM-DD HH:MM``, empty when
  cancelled);
- floats: ``air_time`` (one decimal, ``NA`` when missing);
- text: ``tail_num`` (``N123AB``, sometimes empty).

Rows are made in numpy batches; memory stays bounded whatever the size. Bytes are reproducible
for a given numpy version, and a shorter run is a prefix of a longer one. The default, 3.4 M
rows, is about 310 MB.

    python data/make_flights.py                                  # 3.4 M rows, ~310 MB
    python data/make_flights.py data/flights.csv --rows 1000     # the committed sample
    python data/make_flights.py /tmp/flights-1g.csv --size 1GB --seed 7
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sales import Written, generator_cli, write_csv  # the same writer, report and CLI

HEADER = (
    "fl_date",
    "day_of_week",
    "carrier",
    "flight_num",
    "tail_num",
    "origin",
    "origin_state",
    "dest",
    "crs_dep_time",
    "dep_time",
    "dep_delay",
    "dep_del15",
    "taxi_out",
    "wheels_off",
    "arr_delay",
    "cancelled",
    "cancellation_code",
    "diverted",
    "air_time",
    "distance",
)
# (code, share of flights): a few big carriers and a long tail, as in the real data.
CARRIERS = (
    ("WN", 18),
    ("DL", 14),
    ("AA", 14),
    ("OO", 11),
    ("UA", 10),
    ("YX", 5),
    ("MQ", 4),
    ("B6", 4),
    ("9E", 4),
    ("OH", 4),
    ("AS", 4),
    ("NK", 3),
    ("F9", 2),
    ("G4", 2),
    ("HA", 1),
)
AIRPORTS = (
    ("ATL", "Atlanta, GA"),
    ("DFW", "Dallas/Fort Worth, TX"),
    ("DEN", "Denver, CO"),
    ("ORD", "Chicago, IL"),
    ("LAX", "Los Angeles, CA"),
    ("CLT", "Charlotte, NC"),
    ("LAS", "Las Vegas, NV"),
    ("PHX", "Phoenix, AZ"),
    ("MCO", "Orlando, FL"),
    ("SEA", "Seattle, WA"),
    ("MIA", "Miami, FL"),
    ("IAH", "Houston, TX"),
    ("JFK", "New York, NY"),
    ("SFO", "San Francisco, CA"),
    ("BOS", "Boston, MA"),
    ("MSP", "Minneapolis, MN"),
    ("DTW", "Detroit, MI"),
    ("SLC", "Salt Lake City, UT"),
    ("BNA", "Nashville, TN"),
    ("HNL", "Honolulu, HI"),
)
CANCEL_RATE = 0.02
DIVERT_RATE = 0.003
CLEAN_ROWS = 120  # no NA in the first rows: type inference over a small head sees integers
START = np.datetime64("2024-01-01", "D")
BATCH_ROWS = 50_000
DEFAULT_ROWS = 3_400_000
DEFAULT_SEED = 42
DEFAULT_OUT = Path("/tmp/batchcore-bench/flights.csv")
NA = "NA"


def with_na(values: np.ndarray, missing: np.ndarray) -> list[str]:
    """Integers as text, ``NA`` where ``missing``."""
    return np.where(missing, NA, values.astype(str)).tolist()


def hhmm(minutes: np.ndarray) -> np.ndarray:
    """Minutes after midnight (any day) as the ``hhmm`` integer the real data uses."""
    of_day = minutes % 1440
    return (of_day // 60) * 100 + of_day % 60


def iter_batches(seed: int, batch_rows: int = BATCH_ROWS) -> Iterator[list[str]]:
    """Yield the CSV lines (without line ends) ``batch_rows`` at a time, forever; the stream
    depends only on ``seed``."""
    rng = np.random.default_rng(seed)
    codes = np.array([code for code, _ in CARRIERS])
    shares = np.array([share for _, share in CARRIERS], dtype=float)
    shares /= shares.sum()
    airports = np.array([code for code, _ in AIRPORTS])
    states = np.array([city[-2:] for _, city in AIRPORTS])
    # Distances fixed per airport pair (not per seed), 200 to ~2,700 miles.
    pairs = len(AIRPORTS)
    miles = 200 + (np.arange(pairs * pairs).reshape(pairs, pairs) * 7_919) % 2_500
    miles = np.minimum(miles, miles.T)
    letters = np.array(list("ABCDEFGHJKLMNPRSTUVWXYZ"))
    row = 0
    while True:
        n = batch_rows
        day = START + np.sort(rng.integers(0, 366, n)).astype("timedelta64[D]")
        carrier = rng.choice(len(codes), n, p=shares)
        origin = rng.integers(0, pairs, n)
        dest = (origin + rng.integers(1, pairs, n)) % pairs
        distance = miles[origin, dest]
        crs_dep = rng.integers(5 * 60, 23 * 60, n)  # minutes after midnight
        block = distance * 60 // 480 + 30  # scheduled minutes gate to gate
        # Delays: mostly a few minutes early or late, a long tail of late flights.
        delay = np.round(rng.gamma(1.2, 18, n) - 15).astype(np.int64)
        taxi = rng.integers(6, 40, n)
        air = distance * 60 / rng.normal(470, 25, n)
        arr_delay = delay + taxi - 16 + np.round(air - (block - 26)).astype(np.int64)
        cancelled = rng.random(n) < CANCEL_RATE
        diverted = ~cancelled & (rng.random(n) < DIVERT_RATE)
        if row < CLEAN_ROWS:  # real files open with a clean stretch
            cancelled[: CLEAN_ROWS - row] = False
            diverted[: CLEAN_ROWS - row] = False
        no_arrival = cancelled | diverted
        dep_minutes = crs_dep + delay
        off = day.astype("datetime64[m]") + (dep_minutes + taxi).astype("timedelta64[m]")
        tail = np.char.add(
            np.char.add("N", rng.integers(100, 999, n).astype(str)),
            np.char.add(letters[rng.integers(0, len(letters), n)], letters[carrier]),
        )
        tail = np.where(rng.random(n) < 0.005, "", tail)
        cancel_code = np.where(cancelled, np.array(list("ABCD"))[rng.integers(0, 4, n)], "")
        columns = [
            day.astype(str).tolist(),
            ((day.astype(np.int64) + 3) % 7 + 1).astype(str).tolist(),  # 2024-01-01: Monday, 1
            codes[carrier].tolist(),
            rng.integers(1, 7000, n).astype(str).tolist(),
            tail.tolist(),
            airports[origin].tolist(),
            states[origin].tolist(),
            airports[dest].tolist(),
            hhmm(crs_dep).astype(str).tolist(),
            with_na(hhmm(dep_minutes), cancelled),
            with_na(delay, cancelled),
            with_na((delay >= 15).astype(np.int8), cancelled),
            with_na(taxi, cancelled),
            np.where(cancelled, "", np.char.replace(off.astype(str), "T", " ")).tolist(),
            with_na(arr_delay, no_arrival),
            cancelled.astype(np.int8).astype(str).tolist(),
            cancel_code.tolist(),
            diverted.astype(np.int8).astype(str).tolist(),
            np.where(no_arrival, NA, np.char.mod("%.1f", air)).tolist(),
            distance.astype(str).tolist(),
        ]
        yield [",".join(fields) for fields in zip(*columns, strict=True)]
        row += n


def write_flights(
    out: Path, *, rows: int | None = None, size: int | None = None, seed: int = DEFAULT_SEED
) -> Written:
    """Write exactly ``rows`` rows, or whole rows until the file holds at least ``size`` bytes."""
    batches = ("\n".join(lines) + "\n" for lines in iter_batches(seed))
    return write_csv(out, ",".join(HEADER) + "\n", batches, rows=rows, size=size)


def main(argv: list[str] | None = None) -> int:
    return generator_cli(
        argv,
        "Write a deterministic, wide flights CSV (20 columns, NA for missing ints).",
        write_flights,
        DEFAULT_OUT,
        DEFAULT_ROWS,
        DEFAULT_SEED,
    )


if __name__ == "__main__":
    sys.exit(main())
