"""Training-set construction: the pipeline's point-in-time join against Feast's and the per-row pandas loop.

1,000 drivers x 90 days of hourly stats (2.16M rows) and about 1M orders are generated and loaded
with COPY into ids and a window no other data uses (drivers 60,000,001.., the 90 days before
2018-04-01), then removed again. Measured, one after the other:

- ours: what the `prepare_training_set` step runs on every label: the point-in-time query streamed
  with COPY, Feast's own join of 500 sampled labels as a check, then validation and the content hash;
- Feast's `get_historical_features` through the feature service, with the labels as a SQL string
  and as an uploaded DataFrame, on the labels of `--feast-days` days, extrapolated per label
  (its join grows faster than linearly, so the estimate is a lower bound; `--feast-full` runs the
  SQL-string variant on every label, which takes many minutes);
- the per-row pandas approach (for each label: the driver's rows, those at or before the label
  time and within the TTL, sorted, the latest taken) on `--baseline-labels` random labels,
  extrapolated per label. The stats are grouped by driver once, outside the timed loop, which
  favours it. Its values must equal ours.

Run against the platform's PostgreSQL (`bash run.sh feast up`):

    .venv/bin/python -m benchmarks.bench_training_set
"""

from __future__ import annotations

import argparse
import io
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as arrow
import pyarrow.csv as arrow_csv

from benchmarks.common import print_table
from data_pipeline.offline_store import ORDERS_TABLE, STATS_TABLE, ensure_schema
from feast_repo.features import FEATURE_NAMES, FEATURE_SERVICE
from mlops_platform.feature_store import feature_store
from mlops_platform.postgres import connect
from mlops_platform.settings import get_settings
from simulation.generate import FIRST_DRIVER_ID, generate_driver_stats, generate_orders
from training_pipeline import dataset, training_set

FIRST_ID = 60_000_001
ID_BLOCK = (60_000_000, 60_999_999)  # cleared before and after
END = datetime(2018, 4, 1, tzinfo=UTC)
SERVICE = FEATURE_SERVICE
FEATURES = list(FEATURE_NAMES)
TTL = pd.Timedelta(days=2)
GOAL_SECONDS = 60.0


def copy_in(table: str, frame: pd.DataFrame) -> None:
    """COPY a frame in through Arrow's CSV writer (pandas' to_csv is several times slower)."""
    columns = {}
    for name in frame.columns:
        values = frame[name]
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            columns[name] = arrow.array(values.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]"))
        else:
            columns[name] = arrow.array(values)
    buffer = io.BytesIO()
    arrow_csv.write_csv(arrow.table(columns), buffer, arrow_csv.WriteOptions(include_header=False))
    buffer.seek(0)
    with connect() as conn, conn.cursor() as cur:
        cur.execute("set time zone 'UTC'")
        cur.copy_expert(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)", buffer)


def delete_rows() -> None:
    with connect() as conn, conn.cursor() as cur:
        for table in (STATS_TABLE, ORDERS_TABLE):
            cur.execute(f"delete from {table} where driver_id between %s and %s", ID_BLOCK)


def foreign_labels(start: datetime, end: datetime) -> int:
    """Orders of other drivers in the window: they would be measured too, so the run refuses them."""
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"select count(*) from {ORDERS_TABLE} where event_timestamp >= %s and event_timestamp < %s "
                    "and driver_id not between %s and %s", (start, end, *ID_BLOCK))
        return cur.fetchone()[0]


def load(drivers: int, days: int, labels: int, seed: int = 7) -> tuple[int, float]:
    """Generate and COPY the data in; returns (orders loaded, seconds)."""
    began = time.perf_counter()
    stats = generate_driver_stats(drivers, days, END, seed)
    orders = generate_orders(stats, seed, orders_per_day=labels / (drivers * days))
    shift = FIRST_ID - FIRST_DRIVER_ID
    stats["driver_id"] += shift
    orders["driver_id"] += shift
    delete_rows()
    copy_in(STATS_TABLE, stats.assign(source="benchmark"))
    copy_in(ORDERS_TABLE, orders.assign(source="benchmark"))
    with connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"analyze {STATS_TABLE}; analyze {ORDERS_TABLE}")
    return len(orders), time.perf_counter() - began


def ours(store, start: datetime, end: datetime) -> tuple[pd.DataFrame, float]:
    """Exactly the prepare_training_set step's work, without MLflow and the parquet file."""
    began = time.perf_counter()
    frame, _ = training_set.build(store, training_set.labels_sql(start, end), SERVICE, FEATURES, get_settings(),
                                  "fast", check_rows=500, seed=42)
    dataset.validate(frame, FEATURES, min_rows=1000, max_unmatched_share=0.05, holdout_share=0.2, folds=5)
    return frame, time.perf_counter() - began


def feast_join(store, start: datetime, end: datetime, entity: str) -> tuple[int, float]:
    """Feast's get_historical_features with the labels as a SQL string or an uploaded DataFrame."""
    labels = training_set.labels_sql(start, end)
    service = store.get_feature_service(SERVICE)
    began = time.perf_counter()
    if entity == "dataframe":
        with connect() as conn, conn.cursor() as cur:
            cur.execute(labels)
            entity_df = pd.DataFrame(cur.fetchall(), columns=["driver_id", "event_timestamp", "trip_completed"])
        frame = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    else:
        frame = store.get_historical_features(entity_df=labels, features=service).to_df()
    return len(frame), time.perf_counter() - began


