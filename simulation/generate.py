"""Synthetic driver data with a learnable signal, landed the way an upstream team would deliver it.

Each driver has a latent quality that drifts slowly (a random walk over the hours); the hourly stats
(`conv_rate`, `acc_rate`, `avg_daily_trips`, the columns of Feast's driver example) are noisy functions
of it, and whether an order's trip is completed depends on the driver's latest stats at that moment.
So a model trained on point-in-time features has something real to learn.

Raw files are written one per dataset per day into `<landing>/<dataset>/date=YYYY-MM-DD/`, atomically,
with a configurable share of planted bad rows (nulls, out-of-range values, negative trips, duplicate
keys, unparseable timestamps) so that validation and quarantine are exercised on every run. Everything
is vectorised with numpy and seeded: the same arguments give the same files, byte for byte.

    python -m simulation.generate --drivers 1000 --days 90 --seed 7
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as arrow
import pyarrow.compute as pc

from data_pipeline.landing import FILE_FORMATS, landing_file, write_atomically
from data_pipeline.validate import COLUMNS, ORDERS, STATS
from feast_repo.features import FEATURE_NAMES

FIRST_DRIVER_ID = 1001
DEFAULT_BAD_ROW_RATE = 0.01

# Values an upstream system really sends when it goes wrong.
BAD_TIMESTAMPS = ("not-a-time", "2024-13-45 99:00", "31/12/2024 25:61")
OUT_OF_RANGE_RATES = (1.7, -0.2, 1.05, -0.01)
OUT_OF_RANGE_FLAGS = (2, -1)
BAD_KINDS = {
    STATS: ("null", "out_of_range", "negative_trips", "duplicate_key", "unparseable_timestamp"),
    ORDERS: ("null", "out_of_range", "duplicate_key", "unparseable_timestamp"),
}


# ---------------------------------------------------------------------------------------------
# Clean data
# ---------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _end_day(end: date | datetime | str | None) -> date:
    if end is None:
        return datetime.now(UTC).date()
    if isinstance(end, str):
        try:
            return date.fromisoformat(end[:10])
        except ValueError:
            raise ValueError(f"end must be an ISO date like 2024-05-01, got {end!r}") from None
    return end.date() if isinstance(end, datetime) else end


def generate_driver_stats(drivers: int = 1000, days: int = 90, end: date | datetime | str | None = None,
                          seed: int = 0) -> pd.DataFrame:
    """Hourly stats for drivers 1001.. over the `days` days before `end` (exclusive; default today, UTC).

    Rows are ordered by event_timestamp then driver_id, so each day is one contiguous block.
    """
    if drivers < 1 or days < 1:
        raise ValueError(f"drivers and days must be >= 1, got drivers={drivers}, days={days}")
    rng = np.random.default_rng([seed, 0])
    hours = days * 24
    start = np.datetime64(_end_day(end) - timedelta(days=days), "s")

    # Latent quality: a per-driver level plus a slow random walk (about 0.08 per day).
    walk = rng.normal(0.0, 0.08 / np.sqrt(24), size=(hours, drivers))
    walk[0] = 0.0
    quality = rng.normal(0.0, 1.0, size=drivers) + np.cumsum(walk, axis=0)
    activity = rng.normal(0.0, 0.35, size=drivers)  # some drivers simply drive more

    conv_rate = _sigmoid(-0.4 + 0.9 * quality + rng.normal(0.0, 0.3, size=quality.shape))
    acc_rate = _sigmoid(1.0 + 0.6 * quality + rng.normal(0.0, 0.3, size=quality.shape))
    trips = rng.poisson(np.exp(2.5 + 0.25 * quality + activity))

    event = start + (np.arange(hours) * 3600).astype("timedelta64[s]")
    event_timestamp = np.repeat(event, drivers)
    created = event_timestamp + rng.integers(30, 900, size=hours * drivers).astype("timedelta64[s]")
    return pd.DataFrame({
        "driver_id": np.tile(np.arange(FIRST_DRIVER_ID, FIRST_DRIVER_ID + drivers, dtype=np.int64), hours),
        "event_timestamp": pd.to_datetime(event_timestamp).tz_localize("UTC").astype("datetime64[ns, UTC]"),
        "created": pd.to_datetime(created).tz_localize("UTC").astype("datetime64[ns, UTC]"),
        "conv_rate": conv_rate.ravel().round(4),
        "acc_rate": acc_rate.ravel().round(4),
        "avg_daily_trips": trips.ravel().astype(np.int64),
    })


def completion_logit(conv_rate: np.ndarray, acc_rate: np.ndarray, avg_daily_trips: np.ndarray) -> np.ndarray:
    """The true link from a driver's features to the log-odds of completing a trip (before noise)."""
    return -2.6 + 3.5 * conv_rate + 2.0 * acc_rate + 0.04 * avg_daily_trips


