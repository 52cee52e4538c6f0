"""Materialization into Redis: the platform's fast path against Feast's `store.materialize()`.

Both write the same rows (one per driver, in a time window no other data uses) into the same Redis,
one after the other, and the values read back through Feast must be identical. Run against the
platform's PostgreSQL and Redis (`bash run.sh feast up`):

    .venv/bin/python -m benchmarks.bench_materialization --drivers 100000 1000000
"""

from __future__ import annotations

import argparse
import io
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from benchmarks.common import print_table
from data_pipeline import materialize as mat
from data_pipeline.offline_store import STATS_TABLE, ensure_schema
from feast_repo.features import FEATURE_NAMES, FEATURE_VIEW
from mlops_platform.feature_store import feature_store
from mlops_platform.postgres import connect

WINDOW_START = datetime(2019, 6, 1, tzinfo=UTC)
WINDOW_END = WINDOW_START + timedelta(days=1)
FIRST_ID = 50_000_000
FEATURES = list(FEATURE_NAMES)


def load_rows(n: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    ids = np.arange(FIRST_ID, FIRST_ID + n)
    minutes = rng.integers(0, 24 * 60 - 10, n)
    ts = pd.to_datetime(WINDOW_START) + pd.to_timedelta(minutes, unit="m")
    frame = pd.DataFrame({
        "driver_id": ids, "event_timestamp": ts, "created": ts + pd.Timedelta(minutes=5),
        "conv_rate": rng.random(n).astype(np.float32), "acc_rate": rng.random(n).astype(np.float32),
        "avg_daily_trips": rng.integers(0, 60, n), "source": "benchmark",
    })
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where driver_id >= %s", (FIRST_ID,))
        cur.copy_expert(f"COPY {STATS_TABLE} (driver_id, event_timestamp, created, conv_rate, acc_rate, "
                        "avg_daily_trips, source) FROM STDIN WITH (FORMAT csv)", buffer)


def clear_keys(store, n: int) -> None:
    mat.delete_online_rows(store, range(FIRST_ID, FIRST_ID + n))


def read_back(store, sample: list[int]) -> pd.DataFrame:
    frame = store.get_online_features(features=[f"{FEATURE_VIEW}:{f}" for f in FEATURES],
                                      entity_rows=[{"driver_id": d} for d in sample]).to_df()
    return frame.set_index("driver_id").sort_index()[FEATURES]


def run(n: int, store) -> tuple:
    load_rows(n)
    sample = sorted(np.random.default_rng(1).choice(np.arange(FIRST_ID, FIRST_ID + n), 2000, replace=False).tolist())
    clear_keys(store, n)
    began = time.perf_counter()
    store.materialize(start_date=WINDOW_START, end_date=WINDOW_END, feature_views=[FEATURE_VIEW])
    feast_seconds = time.perf_counter() - began
    by_feast = read_back(store, sample)

    clear_keys(store, n)
    report = mat.materialize_interval(WINDOW_START, WINDOW_END, overlap=timedelta(0), store=store)
    ours = read_back(store, sample)
    identical = by_feast.equals(ours) and not ours.isna().any().any()
    clear_keys(store, n)
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where driver_id >= %s", (FIRST_ID,))
    return (f"{n:,}", f"{feast_seconds:.1f}", f"{n / feast_seconds:,.0f}", f"{report.seconds:.1f}",
            f"{n / report.seconds:,.0f}", f"{feast_seconds / report.seconds:.1f}x", "yes" if identical else "NO")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    ensure_schema()
    store = feature_store()
    rows = [run(n, store) for n in args.drivers]
    print_table("Materialization into Redis (one row per driver)",
                ("drivers", "feast s", "feast rows/s", "ours s", "ours rows/s", "speed-up", "same values"), rows)
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