def read_stats(start: datetime, end: datetime, last_id: int) -> pd.DataFrame:
    buffer = io.BytesIO()
    query = (f"COPY (SELECT driver_id, (extract(epoch from event_timestamp) * 1000000)::bigint AS event_us, "
             f"{', '.join(FEATURES)} FROM {STATS_TABLE} WHERE driver_id BETWEEN {FIRST_ID} AND {last_id} AND "
             f"event_timestamp >= '{(start - TTL).isoformat()}' AND event_timestamp < '{end.isoformat()}') "
             "TO STDOUT WITH (FORMAT csv)")
    with connect() as conn, conn.cursor() as cur:
        cur.copy_expert(query, buffer)
    buffer.seek(0)
    stats = pd.read_csv(buffer, header=None, names=["driver_id", "event_us", *FEATURES], engine="pyarrow")
    stats["event_timestamp"] = pd.to_datetime(stats.pop("event_us"), unit="us", utc=True)
    for name in FEATURES:
        stats[name] = stats[name].astype(np.float32).astype(np.float64)
    return stats


def per_row_pandas(stats: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """The per-row approach, with the stats grouped by driver beforehand (not timed)."""
    groups = {driver: rows for driver, rows in stats.groupby("driver_id")}
    began = time.perf_counter()
    found = []
    for label in labels.itertuples(index=False):
        rows = groups.get(label.driver_id)
        latest = None
        if rows is not None:
            rows = rows[(rows["event_timestamp"] <= label.event_timestamp)
                        & (rows["event_timestamp"] >= label.event_timestamp - TTL)]
            if len(rows):
                latest = rows.sort_values("event_timestamp").iloc[-1]
        found.append([np.nan] * len(FEATURES) if latest is None else [latest[f] for f in FEATURES])
    seconds = time.perf_counter() - began
    return labels.assign(**dict(zip(FEATURES, np.array(found, np.float64).T, strict=True))), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--labels", type=int, default=1_000_000, help="orders to generate (about)")
    parser.add_argument("--baseline-labels", type=int, default=2000)
    parser.add_argument("--feast-days", type=float, default=2.0, help="days of labels Feast joins (sample)")
    parser.add_argument("--feast-full", action="store_true", help="also run Feast on every label (slow)")
    parser.add_argument("--keep", action="store_true", help="leave the rows in place afterwards")
    args = parser.parse_args()

    ensure_schema()
    last_id = FIRST_ID + args.drivers - 1
    start = END - timedelta(days=args.days)
    foreign = foreign_labels(start, END)
    if foreign:
        print(f"error: the window {start.date()}..{END.date()} already holds {foreign:,} orders of drivers outside "
              f"{ID_BLOCK[0]:,}..{ID_BLOCK[1]:,}; they would be measured too. Remove them or move END.")
        return 2
    try:
        loaded, load_seconds = load(args.drivers, args.days, args.labels)
        print(f"loaded {args.drivers * args.days * 24:,} stats rows and {loaded:,} orders with COPY "
              f"in {load_seconds:.1f} s")
        store = feature_store()
        frame, our_seconds = ours(store, start, END)
        per_label = our_seconds / len(frame)
        rows = [("ours: PIT query + COPY, Feast check, validation", f"{len(frame):,}", f"{our_seconds:.1f}",
                 f"{len(frame) / our_seconds:,.0f}", f"{per_label * 1e6:.1f}", "1.0x", "-")]

        feast_end = start + timedelta(days=args.feast_days)
        for entity in ("sql", "dataframe"):
            n, seconds = feast_join(store, start, feast_end, entity)
            rows.append((f"Feast get_historical_features, {entity} entity_df", f"{n:,}", f"{seconds:.1f}",
                         f"{n / seconds:,.0f}", f"{seconds / n * 1e6:,.0f}", f"{seconds / n / per_label:,.0f}x",
                         "-"))
        if args.feast_full:
            n, seconds = feast_join(store, start, END, "sql")
            rows.append(("Feast get_historical_features, sql, all labels", f"{n:,}", f"{seconds:.1f}",
                         f"{n / seconds:,.0f}", f"{seconds / n * 1e6:,.0f}", f"{seconds / n / per_label:,.0f}x",
                         "-"))

        sample = frame.sample(n=min(args.baseline_labels, len(frame)), random_state=1)
        keys = sample[["driver_id", "event_timestamp", "trip_completed"]].reset_index(drop=True)
        baseline, seconds = per_row_pandas(read_stats(start, END, last_id), keys)
        same = training_set.mismatches(sample, baseline, FEATURES).empty
        rows.append(("per-row pandas (group, filter, sort, latest)", f"{len(keys):,}", f"{seconds:.1f}",
                     f"{len(keys) / seconds:,.0f}", f"{seconds / len(keys) * 1e6:,.0f}",
                     f"{seconds / len(keys) / per_label:,.0f}x", "yes" if same else "NO"))
    finally:
        if not args.keep:
            delete_rows()
    print_table(f"Training set for {len(frame):,} labels, {args.drivers:,} drivers x {args.days} days of hourly "
                "stats (Feast and pandas rows: samples, per-label cost extrapolated)",
                ("path", "labels", "seconds", "labels/s", "us/label", "slower than ours", "same values"), rows)
    print(f"\ngoal: {len(frame):,} labels in under {GOAL_SECONDS:.0f} s -> {our_seconds:.1f} s "
          f"({'met' if our_seconds < GOAL_SECONDS else 'MISSED'})")
    return 0 if same and our_seconds < GOAL_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