def generate_orders(stats: pd.DataFrame, seed: int = 0, orders_per_day: float = 3.0,
                    label_noise: float = 0.5) -> pd.DataFrame:
    """Orders at random times, labelled from the driver's latest stats row at or before each order.

    `stats` must be hourly rows as generate_driver_stats returns them. The label is drawn with
    P(completed) = sigmoid(completion_logit(features) + N(0, label_noise)). Keys are unique.
    """
    rng = np.random.default_rng([seed, 1])
    hours = stats["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).drop_duplicates().sort_values()
    hours = hours.to_numpy("datetime64[ns]")
    drivers = stats["driver_id"].drop_duplicates().sort_values().to_numpy()
    if len(stats) != len(hours) * len(drivers) or len(hours) % 24:
        raise ValueError(
            f"stats must hold one row per driver and hour over whole days, found {len(stats)} rows for "
            f"{len(drivers)} drivers x {len(hours)} hours; pass the frame generate_driver_stats returned"
        )
    ordered = stats.sort_values(["event_timestamp", "driver_id"], kind="stable")
    days = len(hours) // 24

    per_day = rng.poisson(orders_per_day, size=days * len(drivers))
    cell = np.repeat(np.arange(days * len(drivers)), per_day)  # (day, driver) of each order
    day, driver = np.divmod(cell, len(drivers))
    second = rng.integers(0, 86_400, size=len(cell))
    hour = day * 24 + second // 3600
    row = hour * len(drivers) + driver  # the stats row at the order's hour: the latest at or before it

    features = {c: ordered[c].to_numpy()[row] for c in FEATURE_NAMES}
    logit = completion_logit(**features) + rng.normal(0.0, label_noise, size=len(cell))
    completed = (rng.random(len(cell)) < _sigmoid(logit)).astype(np.int64)
    event_timestamp = hours[day * 24] + second.astype("timedelta64[s]")
    orders = pd.DataFrame({
        "event_timestamp": pd.Series(event_timestamp.astype("datetime64[ns]")).dt.tz_localize("UTC"),
        "driver_id": drivers[driver].astype(np.int64),
        "trip_completed": completed,
    })
    orders = orders.drop_duplicates(["driver_id", "event_timestamp"])  # two orders in the same second
    return orders.sort_values(["event_timestamp", "driver_id"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Raw files with planted bad rows
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlantedRow:
    """A bad row put into a raw file on purpose; `driver_id`/`event_timestamp` are its clean key."""

    file: str  # relative to the landing folder
    row_number: int  # 0-based position in the file
    kind: str
    column: str | None
    driver_id: int
    event_timestamp: pd.Timestamp


@dataclass
class DatasetSummary:
    rows_written: int = 0
    files: list[str] = field(default_factory=list)
    planted: list[PlantedRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "rows_written": self.rows_written,
            "files": len(self.files),
            "planted_bad_rows": len(self.planted),
            "planted_by_kind": dict(sorted(Counter(p.kind for p in self.planted).items())),
        }


@dataclass
class GenerationSummary:
    landing: Path
    drivers: int
    days: int
    start: date
    end: date
    seed: int
    bad_row_rate: float
    datasets: dict[str, DatasetSummary]
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "landing": str(self.landing), "drivers": self.drivers, "days": self.days,
            "start": self.start.isoformat(), "end": self.end.isoformat(), "seed": self.seed,
            "bad_row_rate": self.bad_row_rate, "seconds": round(self.seconds, 3),
            "datasets": {name: summary.to_dict() for name, summary in self.datasets.items()},
        }


def _timestamp_text(values: pd.Series) -> np.ndarray:
    """'YYYY-MM-DDTHH:MM:SSZ' strings, formatted by Arrow (numpy and pandas are 5-30x slower)."""
    naive = arrow.array(values.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[s]"))
    text = pc.binary_join_element_wise(pc.replace_substring(naive.cast(arrow.string()), " ", "T"), "Z", "")
    return text.to_numpy(zero_copy_only=False).astype(object)


def raw_columns(clean: pd.DataFrame, dataset: str) -> dict[str, np.ndarray]:
    """A clean frame as an upstream file holds it: timestamps as text, numbers as objects."""
    columns = {}
    for column, kind in COLUMNS[dataset].items():
        if kind == "timestamp":
            columns[column] = _timestamp_text(clean[column])
        else:
            columns[column] = clean[column].to_numpy().astype(object)
    return columns


def plant_bad_rows(columns: dict[str, np.ndarray], dataset: str, rate: float,
                   rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[tuple[int, int, str, str | None]]]:
    """Spoil round(rate x rows) distinct rows, one defect each: corrupt a value or insert a duplicate copy.

    An exact count, not a random one, keeps each file's invalid share steady, so small files do not
    cross INGEST_MAX_INVALID_SHARE by chance.

    Returns the new columns and (row_number in the new file, source row, kind, column) per planted row.
    A duplicate is an exact copy of a clean row placed after it, so the first occurrence stays valid.
    """
    n = len(next(iter(columns.values())))
    count = min(int(np.floor(rate * n + 0.5)), n)
    rows = rng.choice(n, size=count, replace=False)
    kinds = np.asarray(BAD_KINDS[dataset])[rng.integers(0, len(BAD_KINDS[dataset]), size=count)]
    columns = {name: values.copy() for name, values in columns.items()}
    corrupted_column: dict[int, str | None] = {}

    def put(kind: str, candidates: tuple[str, ...], values: tuple) -> None:
        chosen = rows[kinds == kind]
        names = np.asarray(candidates)[rng.integers(0, len(candidates), size=len(chosen))]
        picks = rng.integers(0, len(values), size=len(chosen))
        for row, name, pick in zip(chosen, names, picks, strict=True):
            columns[name][row] = values[pick]
            corrupted_column[int(row)] = str(name)

    put("null", tuple(COLUMNS[dataset]), (None,))
    if dataset == STATS:
        put("out_of_range", ("conv_rate", "acc_rate"), OUT_OF_RANGE_RATES)
        put("negative_trips", ("avg_daily_trips",), (-1, -3, -12))
        put("unparseable_timestamp", ("event_timestamp", "created"), BAD_TIMESTAMPS)
    else:
        put("out_of_range", ("trip_completed",), OUT_OF_RANGE_FLAGS)
        put("unparseable_timestamp", ("event_timestamp",), BAD_TIMESTAMPS)

    # Duplicates: copy rows, each inserted at a random place after its original.
    sources = np.sort(rows[kinds == "duplicate_key"])
    after = sources + 1 + (rng.random(len(sources)) * (n - sources)).astype(np.int64)  # in (source, n]
    order_key = np.concatenate([np.arange(n) * 2, after * 2 - 1])
    order = np.argsort(order_key, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    columns = {name: np.concatenate([values, values[sources]])[order] for name, values in columns.items()}

    planted = [(int(position[row]), int(row), str(kind), corrupted_column.get(int(row)))
               for row, kind in zip(rows, kinds, strict=True) if kind != "duplicate_key"]
    planted += [(int(position[n + i]), int(row), "duplicate_key", None) for i, row in enumerate(sources)]
    return columns, sorted(planted)


def _arrow_table(columns: dict[str, np.ndarray], dataset: str) -> arrow.Table:
    """Typed where a bad value still fits the type (nullable numbers), text for timestamps."""
    arrays = {}
    for name, kind in COLUMNS[dataset].items():
        values = columns[name]
        if kind == "timestamp":
            arrays[name] = arrow.array(values, type=arrow.string(), from_pandas=True)
        elif kind == "rate":
            arrays[name] = arrow.array(values, type=arrow.float64(), from_pandas=True)
        else:
            arrays[name] = arrow.array(values, type=arrow.int64(), from_pandas=True)
    return arrow.table(arrays)


def write_landing(stats: pd.DataFrame, orders: pd.DataFrame, landing: Path,
                  bad_row_rate: float = DEFAULT_BAD_ROW_RATE, seed: int = 0, stats_format: str = "parquet",
                  orders_format: str = "csv") -> dict[str, DatasetSummary]:
    """One raw file per dataset and day, with planted bad rows; returns what was written and planted."""
    if not 0.0 <= bad_row_rate <= 1.0:
        raise ValueError(f"bad_row_rate must be between 0 and 1, got {bad_row_rate}")
    for name, file_format in (("stats_format", stats_format), ("orders_format", orders_format)):
        if file_format not in FILE_FORMATS:
            raise ValueError(f"{name} must be one of {FILE_FORMATS}, got {file_format!r}")
    rng = np.random.default_rng([seed, 2])
    summaries = {}
    for dataset, clean, file_format in ((STATS, stats, stats_format), (ORDERS, orders, orders_format)):
        summary = DatasetSummary()
        stamps = clean["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
        days = stamps.astype("datetime64[D]")
        if len(days) and (np.diff(days.view(np.int64)) < 0).any():
            raise ValueError(f"{dataset} rows must be sorted by event_timestamp, as the generator returns them")
        boundaries = np.flatnonzero(np.r_[True, days[1:] != days[:-1], True]) if len(days) else np.zeros(1, int)
        driver_ids = clean["driver_id"].to_numpy()
        raw = raw_columns(clean, dataset)
        for begin, stop in zip(boundaries[:-1], boundaries[1:], strict=True):
            day = days[begin].astype(date)
            path = landing_file(landing, dataset, day, file_format)
            relative = path.relative_to(landing).as_posix()
            columns, planted = plant_bad_rows({k: v[begin:stop] for k, v in raw.items()}, dataset, bad_row_rate, rng)
            write_atomically(_arrow_table(columns, dataset), path, file_format)
            summary.planted += [
                PlantedRow(relative, row_number, kind, column, int(driver_ids[begin + source]),
                           pd.Timestamp(stamps[begin + source], tz="UTC"))
                for row_number, source, kind, column in planted
            ]
            summary.rows_written += len(columns["driver_id"])
            summary.files.append(relative)
        summaries[dataset] = summary
    return summaries


def generate(drivers: int = 1000, days: int = 90, end: date | datetime | str | None = None, seed: int = 0,
             bad_row_rate: float = DEFAULT_BAD_ROW_RATE, landing: Path | str | None = None,
             stats_format: str = "parquet") -> GenerationSummary:
    """Generate both datasets and land them as raw daily files; the summary lists every planted row."""
    started = time.perf_counter()
    if landing is None:
        from mlops_platform.settings import get_settings

        landing = get_settings().landing_dir
    landing = Path(landing)
    end_day = _end_day(end)
    stats = generate_driver_stats(drivers, days, end_day, seed)
    orders = generate_orders(stats, seed)
    datasets = write_landing(stats, orders, landing, bad_row_rate, seed, stats_format)
    return GenerationSummary(landing, drivers, days, end_day - timedelta(days=days), end_day, seed, bad_row_rate,
                             datasets, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", type=int, default=1000, help="number of drivers, ids from 1001 (default 1000)")
    parser.add_argument("--days", type=int, default=90, help="days of hourly data (default 90)")
    parser.add_argument("--end", help="first day after the data, ISO date (default: today, UTC)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--bad-row-rate", type=float, default=DEFAULT_BAD_ROW_RATE,
                        help=f"share of planted bad rows per file (default {DEFAULT_BAD_ROW_RATE})")
    parser.add_argument("--landing", type=Path, help="landing folder (default: LANDING_DIR from settings)")
    parser.add_argument("--stats-format", choices=FILE_FORMATS, default="parquet",
                        help="file format of driver_stats (default parquet; orders are always CSV)")
    args = parser.parse_args(argv)

    from mlops_platform.logs import configure_logging
    from mlops_platform.settings import get_settings

    log = configure_logging("data-generator", get_settings().log_level)
    try:
        summary = generate(args.drivers, args.days, args.end, args.seed, args.bad_row_rate, args.landing,
                           args.stats_format)
    except ValueError as error:
        log.error("generation failed", extra={"error": str(error)})
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = summary.to_dict()
    log.info("landed generated files", extra={"counts": result["datasets"], "seconds": result["seconds"]})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
