"""What the training service tests share: their rows (driver ids from 8,000,000 up, in 2022), loaded with COPY,
and the CLI run as a user runs it. The fixtures `offline_store` and `mlflow_client` are in conftest.py."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pandas as pd

from data_pipeline.offline_store import ORDERS_TABLE, STATS_COLUMNS, STATS_TABLE
from feast_repo.features import FEATURE_NAMES, FEATURE_SERVICE
from mlops_platform.postgres import connect
from simulation.generate import FIRST_DRIVER_ID, generate_driver_stats, generate_orders
from tests.conftest import REPO_ROOT

ID_RANGE = (8_000_000, 8_999_999)
FEATURES = list(FEATURE_NAMES)
SERVICE = FEATURE_SERVICE


def copy_rows(frame: pd.DataFrame, table: str, columns: tuple[str, ...]) -> None:
    buffer = io.StringIO()
    frame[list(columns)].assign(source="test-training").to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    with connect() as conn, conn.cursor() as cur:
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}, source) FROM STDIN WITH (FORMAT csv)", buffer)
        cur.execute(f"ANALYZE {table}")  # as ingestion does: a join planned on stale statistics can take minutes


def load_generated(first_id: int, drivers: int, days: int, end: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generated stats and orders for drivers first_id.., the `days` before `end`, loaded with COPY."""
    stats = generate_driver_stats(drivers, days, end, seed)
    orders = generate_orders(stats, seed)
    stats["driver_id"] += first_id - FIRST_DRIVER_ID
    orders["driver_id"] += first_id - FIRST_DRIVER_ID
    delete_drivers(first_id, first_id + drivers - 1)
    copy_rows(stats, STATS_TABLE, STATS_COLUMNS)
    copy_rows(orders, ORDERS_TABLE, ("driver_id", "event_timestamp", "trip_completed"))
    return stats, orders


def delete_drivers(first: int, last: int) -> None:
    with connect() as conn, conn.cursor() as cur:
        for table in (STATS_TABLE, ORDERS_TABLE):
            cur.execute(f"delete from {table} where driver_id between %s and %s", (first, last))


def window(end: str, days: int) -> dict[str, str]:
    stop = datetime.fromisoformat(end).replace(tzinfo=UTC)
    return {"label_start": (stop - timedelta(days=days)).isoformat(), "label_end": stop.isoformat()}


def run_cli(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "training_pipeline", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
